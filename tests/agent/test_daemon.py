"""The daemon with a fake clock and an httpx MockTransport ledger: order, retries, quarantine."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gpucap.agent.clock import FakeClock
from gpucap.agent.config import load_config
from gpucap.agent.daemon import Daemon
from gpucap.agent.ledger_client import LedgerClient
from gpucap.agent.spool import Spool, seq_floor
from gpucap.core.catalogue import default_catalogue
from gpucap.exporters.snapshots import AgentSnapshot

from .conftest import break_directory, make_backend

FLOOR = seq_floor(FakeClock().now())  # the first sequence number a spool opened at that time uses


class Ledger:
    """A scripted ledger: `down` requests answer 503, then it accepts (dedup by seq)."""

    def __init__(self, down: int = 0, status: int = 200) -> None:
        self.down = down
        self.status = status
        self.accepted: list[dict[str, Any]] = []
        self.calls = 0
        self.auth: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.auth.add(request.headers["authorization"])
        if self.calls <= self.down:
            return httpx.Response(503, json={"detail": "maintenance"})
        if self.status != 200:
            return httpx.Response(self.status, json={"detail": "devices[0].uuid: bad"})
        body = json.loads(request.content)
        if any(r["seq"] == body["seq"] for r in self.accepted):
            return httpx.Response(200, json={"status": "duplicate"})
        self.accepted.append(body)
        return httpx.Response(200, json={"status": "accepted", "seq": body["seq"]})


def _daemon(tmp_path: Path, ledger: Ledger, scenario: str = "hot-unplug", **flags: str) -> Daemon:
    config = load_config(
        {
            "ledger": "http://ledger.test",
            "token": "t0k",
            "node_id": "n1",
            "site": "s1",
            "interval_seconds": "10",
            "spool": str(tmp_path / "spool"),
            "retry_initial_seconds": "1",
            "retry_max_seconds": "4",
            **flags,
        },
        environ={},
    )
    transport = httpx.MockTransport(ledger.handler)
    clock = FakeClock()
    return Daemon(
        config,
        backend=make_backend("fake", scenario),
        spool=Spool(config.spool, config.spool_max_reports, clock=clock),
        sender_factory=lambda c: LedgerClient(c.ledger, c.token, transport=transport),
        catalogue=default_catalogue(),
        clock=clock,
    )


def test_ledger_down_then_up_every_report_once_in_order(
    tmp_path: Path, report_schema: dict[str, Any]
) -> None:
    ledger = Ledger(down=5)
    daemon = _daemon(tmp_path, ledger)
    daemon.run(max_collections=8)
    while daemon.spool.count():  # drain what is left, as the next passes would
        daemon.send_once()
    seqs = [r["seq"] for r in ledger.accepted]
    assert seqs == sorted(seqs) == list(range(FLOOR, FLOOR + 8))
    assert ledger.auth == {"Bearer t0k"}
    for report in ledger.accepted:
        jsonschema.validate(report, report_schema)
    counts = [len(r["devices"]) for r in ledger.accepted]
    assert counts[0] == 4
    # hot-unplug: the vanished GPU stays listed as missing until a new one takes its slot.
    states = [sorted(d["state"] for d in r["devices"]) for r in ledger.accepted]
    assert ["missing", "ok", "ok", "ok"] in states
    assert states[-1] == ["ok"] * 4


def test_backoff_grows_with_jitter_and_is_capped(tmp_path: Path) -> None:
    ledger = Ledger(down=100)
    daemon = _daemon(tmp_path, ledger)
    daemon.collect_once()
    delays = []
    for _ in range(6):
        before = daemon.clock.monotonic()
        daemon.send_once()
        delays.append(daemon._retry_at - before)
    assert all(0.5 <= d <= 1 for d in delays[:1])
    assert all(2 <= d <= 4 for d in delays[3:])
    assert daemon.spool.count() == 1
    assert daemon.stats.failures_total == 6


def test_rejected_report_is_quarantined_with_reason(tmp_path: Path) -> None:
    ledger = Ledger(status=422)
    daemon = _daemon(tmp_path, ledger)
    daemon.collect_once()
    daemon.send_once()
    assert daemon.spool.count() == 0
    (quarantined,) = daemon.spool.quarantined()
    reason = quarantined.with_name(quarantined.name + ".reason").read_text()
    assert reason == "HTTP 422: devices[0].uuid: bad\n"


def test_auth_refusal_is_retried_not_quarantined(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, Ledger(status=401))
    daemon.collect_once()
    daemon.send_once()
    assert daemon.spool.count() == 1
    assert not daemon.spool.quarantined()


def test_no_driver_sends_nothing_and_publishes_degraded(tmp_path: Path) -> None:
    ledger = Ledger()
    daemon = _daemon(tmp_path, ledger, scenario="no-driver")
    snapshots = []
    daemon.publish = snapshots.append
    daemon.run(max_collections=3)
    assert ledger.calls == 0
    assert snapshots
    assert not snapshots[-1].nvml_up


def test_spool_bound_drops_oldest_heartbeats_never_changes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_reports=3, clock=FakeClock())
    for i, change in enumerate([True, False, False, True, False, True], start=1):
        seq = spool.reserve()
        spool.put(seq, {"seq": seq}, change=change, fingerprint=str(i))
    kept = [(p.seq - FLOOR + 1, p.change) for p in spool.pending()]
    assert kept == [(1, True), (4, True), (6, True)]
    seq = spool.reserve()
    assert not spool.put(seq, {"seq": seq}, change=False, fingerprint="x")  # full of changes


def test_seq_survives_reopen_and_corrupt_files_are_quarantined(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    for _ in range(3):
        seq = spool.reserve()
        spool.put(seq, {"seq": seq}, change=True, fingerprint="f")
    (tmp_path / "reports" / f"{FLOOR + 1:020d}.c.json").write_text("{not json")
    spool.acknowledge(spool.pending()[-1])  # the third report delivered
    reopened = Spool(tmp_path, clock=FakeClock())  # the same instant: the state file decides
    assert reopened.reserve() == FLOOR + 3
    assert [p.seq for p in reopened.pending()] == [FLOOR]
    assert [p.name for p in reopened.quarantined()] == [f"{FLOOR + 1:020d}.c.json"]


def test_bad_option_names_the_flag() -> None:
    with pytest.raises(Exception, match=r"--interval: invalid value 'soon'"):
        load_config(
            {
                "ledger": "http://x",
                "token": "t",
                "node_id": "n",
                "site": "s",
                "interval_seconds": "soon",
            },
            environ={},
        )
    with pytest.raises(Exception, match=r"--ledger: required \(or set GPUCAP_LEDGER\)"):
        load_config({}, environ={})
    config = load_config(
        {},
        environ={
            "GPUCAP_LEDGER": "http://l/",
            "GPUCAP_TOKEN": "t",
            "GPUCAP_NODE_ID": "n",
            "GPUCAP_SITE": "s",
        },
    )
    assert config.ledger == "http://l"
    assert config.interval_seconds == 60


def test_spool_failure_is_logged_once_counted_and_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger()
    daemon = _daemon(tmp_path, ledger, scenario="dgx-h100")
    snapshots: list[AgentSnapshot] = []
    daemon.publish = snapshots.append
    daemon.collect_once()  # one report waiting
    restore = break_directory(tmp_path / "spool" / "reports")
    with caplog.at_level(logging.INFO, logger="gpucap.agent"):
        for _ in range(3):
            daemon.collect_once()  # would raise NotADirectoryError out of the daemon before
        for _ in range(2):
            daemon._retry_at = 0.0
            daemon.send_once()
            assert daemon._retry_at > daemon.clock.monotonic()  # backs off, no busy loop
        failing = [r.getMessage() for r in caplog.records if "spool failing" in r.getMessage()]
        assert len(failing) == 2  # one line per distinct reason (store, read), not per step
        assert "cannot store a report: Not a directory (ENOTDIR)" in failing[0]
        assert "cannot read the spooled reports: Not a directory (ENOTDIR)" in failing[1]
        assert all(str(tmp_path / "spool" / "reports") in line for line in failing)
        assert daemon.stats.spool_errors_total == 5
        assert snapshots[-1].spool_errors_total == 5
        assert snapshots[-1].nvml_up  # collection went on
        restore()  # the disk is back
        daemon.collect_once()
    assert any("spool working again after 5" in r.getMessage() for r in caplog.records)
    daemon._retry_at = 0.0
    daemon.send_once()
    daemon.send_once()
    assert [len(r["devices"]) for r in ledger.accepted] == [8, 8]  # nothing lost
    assert daemon.spool.count() == 0
    assert snapshots[-1].spool_errors_total == 5


def test_delivered_report_that_cannot_be_removed_is_resent_as_duplicate(tmp_path: Path) -> None:
    ledger = Ledger()
    broken: list[Callable[[], None]] = []

    def ledger_then_disk_fails(request: httpx.Request) -> httpx.Response:
        answer = ledger.handler(request)
        if not broken:
            broken.append(break_directory(tmp_path / "spool" / "reports"))
        return answer

    config = load_config(
        {
            "ledger": "http://ledger.test",
            "token": "t",
            "node_id": "n1",
            "site": "s1",
            "spool": str(tmp_path / "spool"),
        },
        environ={},
    )
    clock = FakeClock()
    transport = httpx.MockTransport(ledger_then_disk_fails)
    daemon = Daemon(
        config,
        backend=make_backend("fake", "l40s-x4"),
        spool=Spool(config.spool, clock=clock),
        sender_factory=lambda c: LedgerClient(c.ledger, c.token, transport=transport),
        catalogue=default_catalogue(),
        clock=clock,
    )
    daemon.collect_once()
    daemon.send_once()  # accepted, then the report cannot be deleted
    assert daemon.stats.spool_errors_total == 1
    assert daemon.stats.last_success_timestamp_seconds is not None
    broken[0]()
    daemon._retry_at = 0.0
    daemon.send_once()
    assert ledger.calls == 2
    assert len(ledger.accepted) == 1  # the resend was answered `duplicate`
    assert daemon.spool.count() == 0


def test_daemon_names_a_never_read_lost_gpu_after_its_node(tmp_path: Path) -> None:
    from .test_inventory import _lost_from_the_start

    ledger = Ledger()
    daemon = _daemon(tmp_path, ledger, scenario=_lost_from_the_start(tmp_path))
    daemon.collect_once()
    daemon.send_once()
    (report,) = ledger.accepted
    lost = [d["uuid"] for d in report["devices"] if d["state"] == "lost"]
    assert lost == ["GPU-unknown-n1-index-3"]


def test_a_send_reads_only_the_oldest_report(tmp_path: Path) -> None:
    ledger = Ledger()
    daemon = _daemon(tmp_path, ledger, scenario="l40s-x4")
    for _ in range(5):
        daemon.collect_once()
    reports = sorted((tmp_path / "spool" / "reports").iterdir())
    reports[3].write_text("{torn")  # the fourth report is corrupt
    daemon.send_once()
    assert [r["seq"] for r in ledger.accepted] == [FLOOR]
    assert daemon.spool.quarantined() == []  # the fourth file was not even read
    while daemon.spool.count():
        daemon.send_once()
    assert [r["seq"] for r in ledger.accepted] == [FLOOR, FLOOR + 1, FLOOR + 2, FLOOR + 4]
    assert [p.name for p in daemon.spool.quarantined()] == [reports[3].name]


def test_unknown_gpucap_key_in_the_config_file_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "agent.env"
    conf.write_text(
        "GPUCAP_LEDGER=http://l\nGPUCAP_TOKEN=t\nGPUCAP_NODE_ID=n\nGPUCAP_SITE=s\n"
        "GPUCAP_BOGUS=1\nGPUCAP_INTREVAL=5\nHTTPS_PROXY=http://proxy:3128\n"
    )
    with caplog.at_level(logging.WARNING, logger="gpucap.agent.config"):
        config = load_config({}, environ={}, config_file=conf)
    assert config.interval_seconds == 60  # the misspelt key changed nothing
    assert [r.getMessage() for r in caplog.records] == [
        f"config file {conf}: unknown key GPUCAP_BOGUS ignored",
        f"config file {conf}: unknown key GPUCAP_INTREVAL ignored",
    ]  # HTTPS_PROXY is for the process environment (systemd), not a typo
