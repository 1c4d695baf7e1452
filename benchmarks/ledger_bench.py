"""Ledger benchmark: ingest throughput and headroom-query latency. Prints numbers; asserts none.

    .venv/bin/python -m benchmarks.ledger_bench [--nodes 1000] [--pg URL] [--skip-ingest]
        [--skip-headroom] [--headroom-rounds 30] [--only-sqlite-full] [--http]
        [--http-seconds 10] [--http-threads 4]

Ingest goes through `Ledger.ingest` after `Report.model_validate_json`, i.e. everything the
`POST /v1/reports` route does except HTTP and authentication, one report at a time from one
thread. Each simulated node sends 8-GPU reports: a first report (new devices), an unchanged
report, and a changed report (one GPU swapped).

`--http` measures the whole path instead: a real `gpucap ledger serve` subprocess on 127.0.0.1
(SQLite, default synchronous=FULL) and client threads posting unchanged 8-GPU reports with node
tokens over keep-alive httpx connections, for a bounded time. Client and server share the CPUs.

Headroom: a registry of 10,000 sites in 150 countries (1,000 entities) and 1,000,000 observed
GPUs (100 per site, two lines per site) seeded into the `inventory_line` projection; latency is
`headroom_body`, i.e. the route's work up to the response bytes, including the per-request
database check that validates the cached evaluation. "Right after a changed report" times the
query that follows each of `--headroom-rounds` changed reports (a new projection version each
time, so the cache never helps). The four targets of the fleet-scale issue are printed last, for
each database. `--skip-ingest` runs the headroom part only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from gpucap.core.catalogue import default_catalogue
from gpucap.core.ruleset import country_codes
from gpucap.ledger import ingest, tokens
from gpucap.ledger.app import headroom_answer, headroom_body
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger, serving_policy
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store, bump_projection
from gpucap.ledger.tables import table
from gpucap.ledger.tokens import Principal

START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.moment = START

    def __call__(self) -> datetime:
        self.moment += timedelta(microseconds=50)
        return self.moment


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(label: str, lat_s: list[float], wall_s: float) -> str:
    return (
        f"  {label:<28} {len(lat_s) / wall_s:>9,.0f} reports/s   "
        f"p50 {_pct(lat_s, 0.5) * 1e3:6.2f} ms   p99 {_pct(lat_s, 0.99) * 1e3:6.2f} ms"
    )


def _device(node: int, i: int) -> dict[str, Any]:
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
        "tpp": 15832,
        "h100e": 1.0,
    }


def _report(node: int, seq: int, swap: bool = False) -> bytes:
    devices = [_device(node, i) for i in range(8)]
    if swap:
        devices[seq % 8] = _device(node, 8 + seq)
    return json.dumps(
        {
            "schema": "gpucap.report/v1",
            "node_id": f"node-{node:06d}",
            "site_id": f"site-{node % 50:05d}",
            "seq": seq,
            "collected_at": "2026-01-05T10:00:00.000Z",
            "agent_version": "0.1.0",
            "driver_version": "550.54.15",
            "devices": devices,
        }
    ).encode()


DIFFUSION = "us-bis-ai-diffusion-2025"


def _registry(
    n_sites: int, n_countries: int, n_entities: int, packs: tuple[str, ...] = (DIFFUSION,)
) -> dict[str, Any]:
    codes = [*sorted(country_codes() - {"US"})[: n_countries - 1], "US"]
    entities = []
    for e in range(n_entities):
        if e % 10 == 0:
            entities.append({"id": f"ent-{e:04d}", "headquarters": "US", "status": "uveu"})
        elif e % 20 == 1:
            home = codes[e % len(codes)]
            entities.append(
                {
                    "id": f"ent-{e:04d}",
                    "headquarters": home,
                    "status": "nveu",
                    "nveu_countries": [home],
                }
            )
        else:
            entities.append({"id": f"ent-{e:04d}", "headquarters": codes[e % len(codes)]})
    sites = [
        {
            "id": f"site-{s:05d}",
            "entity": f"ent-{s % n_entities:04d}",
            "country": codes[(s * 7) % len(codes)],
        }
        for s in range(n_sites)
    ]
    return {"rulesets": list(packs), "entities": entities, "sites": sites}


@contextmanager
def _database(kind: str, pg_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    assert pg_url is not None
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _open(url: str, synchronous: str = "FULL") -> Ledger:
    settings = Settings(db_url=url, clock=_Clock(), sqlite_synchronous=synchronous)
    return Ledger(settings, Store.open(settings), default_catalogue())


def _timed(led: Ledger, bodies: list[bytes]) -> tuple[list[float], float]:
    lat: list[float] = []
    t0 = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        outcome = led.ingest(Report.model_validate_json(body))
        lat.append(time.perf_counter() - t)
        assert outcome.status == "accepted"
    return lat, time.perf_counter() - t0


def bench_ingest(url: str, label: str, nodes: int, synchronous: str = "FULL") -> None:
    led = _open(url, synchronous)
    try:
        ingest.set_registry(led.store, _registry(50, 5, 10), "bench", START, "bench")
        print(f"ingest on {label}: {nodes} nodes x 8 GPUs")
        lat, wall = _timed(led, [_report(n, 1) for n in range(nodes)])
        print(_line("first report (8 new GPUs)", lat, wall))
        lat, wall = _timed(led, [_report(n, 2) for n in range(nodes)])
        print(_line("unchanged inventory", lat, wall))
        lat, wall = _timed(led, [_report(n, 3, swap=True) for n in range(nodes)])
        print(_line("changed inventory (1 swap)", lat, wall))
    finally:
        led.store.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ledger exited early ({proc.returncode})")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("ledger did not become ready in 60 s")


def bench_http(seconds: float, n_threads: int, nodes_per_thread: int = 16) -> None:
    """POST /v1/reports against a real `gpucap ledger serve` from `n_threads` client threads."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        registry = Path(tmp) / "registry.yaml"
        registry.write_text(json.dumps(_registry(50, 5, 10)), encoding="utf-8")
        settings = Settings(db_url=url)
        store = Store.open(settings)
        nodes = range(n_threads * nodes_per_thread)
        try:
            bearer = {
                n: tokens.issue(
                    store,
                    "node",
                    START,
                    None,
                    node_id=f"node-{n:06d}",
                    site_id=f"site-{n % 50:05d}",
                )[1]
                for n in nodes
            }
        finally:
            store.close()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "gpucap", "ledger", "serve", "--registry", str(registry)]
        cmd += ["--db", url, "--port", str(port)]
        # Our own interpreter and arguments built here, no outside input.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            _wait_ready(base, proc)
            with httpx.Client(base_url=base) as client:  # first reports (new devices): warm-up
                for n in nodes:
                    headers = {
                        "authorization": f"Bearer {bearer[n]}",
                        "content-type": "application/json",
                    }
                    client.post("/v1/reports", content=_report(n, 1), headers=headers)
            lat: list[list[float]] = [[] for _ in range(n_threads)]
            failures: list[int] = [0] * n_threads
            stop = time.perf_counter() + seconds

            def client_loop(k: int) -> None:
                mine = [n for n in nodes if n % n_threads == k]
                seq = 1
                with httpx.Client(base_url=base, timeout=30) as client:
                    while time.perf_counter() < stop:
                        seq += 1
                        for n in mine:
                            body = _report(n, seq)
                            headers = {
                                "authorization": f"Bearer {bearer[n]}",
                                "content-type": "application/json",
                            }
                            t = time.perf_counter()
                            r = client.post("/v1/reports", content=body, headers=headers)
                            lat[k].append(time.perf_counter() - t)
                            if r.status_code != 200 or r.json()["status"] != "accepted":
                                failures[k] += 1

            t0 = time.perf_counter()
            workers = [threading.Thread(target=client_loop, args=(k,)) for k in range(n_threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        every = [x for per in lat for x in per]
        print(
            f"HTTP POST /v1/reports, real `gpucap ledger serve` (SQLite WAL, synchronous=FULL), "
            f"{n_threads} client threads, {len(nodes)} nodes x 8 GPUs, {wall:.1f} s"
        )
        print(_line("unchanged inventory", every, wall) + f"   failures {sum(failures)}")


def _free_port() -> int:
    """A free loopback port (released before the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed_fleet(led: Ledger, n_sites: int, gpus_per_site: int) -> int:
    line_t = table("inventory_line")
    rows, total = [], 0
    for s in range(n_sites):
        site = f"site-{s:05d}"
        half = gpus_per_site // 2
        for model, tpp, cls, installed, count in (
            ("h100-sxm5-80gb", 15832, "3A090.a", "2025-03-01", half),
            ("b200-sxm-180gb", 36000, "3A090.a", "2025-11-01", gpus_per_site - half),
        ):
            key = f"{site}|{model}|{tpp}|{cls}|{installed}|"
            rows.append(
                {
                    "key": key,
                    "site_id": site,
                    "model": model,
                    "tpp": tpp,
                    "eccn_class": cls,
                    "installed": installed,
                    "removed": None,
                    "count": count,
                }
            )
            total += count
    with led.store.write() as conn:
        version = bump_projection(conn)  # the rows carry the version they are written at
        for row in rows:
            row["version"] = version
        for i in range(0, len(rows), 5000):
            conn.execute(sa.insert(line_t), rows[i : i + 5000])
    return total


def _stats(lat: list[float]) -> str:
    return (
        f"p50 {_pct(lat, 0.5) * 1e3:7.2f} ms   p99 {_pct(lat, 0.99) * 1e3:7.2f} ms"
        f"   mean {statistics.fmean(lat) * 1e3:7.2f} ms   (n={len(lat)})"
    )


def _latency(label: str, fn: Callable[[], Any], n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    print(f"  {label:<44} {_stats(lat)}")
    return lat


# The fleet-scale issue's targets at 1,000,000 GPUs: p99 in seconds.
_TARGETS = (
    ("whole fleet, right after a change", 0.030),
    ("whole fleet, warm", 0.005),
    ("scoped, warm", 0.002),
    ("scoped, right after a change", 0.010),
)


def bench_headroom(
    url: str,
    label: str,
    n_sites: int,
    n_countries: int,
    n_gpus: int,
    rounds: int = 30,
    packs: tuple[str, ...] = (DIFFUSION,),
) -> None:
    led = _open(url, "NORMAL")
    try:
        t = time.perf_counter()
        ingest.set_registry(
            led.store, _registry(n_sites, n_countries, 1000, packs), "bench", START, "bench"
        )
        total = _seed_fleet(led, n_sites, n_gpus // n_sites)
        print(
            f"headroom on {label}: {total:,} GPUs, {n_sites:,} sites, {n_countries} countries, "
            f"packs {', '.join(packs)} (seeded in {time.perf_counter() - t:.1f} s)"
        )
        serving_policy(led)  # as `gpucap ledger serve` does after start-up
        admin = Principal("bench", "operator", operator="root")
        scoped = Principal("bench2", "operator", operator="ops", entity="ent-0010")
        day = date(2026, 1, 6).isoformat()
        t = time.perf_counter()
        headroom_body(led, admin, None, day)
        cold = time.perf_counter() - t
        answer = headroom_answer(led, admin, None, day)
        print(
            f"  cold (cache miss: load lines, evaluate)      {cold:.2f} s"
            f"   -> {len(answer['checks'])} checks, {len(answer['sites'])} sites"
        )

        def ask(principal: Principal, scope: str | None) -> Callable[[], Any]:
            return lambda: headroom_body(led, principal, scope, day)

        warm_scoped: list[float] = []
        for what, principal, scope in (
            ("scope=country:US (all operators' view)", admin, "country:US"),
            ("scope=entity:ent-0010", admin, "entity:ent-0010"),
            ("scope=site:site-00010", admin, "site:site-00010"),
            ("entity-scoped token, no scope", scoped, None),
        ):
            warm_scoped += _latency(what, ask(principal, scope), 300)
        warm_whole = _latency("no scope, all checks and sites (large JSON)", ask(admin, None), 300)
        print(f"  right after a changed report (1 GPU swapped; {rounds} rounds each):")
        led.ingest(Report.model_validate_json(_report(0, 1)))
        seq = 2
        changed_scoped: list[float] = []
        for what, principal, scope in (
            ("scope=country:US", admin, "country:US"),
            ("scope=site:site-00010", admin, "site:site-00010"),
            ("entity-scoped token, no scope", scoped, None),
        ):
            changed_scoped += _after_change(led, what, ask(principal, scope), rounds, seq)
            seq += rounds
        changed_whole = _after_change(led, "no scope (large JSON)", ask(admin, None), rounds, seq)
        print(f"  targets at {total:,} GPUs (p99):")
        for (what, target), lat in zip(
            _TARGETS, (changed_whole, warm_whole, warm_scoped, changed_scoped), strict=True
        ):
            p99 = _pct(lat, 0.99)
            met = "met" if p99 < target else "NOT met"
            print(
                f"    {what:<36} p50 {_pct(lat, 0.5) * 1e3:6.2f} ms   p99 {p99 * 1e3:6.2f} ms"
                f"   target < {target * 1e3:.0f} ms: {met}"
            )
    finally:
        led.store.close()


def _after_change(
    led: Ledger, label: str, query: Callable[[], Any], rounds: int, first_seq: int
) -> list[float]:
    """Latency of `query` right after each of `rounds` changed reports of one node (each a new
    projection version): what an operator sees on a busy fleet. The ingest is not timed."""
    lat = []
    for seq in range(first_seq, first_seq + rounds):
        before = led.store.state().projection_version
        assert led.ingest(Report.model_validate_json(_report(0, seq, swap=True))).status == (
            "accepted"
        )
        assert led.store.state().projection_version != before
        t = time.perf_counter()
        query()
        lat.append(time.perf_counter() - t)
    print(f"    {label:<42} {_stats(lat)}")
    return lat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pg", default=os.environ.get("GPUCAP_TEST_DATABASE_URL"))
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--countries", type=int, default=150)
    parser.add_argument("--gpus", type=int, default=1_000_000)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-headroom", action="store_true")
    parser.add_argument(
        "--headroom-rounds",
        type=int,
        default=30,
        help="changed reports, each followed by a timed headroom query (per query kind)",
    )
    parser.add_argument(
        "--only-sqlite-full",
        action="store_true",
        help="only the in-process ingest on SQLite with synchronous=FULL (quick iteration)",
    )
    parser.add_argument(
        "--http", action="store_true", help="only the HTTP path against a real ledger server"
    )
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--http-threads", type=int, default=4)
    parser.add_argument(
        "--rulesets",
        default=DIFFUSION,
        help="comma-separated packs the headroom registry evaluates (default: the Diffusion pack)",
    )
    args = parser.parse_args(argv)
    backends = ["sqlite"] + (["postgres"] if args.pg else [])
    print(f"gpucap ledger benchmark, {os.cpu_count()} CPUs")
    if args.http:
        bench_http(args.http_seconds, args.http_threads)
        return 0
    if args.only_sqlite_full:
        with _database("sqlite", None) as url:
            bench_ingest(url, "SQLite (WAL, synchronous=FULL)", args.nodes, "FULL")
        return 0
    if not args.skip_ingest:
        for kind in backends:
            with _database(kind, args.pg) as url:
                if kind == "sqlite":
                    bench_ingest(url, "SQLite (WAL, synchronous=FULL)", args.nodes, "FULL")
                else:
                    bench_ingest(url, "PostgreSQL (local, 127.0.0.1)", args.nodes)
            if kind == "sqlite":
                with _database(kind, None) as url:
                    bench_ingest(url, "SQLite (WAL, synchronous=NORMAL)", args.nodes, "NORMAL")
    if not args.skip_headroom:
        for kind in backends:
            with _database(kind, args.pg) as url:
                bench_headroom(
                    url,
                    kind,
                    args.sites,
                    args.countries,
                    args.gpus,
                    args.headroom_rounds,
                    tuple(args.rulesets.split(",")),
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
