"""Several ledger processes on one PostgreSQL database: batches that share nodes neither
deadlock nor leak driver errors, a report the database refuses fails alone, and two processes
recording the same new registry both succeed. (SQLite has one writer per file.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpucap.core.catalogue import default_catalogue
from gpucap.ledger import ingest
from gpucap.ledger.errors import RejectedError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger, registry_doc
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, device, log_kinds, pg_base_url, pg_schema_url, report

pytestmark = pytest.mark.postgres
NOW = datetime(2025, 9, 1, 10, tzinfo=UTC)


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = pg_base_url()
    assert base is not None
    with pg_schema_url(base) as url:
        yield url


@pytest.fixture
def seeded(pg_url: str, tmp_path: Path) -> str:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    settings = Settings(db_url=pg_url)
    store = Store.open(settings)
    led = Ledger(settings, store)
    try:
        led.load_registry_file(registry)
        for node in ("a", "b", "c", "d"):
            led.ingest(Report.model_validate(report(node=node, seq=1)))
    finally:
        led.stop()
        store.close()
    return pg_url


def prepared(node: str, seq: int, n: int = 8, **over: object) -> ingest.Prepared:
    body = {**report(node=node, seq=seq, devices=[device(i, node) for i in range(n)]), **over}
    return ingest.prepare(Report.model_validate_json(json.dumps(body)), default_catalogue())


def unvalidated(node: str, seq: int, **over: object) -> ingest.Prepared:
    """A report the API would refuse, built past validation: what the database alone refuses."""
    valid = prepared(node, seq)
    return replace(valid, report=valid.report.model_copy(update=over))


def test_batches_sharing_nodes_in_opposite_orders_never_deadlock(seeded: str) -> None:
    """Each round, two processes write [changed x, heartbeat y] and [heartbeat y, changed z]:
    node rows are locked in node order and the shared row last, so no round may fail."""
    stores = [Store(seeded), Store(seeded)]
    caches = [ingest.SiteCache(), ingest.SiteCache()]
    failures: list[str] = []
    seqs = {"a": 1, "b": 1, "c": 1, "d": 1}
    lock = threading.Lock()

    def next_seq(node: str) -> int:
        with lock:
            seqs[node] += 1
            return seqs[node]

    def run(i: int, start: threading.Barrier) -> None:
        for round_ in range(40):
            first, shared, last = ("a", "c", "b") if i == 0 else ("d", "c", "a")
            batch = [
                prepared(first, next_seq(first), n=7 + round_ % 2),  # changed
                prepared(shared, next_seq(shared)),  # heartbeat
                prepared(last, next_seq(last), n=7 + (round_ + 1) % 2),  # changed
            ]
            if i == 1:
                batch.reverse()
            start.wait(timeout=30)
            results, _n = ingest.ingest_batch(stores[i], batch, NOW, caches[i])
            for r in results:
                if not isinstance(r, ingest.Outcome):
                    failures.append(f"{type(r).__name__}: {r}")

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(i, barrier)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert failures == []


def test_a_report_the_database_refuses_fails_alone(seeded: str) -> None:
    """PostgreSQL text cannot hold NUL: that one report is refused (422, so the agent stops
    retrying it), and the rest of its batch is stored. (The API refuses NUL before it gets this
    far; this is the last line of defence, for whatever else a database may refuse.)"""
    store = Store(seeded)
    try:
        batch = [
            prepared("a", 2, n=7),
            unvalidated("b", 2, agent_version="0.1\u0000"),
            prepared("c", 2),
        ]
        results, appended = ingest.ingest_batch(store, batch, NOW, ingest.SiteCache())
    finally:
        store.close()
    assert results[0] == ingest.Outcome("accepted", 2)
    assert isinstance(results[1], RejectedError)
    assert "the database cannot store this report" in str(results[1])
    assert results[2] == ingest.Outcome("accepted", 2)
    assert appended == 1  # a's changed inventory; c's heartbeat adds nothing


def test_two_processes_recording_one_new_registry_both_succeed(seeded: str, tmp_path: Path) -> None:
    path = tmp_path / "new.yaml"
    path.write_text(REGISTRY.replace("gov_agreement: true", "gov_agreement: false"))
    doc = registry_doc(path, default_catalogue())
    stores = [Store(seeded), Store(seeded)]
    answers: list[object] = []
    start = threading.Barrier(2)

    def record(store: Store) -> None:
        start.wait(timeout=30)
        try:
            answers.append(ingest.set_registry(store, doc, str(path), NOW, "test"))
        except Exception as exc:  # what must not happen: recorded as the test's answer
            answers.append(exc)

    threads = [threading.Thread(target=record, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(map(repr, answers)) == ["False", "True"]
    assert log_kinds(seeded).count("registry") == 2
