"""`gpucap agent run` as a real process against a ledger played by a local HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

pytestmark = pytest.mark.slow


class LedgerServer:
    """The ledger on 127.0.0.1; mode: up, down (503), reject (422), stall (hold the request)."""

    def __init__(self) -> None:
        self.mode = "up"
        self.received: list[dict[str, Any]] = []  # every body, in arrival order
        self.accepted: dict[int, dict[str, Any]] = {}
        self.auth: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.received.append(body)
                    outer.auth.append(self.headers["Authorization"])
                    mode = outer.mode
                if mode == "down":
                    return self._answer(503, {"detail": "down"})
                if mode == "reject":
                    return self._answer(422, {"detail": "devices: rejected for the test"})
                with outer.lock:
                    seq = body["seq"]
                    duplicate = seq in outer.accepted
                    if duplicate:
                        assert outer.accepted[seq] == body, f"seq {seq} reused for another report"
                    outer.accepted[seq] = body
                if mode == "stall":
                    outer.release.wait(30)  # the agent is killed while waiting here
                    return
                self._answer(
                    200,
                    {"status": "duplicate"} if duplicate else {"status": "accepted", "seq": seq},
                )

            def _answer(self, code: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ledger() -> Iterator[LedgerServer]:
    server = LedgerServer()
    yield server
    server.close()


def _agent(
    ledger: LedgerServer,
    spool: Path,
    scenario: str,
    *extra: str,
    token: str = "t0k",  # noqa: S107 (a test token)
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUCAP_")}
    env.update({"GPUCAP_TOKEN": token, "GPUCAP_SITE": "site-a"})  # options from the environment too
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucap",
            "agent",
            "run",
            "--ledger",
            ledger.url,
            "--node-id",
            "node-1",
            "--spool",
            str(spool),
            "--fake",
            scenario,
            "--interval",
            "0.2",
            "--retry-initial",
            "0.05",
            "--retry-max",
            "0.3",
            "--nvml-timeout",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def _uuids(report: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((d["uuid"], d["state"]) for d in report["devices"])


def test_ledger_down_then_up_every_change_once_in_order(
    ledger: LedgerServer, tmp_path: Path, report_schema: dict[str, Any]
) -> None:
    ledger.mode = "down"
    proc = _agent(ledger, tmp_path / "spool", "hot-unplug")
    try:
        _until(lambda: len(ledger.received) >= 6, "retries while the ledger is down")
        assert not ledger.accepted
        ledger.mode = "up"
        _until(lambda: len(ledger.accepted) >= 8, "reports after the ledger came back")
    finally:
        err = _stop(proc)
    seqs = sorted(ledger.accepted)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost, nothing skipped
    arrival = [b["seq"] for b in ledger.received if b["seq"] in ledger.accepted]
    first_arrivals = list(dict.fromkeys(arrival))
    assert first_arrivals == seqs  # in order
    for body in ledger.accepted.values():
        jsonschema.validate(body, report_schema)
        assert body["site_id"] == "site-a"
        assert body["node_id"] == "node-1"
    inventories = [_uuids(ledger.accepted[s]) for s in seqs]
    changes = [inv for i, inv in enumerate(inventories) if i == 0 or inv != inventories[i - 1]]
    assert len(changes) == 3  # 4 GPUs; one missing; replaced by a new UUID in the same slot
    assert set(ledger.auth) == {"Bearer t0k"}
    assert "not delivered" in err


def test_kill_9_mid_send_loses_nothing_and_reuses_no_seq(
    ledger: LedgerServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ledger.mode = "stall"
    proc = _agent(ledger, spool, "dgx-h100")
    try:
        _until(lambda: len(ledger.received) >= 1, "the first send")
        time.sleep(0.5)  # let more collections reach the spool while the send hangs
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.communicate(timeout=30)
    stalled = ledger.received[0]["seq"]
    spooled = sorted(int(p.name.split(".")[0]) for p in (spool / "reports").glob("*.json"))
    assert spooled[0] == stalled
    assert spooled == list(range(stalled, stalled + len(spooled)))
    ledger.mode = "up"
    ledger.release.set()
    proc = _agent(ledger, spool, "dgx-h100")
    try:
        _until(lambda: len(ledger.accepted) >= len(spooled) + 5, "reports after the restart")
    finally:
        _stop(proc)
    seqs = sorted(ledger.accepted)
    assert seqs[: len(spooled)] == spooled  # everything spooled before the kill arrived
    arrival = list(dict.fromkeys(b["seq"] for b in ledger.received))
    assert arrival == seqs  # strictly increasing, across the restart too (the handler checks
    # that no seq ever arrives with another body)
    resent = [b["seq"] for b in ledger.received].count(stalled)
    assert resent == 2  # delivered once before the kill, resent once after: a duplicate, not a loss


def test_rejected_reports_are_quarantined_and_agent_keeps_running(
    ledger: LedgerServer, tmp_path: Path
) -> None:
    ledger.mode = "reject"
    proc = _agent(ledger, tmp_path / "spool", "l40s-x4")
    try:
        _until(lambda: len(ledger.received) >= 3, "rejections")
        assert proc.poll() is None
    finally:
        err = _stop(proc)
    reasons = sorted((tmp_path / "spool" / "quarantine").glob("*.reason"))
    assert len(reasons) >= 3
    assert reasons[0].read_text() == "HTTP 422: devices: rejected for the test\n"
    seqs = [b["seq"] for b in ledger.received]
    reason = "HTTP 422: devices: rejected for the test"
    assert f"ledger rejected report {seqs[0]}, quarantined: {reason}" in err
    assert seqs == sorted(set(seqs))  # each rejected once, never retried


def test_sighup_rereads_the_config_file(ledger: LedgerServer, tmp_path: Path) -> None:
    conf = tmp_path / "agent.env"
    conf.write_text("# reloaded on SIGHUP\nGPUCAP_TOKEN=first\nGPUCAP_BOGUS=1\n")
    proc = _agent(ledger, tmp_path / "spool", "mig-a100", "--config", str(conf))
    try:
        _until(lambda: "Bearer first" in ledger.auth, "a report with the first token")
        conf.write_text('GPUCAP_TOKEN="second"\n')
        proc.send_signal(signal.SIGHUP)
        _until(lambda: "Bearer second" in ledger.auth, "a report with the reloaded token")
    finally:
        err = _stop(proc)
    assert "configuration reloaded: token" in err
    # Logged in the agent's format, once: the reloaded file no longer has the key.
    warning = f"WARNING gpucap.agent.config: config file {conf}: unknown key GPUCAP_BOGUS ignored"
    assert err.count(warning) == 1


@pytest.mark.parametrize(
    ("scenario", "expect"),
    [
        ("gpu-lost-midrun", "lost"),
        ("driver-reload", "550.90.07"),
        ("no-driver", "LIBRARY_NOT_FOUND"),
    ],
)
def test_fault_scenarios_end_to_end(
    ledger: LedgerServer, tmp_path: Path, scenario: str, expect: str
) -> None:
    proc = _agent(ledger, tmp_path / "spool", scenario)
    try:
        if scenario == "no-driver":
            time.sleep(1.0)
        else:
            _until(
                lambda: expect in json.dumps(list(ledger.accepted.values())), f"{expect} reported"
            )
    finally:
        err = _stop(proc)
    if scenario == "no-driver":
        assert not ledger.received
        assert "NVML unavailable, agent degraded" in err
        assert expect in err
    if scenario == "gpu-lost-midrun":
        last = ledger.accepted[max(ledger.accepted)]
        assert [d["state"] for d in last["devices"]].count("lost") == 1
        assert len(last["devices"]) == 8
    if scenario == "driver-reload":
        assert "NVML up: driver 550.90.07" in err
