"""PostgreSQL ingest in process: 1 writer thread against 4, and 1 ledger process against 2.

    .venv/bin/python -m benchmarks.ledger_pg_bench --pg URL [--seconds 5] [--runs 3]
        [--nodes 1000] [--writers 4] [--warmup 2]

(URL defaults to GPUCAP_TEST_DATABASE_URL.) Each run set gets a fresh schema: migrate, load a
registry of 50 sites, enrol every node with a first 8-GPU report (not timed), then alternate
runs, `--runs` each. A run is `--seconds` of threads calling `Ledger.ingest(report)` (which
queues for the group committer and waits for the commit), each thread cycling through its own
share of the nodes with seqs one above the last. The ledger runs its integrator thread, as a
serving process does. Unchanged reports are heartbeats; changed reports alternate a node
between 8 and 7 GPUs, so each one folds the devices and appends one `report` entry. Reports
are pydantic `Report` objects (a copy with the next seq), so validation is not timed. Process
runs: one process with --writers threads against two processes on the same database with
--writers threads each (spawned, started together by a barrier), combined reports/s.
Afterwards every set checks that every report was accepted and the log holds exactly the
expected entries.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import writepath as wp
from gpucap.core.catalogue import default_catalogue
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store


def _open(url: str, registry: Path | None) -> Ledger:
    settings = Settings(db_url=url)
    led = Ledger(settings, Store.open(settings), default_catalogue())
    if registry is not None:
        led.load_registry_file(registry)
    led.start()  # the integrator, as in `gpucap ledger serve`
    return led


def _close(led: Ledger) -> None:
    led.stop()
    led.store.close()


def drive(
    led: Ledger,
    reports: wp.Reports,
    nodes: Sequence[int],
    writers: int,
    seconds: float,
    changed: bool,
) -> tuple[int, float]:
    """`writers` threads ingesting for `seconds`: (reports accepted, wall seconds)."""
    counts: list[int] = []
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    def work(mine: Sequence[int]) -> None:
        n = 0
        while time.perf_counter() < deadline:
            outcome = led.ingest(reports.next(mine[n % len(mine)], changed))
            if outcome.status != "accepted":
                failures.append(f"{outcome}")
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=work, args=(nodes[t::writers],)) for t in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"not accepted: {failures[:3]}")
    return sum(counts), time.perf_counter() - t0


def _child(url: str, nodes: list[int], seqs: dict[int, int], args: Any, queue: Any) -> None:
    """One ledger process of a process run (spawned): waits for the others, then drives."""
    led = _open(url, None)
    reports = wp.Reports(nodes, seqs)
    drive(led, reports, nodes, args.writers, args.warmup, args.changed)  # not counted
    args.barrier.wait()
    n, wall = drive(led, reports, nodes, args.writers, args.seconds, args.changed)
    _close(led)
    queue.put((n, wall, reports.seq))


def _processes(
    url: str, reports: wp.Reports, procs: int, args: argparse.Namespace
) -> tuple[int, float]:
    """`procs` ledger processes splitting the nodes: (reports, combined reports/s)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shares = [sorted(reports.seq)[p::procs] for p in range(procs)]
    child_args = argparse.Namespace(
        barrier=ctx.Barrier(procs),
        writers=args.writers,
        seconds=args.seconds,
        warmup=args.warmup,
        changed=args.changed,
    )
    children = [
        ctx.Process(
            target=_child, args=(url, share, {n: reports.seq[n] for n in share}, child_args, queue)
        )
        for share in shares
    ]
    for c in children:
        c.start()
    results = [queue.get(timeout=600) for _ in children]
    for c in children:
        c.join()
        if c.exitcode != 0:
            raise SystemExit(f"a ledger process exited {c.exitcode}")
    for _n, _wall, seqs in results:
        reports.seq.update(seqs)
    return sum(r[0] for r in results), sum(r[0] / r[1] for r in results)


def run_set(base_url: str, registry: Path, args: argparse.Namespace, by_process: bool) -> float:
    """Alternating runs of one kind in a fresh schema; the ratio of the medians."""
    kind = "changed" if args.changed else "unchanged"
    nodes = list(range(args.nodes))
    with wp.pg_schema(base_url) as url:
        reports = wp.Reports(nodes)
        led = _open(url, registry)
        for n in nodes:  # the enrolment: every node's first report, 8 new GPUs
            led.ingest(reports.next(n, False))
        if by_process:
            _close(led)
        else:
            drive(led, reports, nodes, args.writers, args.warmup, args.changed)  # not counted
        labels = (
            ("1 process", "2 processes") if by_process else ("1 writer", f"{args.writers} writers")
        )
        rates: dict[str, list[float]] = {label: [] for label in labels}
        for run in range(args.runs):
            for i, label in enumerate(labels):
                if by_process:
                    n, rate = _processes(url, reports, i + 1, args)
                else:
                    n, wall = drive(
                        led, reports, nodes, (1, args.writers)[i], args.seconds, args.changed
                    )
                    rate = n / wall
                rates[label].append(rate)
                print(
                    f"  run {run + 1} {kind:<9} {label:<11} {rate:>8,.0f} reports/s ({n} reports)"
                )
        if not by_process:
            _close(led)
        kinds = wp.log_kinds(url)
    one, more = (wp.median(rates[label]) for label in labels)
    # Seqs count each node's reports (1 is the enrolment): all of them appended when changed.
    expected = sum(reports.seq.values()) if args.changed else args.nodes
    found = kinds.get("report", 0)
    extra = {k: v for k, v in kinds.items() if k not in ("report", "registry", "presence")}
    print(
        f"  {kind}: {labels[1]} / {labels[0]} = {more / one:.2f}x (medians {more:,.0f} / "
        f"{one:,.0f} reports/s); log: {found} report entries (expected {expected}), "
        f"{kinds.get('presence', 0)} presence, other {extra or 'none'}: "
        f"{'ok' if found == expected and not extra else 'WRONG'}"
    )
    return more / one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pg", default=os.environ.get("GPUCAP_TEST_DATABASE_URL"))
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2, help="seconds, not counted")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--skip-processes", action="store_true")
    args = parser.parse_args(argv)
    if not args.pg:
        parser.error("--pg URL (or GPUCAP_TEST_DATABASE_URL) is required")
    print(
        f"PostgreSQL ingest in process: {os.cpu_count()} CPUs (shared with the server), "
        f"{args.nodes} nodes x 8 GPUs, {args.seconds:g} s per run, {args.runs} runs each, "
        f"alternating, after a {args.warmup:g} s warm-up per set (per process in process runs); "
        "group commit (one writer thread per process)"
    )
    targets = {"unchanged": 2.0, "changed": 1.5}
    with tempfile.TemporaryDirectory() as tmp:
        registry = wp.write_registry(Path(tmp))
        for by_process in (False, True) if not args.skip_processes else (False,):
            for kind, target in targets.items():
                args.changed = kind == "changed"
                ratio = run_set(args.pg, registry, args, by_process)
                if not by_process:
                    met = "met" if ratio >= target else "NOT met"
                    print(f"  target {kind} {args.writers} writers >= {target}x 1 writer: {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
