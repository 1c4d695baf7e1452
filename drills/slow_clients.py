"""`slow-clients`: a thousand slow and idle connections held against one `gpucap ledger serve`.

`tests/ledger/test_slow_clients.py` at scale: connections that trickle their headers, idle ones,
and reports whose body never finishes. Meanwhile `/healthz` and `POST /v1/reports` must keep
answering (their latencies are measured), and the ledger must close every slow connection
within its header or body timeout. The drill raises its own RLIMIT_NOFILE (the ledger inherits
it) and the ledger's connection cap above the number of connections held.
"""

from __future__ import annotations

import resource
import selectors
import socket
import statistics
import time

import httpx

from drills.common import REGISTRY, LedgerProc, Result, issue_token, nodes, verify, workdir

CONNECTIONS = 1000
SLOW_BODIES = 20
HEADER_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 5.0
SLACK_S = 5.0
PROBE_S = HEADER_TIMEOUT_S - 1.0  # probe while every slow connection is still held


def _report(seq: int) -> dict[str, object]:
    device = {
        "uuid": "GPU-slow-0001", "pci_device_id": "0x2330", "pci_subsystem_id": "0x16c110de",
        "name": "NVIDIA H100 80GB HBM3", "serial": "S0001",
        "board_part_number": "692-2G520-0200-000",
        "memory_total_bytes": 85899345920, "mig_enabled": False, "state": "ok",
        "model": "h100-sxm5-80gb", "tpp": 15832.0, "h100e": 1.0,
    }  # fmt: skip
    return {
        "schema": "gpucap.report/v1", "node_id": "n1", "site_id": "acme-us-1", "seq": seq,
        "collected_at": "2026-01-01T00:00:00Z", "agent_version": "0.1.0",
        "driver_version": "550.54.15", "devices": [device],
    }  # fmt: skip


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _closed_within(socks: list[socket.socket], limit_s: float) -> list[float]:
    """When (seconds from now) the server closed each of `socks` that it closed within
    `limit_s`."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    started, closed = time.monotonic(), list[float]()
    while len(closed) < len(socks) and (left := limit_s - (time.monotonic() - started)) > 0:
        for key, _ in sel.select(timeout=left):
            conn = key.fileobj
            if not isinstance(conn, socket.socket):
                continue
            try:
                data = conn.recv(65536)
            except (ConnectionResetError, BlockingIOError) as exc:
                if isinstance(exc, BlockingIOError):
                    continue
                data = b""
            if data == b"":
                sel.unregister(conn)
                closed.append(time.monotonic() - started)
    sel.close()
    return closed


def _timed(call: object) -> float:
    started = time.perf_counter()
    assert callable(call)
    call()
    return time.perf_counter() - started


def slow_clients() -> Result:
    result = Result("slow-clients")
    limit = _raise_nofile(4 * CONNECTIONS + 1024)
    held = min(CONNECTIONS, (limit - 256) // 2)  # both ends of each connection are on this box
    with workdir("slow-clients") as root:
        registry = root / "registry.yaml"
        registry.write_text(REGISTRY, encoding="utf-8")
        db_url = f"sqlite:///{root / 'ledger.db'}"
        env = {
            "GPUCAP_LEDGER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "GPUCAP_LEDGER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "GPUCAP_LEDGER_LIMIT_CONCURRENCY": str(held + 500),
        }
        ledger = LedgerProc("ledger", root, db_url, registry, env)
        ledger.start_ready()
        token = issue_token(db_url, "--node", "n1", "--site", "acme-us-1")
        operator = issue_token(db_url, "--operator", "drill")
        headers = {"Authorization": f"Bearer {token}"}
        socks: list[socket.socket] = []
        try:
            opened = time.monotonic()
            trickle = held - held // 5 - SLOW_BODIES
            for _ in range(trickle):
                sock = socket.create_connection(("127.0.0.1", ledger.port), timeout=10)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                socks.append(sock)
            socks += [
                socket.create_connection(("127.0.0.1", ledger.port), timeout=10)
                for _ in range(held // 5)
            ]
            head = (
                "POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n{{"
            ).encode()
            for _ in range(SLOW_BODIES):
                sock = socket.create_connection(("127.0.0.1", ledger.port), timeout=10)
                sock.sendall(head)
                socks.append(sock)
            open_s = time.monotonic() - opened
            health: list[float] = []
            ingest: list[float] = []
            statuses: set[str] = set()
            with httpx.Client(timeout=10) as client:
                seq = 0
                while time.monotonic() - opened < PROBE_S:
                    seq += 1

                    def probe() -> None:
                        statuses.add(f"healthz {client.get(f'{ledger.url}/healthz').status_code}")

                    def post(seq: int = seq) -> None:
                        got = client.post(
                            f"{ledger.url}/v1/reports", json=_report(seq), headers=headers
                        )
                        statuses.add(f"report {got.json().get('status', got.status_code)}")

                    health.append(_timed(probe))
                    ingest.append(_timed(post))
            probed_s = time.monotonic() - opened
            closes = [
                probed_s + t
                for t in _closed_within(socks, HEADER_TIMEOUT_S + BODY_TIMEOUT_S + SLACK_S)
            ]
            after = httpx.get(f"{ledger.url}/healthz", timeout=10).status_code
            last_seq = nodes(ledger.url, operator)["n1"]["last_seq"]
        finally:
            for sock in socks:
                sock.close()
            ledger.stop()
        clean, text = verify(db_url)
    result.did = (
        f"{len(socks)} connections held against one ledger on SQLite ({trickle} trickling "
        f"headers, {held // 5} idle, {SLOW_BODIES} unfinished report bodies; opened in "
        f"{open_s:.1f} s, RLIMIT_NOFILE {limit}); header/body timeouts "
        f"{HEADER_TIMEOUT_S:.0f}/{BODY_TIMEOUT_S:.0f} s"
    )
    result.sent = f"{seq} reports and {seq} /healthz over {PROBE_S:.0f} s while they were held"
    result.acknowledged = f"{sorted(statuses)}"
    result.stored = f"node n1 last seq {last_seq} (of {seq})"
    result.duplicates = "0 (each seq sent once)"
    result.verify = text
    result.recovery_s = (
        f"{len(closes)}/{len(socks)} slow connections closed by the ledger, the first "
        f"{min(closes, default=0):.2f} s and the last {max(closes, default=0):.2f} s after the "
        "first was opened"
    )

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"

    result.notes.append(f"/healthz {ms(health)}; POST /v1/reports {ms(ingest)}")
    result.check(statuses == {"healthz 200", "report accepted"}, f"answers: {sorted(statuses)}")
    result.check(last_seq == seq, f"last seq {last_seq}, {seq} reports accepted")
    result.check(
        len(closes) == len(socks), f"{len(socks) - len(closes)} slow connections left open"
    )
    early = sum(1 for t in closes if t < HEADER_TIMEOUT_S - 0.5)
    result.check(early == 0, f"{early} connections closed before the header timeout (refused)")
    result.check(after == 200, f"/healthz answered {after} after the slow clients")
    result.check(held == CONNECTIONS, f"only {held} connections: RLIMIT_NOFILE is {limit}")
    result.check(clean, f"gpucap ledger verify: {text}")
    return result
