"""Upgrading a ledger written by the hash-chain version (schema 0002, `fixtures/ledger-0002.db`):
the chain is verified first, its events become the first leaves in order, and a broken chain
refuses the migration and changes nothing. On PostgreSQL the same rows are loaded into a schema
migrated to 0002."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store, _alembic_config
from tests.ledger.support import gpucap

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-0002.db"
TABLES = ("ledger_state", "event", "node", "device", "inventory_line", "registry", "token")


def _rows(url: str, query: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)).all())
    finally:
        engine.dispose()


def _table(url: str, name: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            t = sa.Table(name, sa.MetaData(), autoload_with=conn)
            return list(conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all())
    finally:
        engine.dispose()


def old_ledger(db_url: str, tmp_path: Path) -> str:
    """A database in the state today's main left the fixture in, on the backend of `db_url`."""
    if db_url.startswith("sqlite"):
        path = tmp_path / "old.db"
        shutil.copy(FIXTURE, path)
        return f"sqlite:///{path}"
    store = Store(db_url)
    try:
        with store.engine.begin() as conn:
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
        source = sa.create_engine(f"sqlite:///{FIXTURE}")
        meta = sa.MetaData()
        with source.connect() as src, store.engine.begin() as dst:
            meta.reflect(src, only=TABLES)
            dst.execute(sa.text("DELETE FROM ledger_state"))
            for name in TABLES:
                rows = [dict(r._mapping) for r in src.execute(sa.select(meta.tables[name]))]
                if rows:
                    target = sa.Table(name, sa.MetaData(), autoload_with=dst)
                    dst.execute(sa.insert(target), rows)
        source.dispose()
    finally:
        store.close()
    return db_url


def test_the_old_chain_becomes_the_first_leaves(db_url: str, tmp_path: Path) -> None:
    url = old_ledger(db_url, tmp_path)
    events = _rows(url, "SELECT seq, kind, actor, recorded_at, body, hash FROM event ORDER BY seq")
    projections = {t: _table(url, t) for t in ("device", "token")}
    migrated = gpucap("ledger", "migrate", "--db", url)
    assert migrated.returncode == 0, migrated.stderr
    assert "revision 0005" in migrated.stdout
    assert f"{len(events)} log entries integrated and signed" in migrated.stdout
    leaves = [json.loads(r[0]) for r in _rows(url, "SELECT leaf FROM log_entry ORDER BY idx")]
    assert [e["kind"] for e in leaves] == ["registry", *["report"] * 6, "decommission"]
    for old, new in zip(events, leaves, strict=True):
        assert new == {
            "actor": old.actor,
            "body": json.loads(old.body),
            "chain": {"hash": old.hash, "seq": old.seq},
            "kind": old.kind,
            "recorded_at": old.recorded_at,
        }
    after = {t: _table(url, t) for t in projections}
    assert all(tuple(r[-2:]) == (None, None) for r in after["token"])  # 0004: expiry, label
    after["token"] = [tuple(r[:-2]) for r in after["token"]]
    # 0005: each device's serial from the last report describing it; no shipments, no licence.
    serials = {
        (json.loads(e.body)["node_id"], d["uuid"]): d["serial"]
        for e in events
        if e.kind == "report"
        for d in json.loads(e.body)["devices"]
    }
    assert [tuple(r[-2:]) for r in after["device"]] == [
        (serials[(r.node_id, r.uuid)], None) for r in after["device"]
    ]
    after["device"] = [tuple(r[:-2]) for r in after["device"]]
    assert after == {t: [tuple(r) for r in rows] for t, rows in projections.items()}
    verified = gpucap("ledger", "verify", "--db", url, "--projections")
    assert verified.returncode == 0, verified.stderr
    assert "ok: 8 entries" in verified.stdout
    assert "projections equal a replay of 8 entries" in verified.stdout
    engine = sa.create_engine(url)
    try:
        assert not sa.inspect(engine).has_table("event")
    finally:
        engine.dispose()


def test_a_broken_chain_refuses_to_migrate_and_changes_nothing(db_url: str, tmp_path: Path) -> None:
    url = old_ledger(db_url, tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE event SET body = replace(body, 'n1', 'nX') WHERE seq = 3"))
    engine.dispose()
    refused = gpucap("ledger", "migrate", "--db", url)
    assert refused.returncode == 3
    assert (
        "event[3]: content does not match its hash (row altered); the log was not migrated"
        in refused.stderr
    )
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert len(_rows(url, "SELECT seq FROM event")) == 8


def test_a_deleted_old_row_is_named(db_url: str, tmp_path: Path) -> None:
    url = old_ledger(db_url, tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM event WHERE seq = 8"))  # the tail
    engine.dispose()
    refused = gpucap("ledger", "migrate", "--db", url)
    assert refused.returncode == 3
    assert "event[8]: the chain does not end at the recorded head" in refused.stderr


def test_a_new_ledger_signs_its_empty_log_at_migration(db_url: str) -> None:
    store = Store.open(Settings(db_url=db_url))
    store.close()
    migrated = gpucap("ledger", "migrate", "--db", db_url)
    assert migrated.returncode == 0, migrated.stderr
    verified = gpucap("ledger", "verify", "--db", db_url)
    assert verified.returncode == 0, verified.stderr
    assert "ok: 0 entries" in verified.stdout
