"""Shared builders for the ledger tests: databases (SQLite file or a fresh PostgreSQL schema),
reports, a registry, a settable clock, and a real uvicorn server in a subprocess."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.conftest import unavailable

H100_TPP = 15832
REGISTRY = """\
ruleset: us-bis-ai-diffusion-2025
countries: {AE: {gov_agreement: true}}
entities:
  - {id: acme, headquarters: US, status: uveu}
  - {id: nimbus, headquarters: AE, status: nveu, nveu_countries: [AE]}
sites:
  - {id: acme-ae-1, entity: acme, country: AE}
  - {id: acme-us-1, entity: acme, country: US}
  - {id: nimbus-ae-1, entity: nimbus, country: AE}
inventory:
  - {site: acme-us-1, model: h100-sxm5-80gb, count: 1000, installed: 2025-06-01}
"""


# A territory the rule pack treats as another country: checks for a site in HK are `country:CN`.
HK_REGISTRY = """\
ruleset: us-bis-ai-diffusion-2025
entities:
  - {id: acme, headquarters: US, status: uveu}
  - {id: harbour, headquarters: SG, status: none}
sites:
  - {id: acme-us-1, entity: acme, country: US}
  - {id: harbour-hk-1, entity: harbour, country: HK}
  - {id: harbour-sg-1, entity: harbour, country: SG}
"""


class Clock:
    """A settable UTC clock for Settings(clock=...)."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def pg_base_url() -> str | None:
    url = os.environ.get("GPUCAP_TEST_DATABASE_URL")
    if not url:
        unavailable("GPUCAP_TEST_DATABASE_URL is not set (a PostgreSQL server)")
    return url


@contextmanager
def pg_schema_url(base: str) -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL unreachable: {exc.orig}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def device(i: int, node: str = "n1", **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "uuid": f"GPU-{node}-{i:04d}",
        "pci_device_id": "0x2330",
        "pci_subsystem_id": "0x16c110de",
        "name": "NVIDIA H100 80GB HBM3",
        "serial": f"S{node}{i:04d}",
        "board_part_number": "692-2G520-0200-000",
        "memory_total_bytes": 85899345920,
        "mig_enabled": False,
        "state": "ok",
        "model": "h100-sxm5-80gb",
        "tpp": 15832.0,
        "h100e": 1.0,
    }
    d.update(over)
    return d


def report(
    node: str = "n1",
    site: str = "acme-ae-1",
    seq: int = 1,
    devices: list[dict[str, Any]] | None = None,
    n: int = 8,
) -> dict[str, Any]:
    return {
        "schema": "gpucap.report/v1",
        "node_id": node,
        "site_id": site,
        "seq": seq,
        "collected_at": "2025-09-01T10:00:00Z",
        "agent_version": "0.1.0",
        "driver_version": "550.54.15",
        "devices": devices if devices is not None else [device(i, node) for i in range(n)],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpucap(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (variables set to "" in `env` are removed)."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpucap", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in merged.items() if v or k not in (env or {})},
        timeout=120,
        check=False,
        cwd=cwd,
    )


@contextmanager
def ledger_server(db_url: str, registry: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`gpucap ledger serve` on a free loopback port; yields its base URL once ready."""
    with ledger_server_proc(db_url, registry, env) as (url, _proc):
        yield url


@contextmanager
def ledger_server_proc(
    db_url: str, registry: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`gpucap ledger serve` on a free loopback port; yields (base URL, process) once ready."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucap",
            "ledger",
            "serve",
            "--registry",
            str(registry),
            "--db",
            db_url,
            "--port",
            str(port),
        ],
        env={**os.environ, "GPUCAP_REVOCATION_TTL_S": "0", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"ledger exited early ({proc.returncode}):\n{out}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("ledger did not become ready in 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def dumps(value: Any) -> str:
    return json.dumps(value)


def log_kinds(db_url: str, *, tokens: bool = False) -> list[str]:
    """The kinds of the log's entries (integrated ones by index, then pending ones by arrival),
    without token issues and revocations unless `tokens`."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT kind FROM log_entry "
                    "ORDER BY CASE WHEN idx IS NULL THEN 1 ELSE 0 END, idx, id"
                )
            )
            return [r[0] for r in rows if tokens or not r[0].startswith("token_")]
    finally:
        engine.dispose()


def record_registry(db_url: str, registry: Path) -> None:
    """Migrate the database and record `registry` as `serve --registry` would, without serving
    (`gpucap ledger token` checks node and entity tokens against it)."""
    from gpucap.core.catalogue import default_catalogue
    from gpucap.ledger import ingest
    from gpucap.ledger.service import registry_doc
    from gpucap.ledger.settings import Settings, utc_now
    from gpucap.ledger.store import Store

    store = Store.open(Settings(db_url=db_url))
    try:
        doc = registry_doc(registry, default_catalogue())
        ingest.set_registry(store, doc, str(registry), utc_now(), "registry-file")
    finally:
        store.close()
