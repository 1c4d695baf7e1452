"""The crash drill: kill -9 of a ledger between acknowledging changed reports and integrating
them, then a restart. Every acknowledged entry must be in the next checkpoint, exactly once.

On PostgreSQL the drill holds the integrator's row lock (`log_state`) from outside, so that the
reports are certainly acknowledged and not yet integrated when the ledger dies. SQLite has one
writer per file, so there the ledger is killed while reports stream in, at a random moment.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from gpucap.ledger import tokens
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, device, gpucap, ledger_server_proc, report

pytestmark = pytest.mark.slow


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query)).all()]
    finally:
        engine.dispose()


def _send(url: str, token: str, seq: int) -> bool:
    body = report(seq=seq, devices=[device(i) for i in range(8 - seq % 2)])  # always changed
    try:
        r = httpx.post(
            f"{url}/v1/reports", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json() == {"status": "accepted", "seq": seq}


def test_acknowledged_entries_survive_kill_9_exactly_once(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    store = Store.open(Settings(db_url=db_url))
    try:
        token = tokens.issue(store, "node", utc_now(), None, node_id="n1", site_id="acme-ae-1")[1]
    finally:
        store.close()
    acked: list[int] = []
    with ledger_server_proc(db_url, registry) as (url, proc):
        if db_url.startswith("sqlite"):
            stop = threading.Event()

            def stream() -> None:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    if _send(url, token, seq):
                        acked.append(seq)

            sender = threading.Thread(target=stream)
            sender.start()
            time.sleep(1.0 + (os.getpid() % 7) / 10)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            stop.set()
            sender.join()
        else:
            engine = sa.create_engine(db_url)
            with engine.connect() as conn, conn.begin():
                conn.execute(sa.text("SELECT size FROM log_state WHERE id = 1 FOR UPDATE"))
                acked = [seq for seq in range(1, 21) if _send(url, token, seq)]
                pending = _rows(db_url, "SELECT count(*) FROM log_entry WHERE idx IS NULL")
                assert pending[0][0] >= 20  # acknowledged, not integrated
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            engine.dispose()
    assert len(acked) >= 5
    with ledger_server_proc(db_url, registry) as (url, _proc):
        deadline = time.monotonic() + 10
        while _rows(db_url, "SELECT count(*) FROM log_entry WHERE idx IS NULL")[0][0]:
            assert time.monotonic() < deadline, "pending entries not integrated after restart"
            time.sleep(0.1)
    leaves = [
        json.loads(str(r[0])) for r in _rows(db_url, "SELECT leaf FROM log_entry ORDER BY idx")
    ]
    seqs = [e["body"]["seq"] for e in leaves if e["kind"] == "report"]
    assert len(seqs) == len(set(seqs))  # exactly once
    assert set(acked) <= set(seqs)  # nothing acknowledged was lost
    size = _rows(db_url, "SELECT size FROM log_state")[0][0]
    assert size == len(leaves)  # every entry is in the signed tree
    verified = gpucap("ledger", "verify", "--db", db_url, "--projections")
    assert verified.returncode == 0, verified.stderr
