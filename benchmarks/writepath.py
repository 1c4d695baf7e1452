"""Shared parts of the write-path benchmarks (ledger_http_bench, ledger_pg_bench, log_bench).

A registry of `SITES` sites, 8-GPU report documents, node tokens, server subprocesses on
loopback, wrk's Lua script, a process's CPU time from /proc, percentiles, log entry counts and
throwaway PostgreSQL schemas. Nothing here runs at import time.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from gpucap.ledger.models import Report

SITES = 50
# Reports are sent with this collection time; the ledger stamps its own clock on what it records.
COLLECTED_AT = "2026-01-05T10:00:00.000Z"
# The report body ends with the seq, so that wrk's Lua appends only the number and the brace.
_SEQ_TAIL = ', "seq": '


def site_id(node: int) -> str:
    return f"site-{node % SITES:03d}"


def node_id(node: int) -> str:
    return f"node-{node:06d}"


def registry_doc() -> dict[str, Any]:
    """Two entities (a UVEU in the US, a plain one in AE) and SITES sites between them."""
    return {
        "ruleset": "us-bis-ai-diffusion-2025",
        "countries": {"AE": {"gov_agreement": True}},
        "entities": [
            {"id": "acme", "headquarters": "US", "status": "uveu"},
            {"id": "nimbus", "headquarters": "AE"},
        ],
        "sites": [
            {
                "id": f"site-{s:03d}",
                "entity": "acme" if s % 2 else "nimbus",
                "country": "US" if s % 2 else "AE",
            }
            for s in range(SITES)
        ],
    }


def write_registry(directory: Path) -> Path:
    path = directory / "registry.json"  # JSON is YAML: `serve --registry` reads it
    path.write_text(json.dumps(registry_doc()), encoding="utf-8")
    return path


def device(node: int, i: int) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{node:06d}-{i:02d}",
        "pci_device_id": "0x2330",
        "pci_subsystem_id": "0x16c110de",
        "name": "NVIDIA H100 80GB HBM3",
        "serial": f"1650{node:06d}{i:02d}",
        "board_part_number": "692-2G520-0200-000",
        "memory_total_bytes": 85899345920,
        "mig_enabled": False,
        "state": "ok",
        "model": "h100-sxm5-80gb",
        "tpp": 15832.0,
        "h100e": 1.0,
    }


def report_doc(node: int, seq: int, n_devices: int = 8) -> dict[str, Any]:
    """A `gpucap.report/v1` document (keys in this order: `seq` last)."""
    return {
        "schema": "gpucap.report/v1",
        "node_id": node_id(node),
        "site_id": site_id(node),
        "collected_at": COLLECTED_AT,
        "agent_version": "0.1.0",
        "driver_version": "550.54.15",
        "devices": [device(node, i) for i in range(n_devices)],
        "seq": seq,
    }


def body_prefix(node: int, n_devices: int = 8) -> str:
    """The report body up to its seq: `prefix + str(seq) + "}"` is the whole JSON body."""
    text = json.dumps(report_doc(node, 1, n_devices))
    assert text.endswith(_SEQ_TAIL + "1}")
    return text[: -len("1}")]


def body(node: int, seq: int, n_devices: int = 8) -> bytes:
    return f"{body_prefix(node, n_devices)}{seq}}}".encode()


class Reports:
    """Each node's next report: the last seq plus one; changed ones alternate 8 and 7 GPUs
    (the enrolment, seq 1, has 8), so consecutive reports of a node always differ."""

    def __init__(self, nodes: Sequence[int], seqs: dict[int, int] | None = None) -> None:
        self.seq = dict.fromkeys(nodes, 0) if seqs is None else seqs
        self._base = {
            (n, k): Report.model_validate_json(body(n, 1, k)) for n in nodes for k in (7, 8)
        }

    def next(self, node: int, changed: bool) -> Report:
        seq = self.seq[node] + 1
        self.seq[node] = seq
        n_devices = 7 if changed and seq % 2 == 0 else 8
        return self._base[(node, n_devices)].model_copy(update={"seq": seq})


def node_tokens(db_url: str, nodes: int) -> list[str]:
    """One node token per node, issued as `gpucap ledger token --node N --site S` does."""
    from gpucap.ledger import tokens
    from gpucap.ledger.settings import Settings, utc_now
    from gpucap.ledger.store import Store

    store = Store.open(Settings(db_url=db_url, sqlite_synchronous="NORMAL"))
    try:
        return [
            tokens.issue(store, "node", utc_now(), None, node_id=node_id(n), site_id=site_id(n))[1]
            for n in range(nodes)
        ]
    finally:
        store.close()


def gpucap_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gpucap ARGS` with this interpreter (our own arguments, no outside input)."""
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gpucap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=600,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    argv: Sequence[str], ready_path: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m ARGV --port P` until the block ends; yields (base URL, process) once
    `ready_path` answers 200. Stopped with SIGTERM (a ledger signs what it appended)."""
    port = free_port()
    cmd = [sys.executable, "-m", *argv, "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 (our interpreter, arguments built here)
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(argv)} exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(argv)} not ready in 120 s; see {log}")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def log_kinds(db_url: str) -> dict[str, int]:
    """log_entry rows by kind, pending ones included."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT kind, count(*) FROM log_entry GROUP BY kind"))
            return {str(kind): int(n) for kind, n in rows}
    finally:
        engine.dispose()


def log_state(db_url: str) -> tuple[int, int]:
    """(integrated tree size, entries appended but still pending)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            size = conn.execute(sa.text("SELECT size FROM log_state WHERE id = 1")).scalar_one()
            pending = conn.execute(
                sa.text("SELECT count(*) FROM log_entry WHERE idx IS NULL")
            ).scalar_one()
            return int(size), int(pending)
    finally:
        engine.dispose()


@contextmanager
def pg_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema on `base_url` (dropped afterwards)."""
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
