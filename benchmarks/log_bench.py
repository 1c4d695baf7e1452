"""The transparency log: database growth, acknowledgement-to-checkpoint latency, proofs at scale.

    .venv/bin/python -m benchmarks.log_bench [--only growth|latency|proofs]
        [--reports 200000] [--nodes 1000] [--threads 8]
        [--latency-reports 300] [--load-connections 0]
        [--latency-base] [--entries 10000000] [--proofs 2000] [--http-proofs 300]
        [--budget-s 60] [--cache-dir /tmp]

growth: a SQLite file (WAL, synchronous=NORMAL: durability does not change the size) and
`Ledger.ingest` from --threads threads (the group committer batches them) with the integrator
running. The nodes enrol (first report each), then send rounds of unchanged 8-GPU reports, one
per node per round; a fake clock starts at 22:00 UTC and advances 60 s per round, so the run
crosses midnight and every node appends one `presence` entry. Growth is the file size after
`PRAGMA wal_checkpoint(TRUNCATE)`, from after the enrolment to the end, extrapolated linearly
per 1,000,000 reports.

latency: a real `gpucap ledger serve` (SQLite, FULL) and changed reports over HTTP, one at a
time (each appends one entry); after each `accepted`, GET /v1/log/checkpoint (operator token
from `gpucap ledger token --operator`) is polled every 2 ms until its size covers the entry.
--load-connections C adds wrk sending heartbeats from 1,000 other nodes meanwhile.

--latency-base runs it on a copy of the --entries log instead of an empty one.

proofs: a log of --entries leaves in the real schema (see biglog.py: tree nodes and checkpoint,
no `log_entry` rows beyond leaf 0, which proofs do not read), cached in --cache-dir. Then
`log.inclusion`/`log.consistency` for random arguments (--proofs of each, or as many as fit in
--budget-s), each verified against `log.root_at`, and the same over HTTP (`serve` without a
registry, so nothing is appended).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks import biglog
from benchmarks import writepath as wp
from gpucap.core.catalogue import default_catalogue
from gpucap.ledger import log, merkle
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, iso_instant
from gpucap.ledger.store import Store

GROWTH_START = datetime(2026, 1, 5, 22, 0, tzinfo=UTC)


class _Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def _checkpointed_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _space(path: Path) -> str:
    """Bytes per table and index (SQLite's dbstat), largest first."""
    try:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 6"
            ).fetchall()
    except sqlite3.OperationalError:
        return "(dbstat not available)"
    return ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in rows)


def growth(args: argparse.Namespace) -> None:
    rounds = max(1, args.reports // args.nodes)
    with tempfile.TemporaryDirectory(prefix="gpucap-log-bench-") as tmp:
        path = Path(tmp) / "growth.db"
        clock = _Clock(GROWTH_START)
        settings = Settings(db_url=f"sqlite:///{path}", clock=clock, sqlite_synchronous="NORMAL")
        led = Ledger(settings, Store.open(settings), default_catalogue())
        led.load_registry_file(wp.write_registry(Path(tmp)))
        led.start()
        nodes = list(range(args.nodes))
        reports = wp.Reports(nodes)
        for n in nodes:
            led.ingest(reports.next(n, False))
        led.integrator.run_once()
        before, kinds0 = _checkpointed_size(path), wp.log_kinds(settings.db_url)

        def next_round() -> None:
            clock.moment += timedelta(seconds=60)

        barrier = threading.Barrier(args.threads, action=next_round)
        refused: list[Any] = []

        def work(mine: list[int]) -> None:
            for _ in range(rounds):
                barrier.wait()
                for n in mine:
                    if led.ingest(reports.next(n, False)).status != "accepted":
                        refused.append(n)

        workers = [
            threading.Thread(target=work, args=(nodes[t :: args.threads],))
            for t in range(args.threads)
        ]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        led.stop()
        led.store.close()
        after, kinds1 = _checkpointed_size(path), wp.log_kinds(settings.db_url)
        sent = rounds * args.nodes
        added = {k: kinds1.get(k, 0) - kinds0.get(k, 0) for k in kinds1}
        per_million = (after - before) * 1e6 / sent
        print(
            f"growth: {sent:,} unchanged reports ({args.nodes} nodes x {rounds} rounds, "
            f"{args.threads} threads, {sent / wall:,.0f} reports/s), SQLite WAL "
            f"synchronous=NORMAL, fake clock {iso_instant(GROWTH_START)} + 60 s per round "
            f"(ends {iso_instant(clock.moment)}); {len(refused)} not accepted"
        )
        print(
            f"  file after enrolment {before / 1e6:.2f} MB, after the reports {after / 1e6:.2f} MB "
            f"(WAL checkpointed): +{(after - before) / 1e6:.3f} MB; log entries added "
            f"{ {k: v for k, v in added.items() if v} or 'none' } (presence: one per node per UTC "
            f"day)"
        )
        print(f"  space now: {_space(path)}")
        verdict = "met" if per_million <= 50e6 else "NOT met"
        print(
            f"  per 1,000,000 unchanged reports: {per_million / 1e6:.2f} MB, linear "
            f"extrapolation (target <= 50 MB: {verdict})"
        )


def _checkpoint_size(client: httpx.Client, token: str) -> int:
    r = client.get("/v1/log/checkpoint", headers={"authorization": f"Bearer {token}"})
    r.raise_for_status()
    return int(r.text.split("\n")[1])  # C2SP checkpoint: origin, size, root, blank, signatures


def latency(args: argparse.Namespace) -> None:
    from benchmarks.ledger_http_bench import enrol

    k = 10  # nodes 0..k-1 send the changed reports; nodes k.. the optional heartbeat load
    load_nodes = 1000 if args.load_connections else 0
    with tempfile.TemporaryDirectory(prefix="gpucap-log-bench-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'ledger.db'}"
        base_entries = 0
        if args.latency_base:
            shutil.copyfile(
                biglog.cached_log(args.entries, Path(args.cache_dir))[0], tmp / "ledger.db"
            )
            base_entries = args.entries
        node_tokens = wp.node_tokens(url, k + load_nodes)
        op = wp.gpucap_cli("ledger", "token", "--db", url, "--operator", "bench")
        if op.returncode != 0:
            raise SystemExit(f"gpucap ledger token failed: {op.stderr}")
        operator = op.stdout.strip()
        serve = ["gpucap", "ledger", "serve", "--registry", str(wp.write_registry(tmp))]
        env = {"GPUCAP_SQLITE_SYNCHRONOUS": "FULL"}
        with (
            wp.server([*serve, "--db", url], "/readyz", tmp / "server.log", env) as (base, _p),
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            enrol(base, node_tokens)
            while wp.log_state(url)[1]:  # until nothing is pending
                time.sleep(0.01)
            expected = _checkpoint_size(client, operator)
            load = None
            if load_nodes:
                load = _start_load(tmp, base, node_tokens[k:], k, args.load_connections)
            waits, posts, load_text = [], [], ""
            try:
                for i in range(args.latency_reports):
                    node, seq = i % k, 2 + i // k  # 7 GPUs on even seqs, 8 on odd: a change
                    t0 = time.perf_counter()
                    r = client.post(
                        "/v1/reports",
                        content=wp.body(node, seq, 7 if seq % 2 == 0 else 8),
                        headers={
                            "authorization": f"Bearer {node_tokens[node]}",
                            "content-type": "application/json",
                        },
                    )
                    acked = time.perf_counter()
                    if r.status_code != 200 or r.json().get("status") != "accepted":
                        raise SystemExit(f"report refused: {r.status_code} {r.text}")
                    expected += 1  # one `report` entry per changed report
                    while _checkpoint_size(client, operator) < expected:
                        time.sleep(0.002)
                    waits.append(time.perf_counter() - acked)
                    posts.append(acked - t0)
            finally:
                if load is not None:
                    load_text = _stop_load(load)
        total, pending = wp.log_state(url)
    under = (
        f"while wrk -c{args.load_connections} (taskset -c 1) sends heartbeats from "
        f"{load_nodes} other nodes"
        if load_nodes
        else "no other load"
    )
    p99 = wp.pct(waits, 0.99)
    start = f"on a copy of the {base_entries:,}-entry log" if base_entries else "an empty log"
    print(
        f"checkpoint latency: {len(waits)} changed reports over HTTP one at a time, "
        f"`gpucap ledger serve` SQLite FULL, {start}, {under}; "
        "checkpoint polled every 2 ms"
    )
    print(
        f"  acknowledged -> signed checkpoint covering it: p50 {wp.pct(waits, 0.5) * 1e3:.1f} ms"
        f"  p99 {p99 * 1e3:.1f} ms  max {max(waits) * 1e3:.1f} ms (target p99 < 2 s: "
        f"{'met' if p99 < 2 else 'NOT met'}); the POST itself p50 "
        f"{wp.pct(posts, 0.5) * 1e3:.1f} ms p99 {wp.pct(posts, 0.99) * 1e3:.1f} ms"
    )
    if load_text:
        print(f"  {load_text}")
    state = "ok" if (total, pending) == (expected, 0) else "WRONG (presence at midnight?)"
    print(f"  tree size at the end {total} ({pending} pending), expected {expected}: {state}")


def _start_load(
    tmp: Path, base: str, tokens: list[str], first_node: int, connections: int
) -> subprocess.Popen[str]:
    """wrk sending heartbeats from the nodes holding `tokens` until `_stop_load`."""
    from benchmarks.ledger_http_bench import lua_script

    script = tmp / "load.lua"
    script.write_text(lua_script(tokens, 1, first_node), encoding="utf-8")
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", "-d600s", "--timeout", "30s"]
    load = subprocess.Popen(  # noqa: S603 (wrk, arguments built here)
        [*cmd, "-s", str(script), base, "--", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(2)
    return load


def _stop_load(load: subprocess.Popen[str]) -> str:
    """Stop wrk (SIGINT: it prints its summary) and describe what the load saw."""
    from benchmarks.ledger_http_bench import wrk_results

    load.send_signal(signal.SIGINT)
    got = wrk_results(load.communicate(timeout=60)[0])
    if "completed" not in got:
        return "heartbeat load: wrk printed no summary"
    return (
        f"heartbeat load meanwhile: {got['accepted'] / (got['duration_us'] / 1e6):,.0f} "
        f"accepted/s, p50 {got['p50_us'] / 1e3:.1f} ms, p99 {got['p99_us'] / 1e3:.1f} ms, "
        f"max {got['max_us'] / 1e3:.1f} ms; {got['bad']} other answers, {got['non2xx']} "
        f"non-2xx, {got['socket_errors']} socket errors"
    )


def _pairs(rng: random.Random, n: int, size: int, inclusion: bool) -> list[tuple[int, int]]:
    """Random (index, size) with index < size, or (first, second) with 0 < first < second."""
    out = []
    for _ in range(n):
        b = rng.randint(2, size)
        out.append((rng.randrange(b), b) if inclusion else (rng.randint(1, b - 1), b))
    return out


def proofs(args: argparse.Namespace) -> None:
    print(f"proofs: a log of {args.entries:,} entries, SQLite (see --help for how it is built)")
    path, token = biglog.cached_log(args.entries, Path(args.cache_dir))
    url = f"sqlite:///{path}"
    store = Store.open_existing(Settings(db_url=url))
    rng = random.Random(20261201)  # noqa: S311 (proof arguments, not secrets)
    try:
        for kind in ("inclusion", "consistency"):
            times: list[float] = []
            stop = time.monotonic() + args.budget_s
            for a, b in _pairs(rng, args.proofs, args.entries, kind == "inclusion"):
                if time.monotonic() > stop:
                    break
                with store.read() as conn:
                    t0 = time.perf_counter()
                    if kind == "inclusion":
                        leaf, proof = log.inclusion(conn, a, b)
                    else:
                        proof = log.consistency(conn, a, b)
                    times.append(time.perf_counter() - t0)
                    root_b = log.root_at(conn, b)
                    if kind == "inclusion":
                        merkle.verify_inclusion(a, b, leaf, proof, root_b)
                    else:
                        merkle.verify_consistency(a, b, proof, log.root_at(conn, a), root_b)
            _print_times(f"log.{kind}(conn, ...)", times, _done(times, args.proofs, args))
    finally:
        store.close()
    if args.http_proofs:
        _http_proofs(args, path, token)


def _done(times: list[float], wanted: int, args: argparse.Namespace) -> str:
    cut = f", stopped by --budget-s {args.budget_s:g}" if len(times) < wanted else ""
    return f"{len(times)} verified{cut}"


def _print_times(label: str, times: list[float], note: str) -> None:
    p99 = wp.pct(times, 0.99)
    print(
        f"  {label:<34} p50 {wp.pct(times, 0.5) * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  "
        f"max {max(times) * 1e3:6.2f} ms  ({note}; target p99 < 10 ms: "
        f"{'met' if p99 < 0.010 else 'NOT met'})"
    )


def _http_proofs(args: argparse.Namespace, path: Path, token: str) -> None:
    """The same proofs through `gpucap ledger serve` (no registry: nothing is appended)."""
    rng = random.Random(7)  # noqa: S311 (proof arguments, not secrets)
    store = Store.open_existing(Settings(db_url=f"sqlite:///{path}"))
    serve = ["gpucap", "ledger", "serve", "--db", f"sqlite:///{path}"]
    headers = {"authorization": f"Bearer {token}"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        wp.server(serve, "/healthz", Path(tmp) / "server.log") as (base, _proc),
        httpx.Client(base_url=base, timeout=30, headers=headers) as client,
    ):
        for kind in ("inclusion", "consistency"):
            times: list[float] = []
            stop = time.monotonic() + args.budget_s
            for a, b in _pairs(rng, args.http_proofs, args.entries, kind == "inclusion"):
                if time.monotonic() > stop:
                    break
                query = {"index": a, "size": b} if kind == "inclusion" else {"from": a, "to": b}
                t0 = time.perf_counter()
                r = client.get(f"/v1/log/proof/{kind}", params=query)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                doc = r.json()
                proof = [base64.b64decode(h) for h in doc["hashes"]]
                with store.read() as conn:
                    root_b = log.root_at(conn, b)
                    if kind == "inclusion":
                        leaf = base64.b64decode(doc["leaf_hash"])
                        merkle.verify_inclusion(a, b, leaf, proof, root_b)
                    else:
                        merkle.verify_consistency(a, b, proof, log.root_at(conn, a), root_b)
            _print_times(
                f"GET /v1/log/proof/{kind}",
                times,
                _done(times, args.http_proofs, args) + ", keep-alive",
            )
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=("growth", "latency", "proofs"))
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency-reports", type=int, default=300)
    parser.add_argument("--load-connections", type=int, default=0)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument("--http-proofs", type=int, default=300)
    parser.add_argument("--budget-s", type=float, default=60, help="seconds per kind of proof")
    parser.add_argument(
        "--latency-base",
        action="store_true",
        help="run the latency part on a copy of the --entries log instead of an empty one",
    )
    parser.add_argument("--cache-dir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    print(f"transparency log benchmark, {os.cpu_count()} CPUs")
    for part in ("growth", "latency", "proofs"):
        if args.only in (None, part):
            {"growth": growth, "latency": latency, "proofs": proofs}[part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
