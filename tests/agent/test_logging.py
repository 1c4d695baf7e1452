"""What `gpucap agent run` logs: every line timestamped in UTC, in text or JSON; one line when
delivery recovers; and a full disk logged once per distinct error, not at every step."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpucap.agent.clock import FakeClock
from gpucap.agent.config import load_config
from gpucap.agent.daemon import Daemon
from gpucap.agent.ledger_client import LedgerClient
from gpucap.agent.spool import Spool
from gpucap.core.catalogue import default_catalogue
from gpucap.exporters.snapshots import AgentSnapshot

from .conftest import disk_full_at, make_backend
from .test_e2e import LedgerServer, _agent, _stop, _until

STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"
TEXT_LINE = re.compile(rf"({STAMP}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")
RECOVERED = re.compile(
    r"delivery recovered after (\d+) failed attempt\(s\) over (\d+\.\d) s; (\d+) report\(s\) "
    r"still spooled"
)


def lines_of(err: str, fmt: str) -> list[dict[str, Any]]:
    """Every stderr line as {ts, level, logger, message, ...}; fails on one that is not."""
    out = []
    for raw in err.splitlines():
        if fmt == "json":
            doc = json.loads(raw)
        else:
            match = TEXT_LINE.fullmatch(raw)
            assert match is not None, f"not a timestamped log line: {raw!r}"
            doc = dict(zip(("ts", "level", "logger", "message"), match.groups(), strict=True))
        assert re.fullmatch(STAMP, doc["ts"]), raw
        out.append(doc)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_running_agent_logs_timestamped_lines_and_its_recovery(tmp_path: Path, fmt: str) -> None:
    """A real agent on the fake NVML against a ledger that is down, then up: the config file's
    warning (logged before the format is known), the failed sends, the recovery, the stop."""
    conf = tmp_path / "agent.env"
    conf.write_text(f"GPUCAP_LOG_FORMAT={fmt}\nGPUCAP_BOGUS=1\n" if fmt == "json" else "")
    extra = ["--config", str(conf)] if fmt == "json" else ["--log-format", "text"]
    ledger = LedgerServer()
    ledger.mode = "down"
    try:
        proc = _agent(ledger, tmp_path / "spool", "dgx-h100", *extra)
        try:
            _until(lambda: len(ledger.received) >= 3, "three failed sends")
            with ledger.lock:
                ledger.mode = "up"
                refused = len(ledger.received)  # every one of them was answered 503
            _until(lambda: bool(ledger.accepted), "a delivery")
        finally:
            err = _stop(proc)
    finally:
        ledger.close()
    lines = lines_of(err, fmt)
    if fmt == "json":
        assert lines[0]["level"] == "WARNING"
        assert lines[0]["message"] == f"config file {conf}: unknown key GPUCAP_BOGUS ignored"
    assert lines[-1]["message"].startswith("agent stopped; ")
    failed = [ln for ln in lines if "not delivered" in ln["message"]]
    assert len(failed) == refused
    assert all(ln["level"] == "WARNING" for ln in failed)
    recovered = [ln for ln in lines if ln["message"].startswith("delivery recovered")]
    assert len(recovered) == 1, err
    match = RECOVERED.fullmatch(recovered[0]["message"])
    assert match is not None, recovered[0]
    assert int(match[1]) == refused
    assert recovered[0]["level"] == "INFO"
    assert lines.index(recovered[0]) > lines.index(failed[-1])
    if fmt == "json":
        assert recovered[0]["failed_attempts"] == refused
    assert "t0k" not in err  # the token never reaches the log


@pytest.mark.parametrize(
    ("where", "named"),
    [("flag", "--log-format"), ("env", "GPUCAP_LOG_FORMAT"), ("file", "agent.env")],
)
def test_an_unknown_log_format_is_exit_2_naming_where_it_came_from(
    tmp_path: Path, where: str, named: str
) -> None:
    conf = tmp_path / "agent.env"
    conf.write_text("GPUCAP_LOG_FORMAT=xml\n" if where == "file" else "")
    command = [sys.executable, "-m", "gpucap", "agent", "run", "--config", str(conf)]
    command += ["--ledger", "http://127.0.0.1:1", "--node-id", "n1", "--site", "s1"]
    command += ["--spool", str(tmp_path / "spool"), "--fake", "dgx-h100"]
    env = {"PATH": "/usr/bin:/bin", "GPUCAP_TOKEN": "t0k"}
    if where == "flag":
        command += ["--log-format", "xml"]
    if where == "env":
        env["GPUCAP_LOG_FORMAT"] = "xml"
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gpucap: error: ")
    assert named in line
    assert line.endswith("invalid value 'xml': expected text or json")
    assert not (tmp_path / "spool").exists()  # refused before the spool was touched


class Ledger:
    """A scripted ledger: the statuses in `answers` in turn (200: accepted), then 200 for ever."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.accepted: list[int] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        status = self.answers.pop(0) if self.answers else 200
        if status != 200:
            return httpx.Response(status, json={"detail": "down"})
        seq = json.loads(request.content)["seq"]
        self.accepted.append(seq)
        return httpx.Response(200, json={"status": "accepted", "seq": seq})


def _daemon(tmp_path: Path, ledger: Ledger, interval: str = "10") -> Daemon:
    config = load_config(
        {
            "ledger": "http://ledger.test",
            "token": "t0k",
            "node_id": "n1",
            "site": "s1",
            "interval_seconds": interval,
            "spool": str(tmp_path / "spool"),
            "retry_initial_seconds": "1",
            "retry_max_seconds": "4",
        },
        environ={},
    )
    clock = FakeClock()
    transport = httpx.MockTransport(ledger.handler)
    return Daemon(
        config,
        backend=make_backend("fake", "dgx-h100"),
        spool=Spool(config.spool, config.spool_max_reports, clock=clock),
        sender_factory=lambda c: LedgerClient(c.ledger, c.token, transport=transport),
        catalogue=default_catalogue(),
        clock=clock,
    )


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_delivery_recovery_is_one_line_with_attempts_time_and_backlog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = _daemon(tmp_path, Ledger(503, 401, 503))
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    with caplog.at_level(logging.INFO, logger="gpucap.agent"):
        daemon.collect_once()
        daemon.collect_once()
        daemon.send_once()  # 503 at t=0
        clock.wait(7.5)
        daemon.send_once()  # 401
        daemon._reload_config = lambda old: replace(old, token="fixed")
        daemon.reload = True  # a fixed token: the backoff restarts, the outage is still one
        daemon._apply_reload()
        clock.wait(5.0)
        daemon.send_once()  # 503
        assert _messages(caplog, "recovered") == []
        clock.wait(2.25)
        daemon.send_once()  # delivered, 14.75 s after the first failure; one more waits
        daemon.send_once()  # delivered: no second line
    assert _messages(caplog, "delivery recovered") == [
        "delivery recovered after 3 failed attempt(s) over 14.8 s; 1 report(s) still spooled"
    ]
    assert daemon.spool.count() == 0


def test_a_first_delivery_is_no_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = _daemon(tmp_path, Ledger())
    with caplog.at_level(logging.INFO, logger="gpucap.agent"):
        daemon.collect_once()
        daemon.send_once()
    assert daemon.spool.count() == 0
    assert _messages(caplog, "recovered") == []


def test_a_full_disk_is_one_error_line_until_it_is_freed_then_one_recovery_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real spool on a disk that refuses every new sequence number with ENOSPC (the state
    file's temp name links to /dev/full, renewed after each step) while ten reports drain:
    reads and deletes still work, which is no recovery. The ledger fails every other send, so
    deliveries spread over the 30 s between failing collections; then the disk frees."""
    ledger = Ledger(*[503, 200] * 10)
    daemon = _daemon(tmp_path, ledger, interval="1")
    for _ in range(10):
        daemon.collect_once()  # ten reports waiting (the ledger has not been reached yet)
    state = tmp_path / "spool" / "state.json"
    full = {"until": 30}
    collections: list[int] = []

    def after_step(snapshot: AgentSnapshot) -> None:
        collections.append(daemon.collections)
        temp = state.with_name(f".{state.name}.tmp")
        if daemon.collections < full["until"] and not temp.is_symlink():
            disk_full_at(state)

    disk_full_at(state)
    daemon.publish = after_step
    with caplog.at_level(logging.INFO, logger="gpucap.agent"):
        daemon.run(max_collections=40)
    records = [r for r in caplog.records if r.getMessage().startswith("spool ")]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in records] == [
        ("ERROR", "spool failing (collection and delivery go on, retried)"),
        ("INFO", f"spool working again after {daemon.stats.spool_errors_total} failed step(s)"),
    ], [r.getMessage() for r in records]
    assert "cannot record the next sequence number: No space left on device (ENOSPC)" in (
        records[0].getMessage()
    )
    assert str(state) in records[0].getMessage()
    assert daemon.stats.spool_errors_total == 20  # collections 11 to 30 each failed
    accepted_while_full = [seq for seq in ledger.accepted if seq < ledger.accepted[0] + 10]
    assert len(accepted_while_full) == 10  # the backlog drained in the meantime
    assert ledger.accepted == sorted(ledger.accepted)
    assert len(_messages(caplog, "delivery recovered")) == 10  # one per 503, not per step
