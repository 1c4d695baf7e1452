"""The auditor's paths at fleet scale: folding the log for `known_at`, explain, the evidence
bundle and its offline verification. Prints numbers; asserts none.

    .venv/bin/python -m benchmarks.audit_bench [--nodes 125000] [--sites 1000] [--db URL]

A SQLite ledger (or the PostgreSQL URL given) gets a registry of `--sites` sites (10 countries,
100 entities) and `--nodes` nodes of 8 H100s each (125,000 nodes: 1,000,000 GPUs), reported
through the write path in batches of 500, then one day of presence entries. Then, each timed
once (they are one-off questions, not a serving path):

- fold: the first `known_at` answer in a fresh process, which folds every entry in memory
  (`PastRecords`), and the peak RSS it leaves;
- a second `known_at` answer at the same size (cached) and one after 100 more changed reports
  (folds only those);
- explain of the largest country check (all its sites' lines and devices);
- an unscoped evidence bundle (file size) and `audit verify` of it.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks import writepath as wp
from gpucap.core.catalogue import default_catalogue
from gpucap.ledger import bundle, ingest, log, note
from gpucap.ledger.app import headroom_answer
from gpucap.ledger.known import parse_known_at
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal

COUNTRIES = ["AE", "SA", "IN", "SG", "MY", "BR", "MX", "PL", "IL", "TH"]
ADMIN = Principal("bench", "auditor", auditor="bench")
AS_OF = date(2026, 12, 1)


def registry(sites: int) -> dict[str, Any]:
    return {
        "ruleset": "us-bis-ai-diffusion-2025",
        "entities": [{"id": f"e{i}", "headquarters": "US"} for i in range(100)],
        "sites": [
            {"id": f"s{i}", "entity": f"e{i % 100}", "country": COUNTRIES[i % len(COUNTRIES)]}
            for i in range(sites)
        ],
    }


def report(node: int, sites: int, seq: int, spare: int = 0) -> Report:
    devices = [wp.device(node, i + spare) for i in range(8)]
    return Report.model_validate(
        {
            "schema": "gpucap.report/v1",
            "node_id": f"n{node:06d}",
            "site_id": f"s{node % sites}",
            "seq": seq,
            "collected_at": "2026-11-30T10:00:00Z",
            "agent_version": "0.1.0",
            "driver_version": "550.54.15",
            "devices": devices,
        }
    )


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn: Any) -> Any:
    start = time.perf_counter()
    out = fn()
    print(f"{label:<58} {time.perf_counter() - start:8.2f} s   peak RSS {rss_mib():7.0f} MiB")
    return out


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def seed(led: Ledger, clock: Clock, nodes: int, sites: int) -> None:
    cat = led.catalogue
    batch: list[Any] = []
    cache = ingest.SiteCache()
    for n in range(nodes):
        batch.append(ingest.prepare(report(n, sites, 1), cat))
        if len(batch) == 500 or n == nodes - 1:
            ingest.ingest_batch(led.store, batch, clock(), cache)
            batch = []
    clock.now += timedelta(days=1)  # the next day's first reports: one presence entry each
    for n in range(nodes):
        batch.append(ingest.prepare(report(n, sites, 2), cat))
        if len(batch) == 500 or n == nodes - 1:
            ingest.ingest_batch(led.store, batch, clock(), cache)
            batch = []
    led.integrator.run_once()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=125000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpucap-audit-bench-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        clock = Clock()
        settings = Settings(db_url=url, clock=clock, sqlite_synchronous="OFF")
        store = Store.open(settings)
        reg = Path(tmp) / "registry.yaml"
        reg.write_text(yaml.safe_dump(registry(args.sites)), encoding="utf-8")
        led = Ledger(settings, store, default_catalogue())
        led.load_registry_file(reg)
        timed(
            f"seed {args.nodes} nodes x 8 GPUs, two days of reports",
            lambda: seed(led, clock, args.nodes, args.sites),
        )
        with store.read() as conn:
            size = log.tree(conn).size
        print(f"log size {size}")
        fresh = Ledger(settings, store, default_catalogue())
        known = f"log_size={size}"
        answer = timed(
            "known_at: first answer (folds the whole log)",
            lambda: headroom_answer(fresh, ADMIN, None, AS_OF.isoformat(), known),
        )
        timed(
            "known_at: same size again (cached)",
            lambda: headroom_answer(fresh, ADMIN, None, AS_OF.isoformat(), known),
        )
        clock.now += timedelta(hours=1)
        cache = ingest.SiteCache()
        more = [
            ingest.prepare(report(n, args.sites, 3, spare=1), led.catalogue) for n in range(100)
        ]
        ingest.ingest_batch(store, more, clock(), cache)
        led.integrator.run_once()
        with store.read() as conn:
            later = log.tree(conn).size
        timed(
            "known_at: 100 entries later (folds only those)",
            lambda: headroom_answer(fresh, ADMIN, None, AS_OF.isoformat(), f"log_size={later}"),
        )
        cap = max(
            (c for c in answer["checks"] if c["scope"].startswith("country:")),
            key=lambda c: c["used_tpp"],
        )
        out = timed(
            f"explain {cap['rule']} {cap['scope']}",
            lambda: fresh.explain(ADMIN, cap["rule"], cap["scope"], AS_OF, parse_known_at(known)),
        )
        print(f"  {len(out['contributions'])} contributions")
        path = Path(tmp) / "evidence.zip"
        timed(
            "export an unscoped evidence bundle",
            lambda: bundle.export(fresh, path, ADMIN, None, AS_OF, parse_known_at(known)),
        )
        print(f"  bundle {path.stat().st_size / 2**20:.1f} MiB")
        key = note.parse_verifier_key(led.signer.verifier_key, "key")
        timed("audit verify (offline replay and compare)", lambda: bundle.verify(path, key))
        store.close()


if __name__ == "__main__":
    main()
