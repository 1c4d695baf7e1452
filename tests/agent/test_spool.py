"""The spool on real files: sequence numbers that survive a lost state, I/O failures, order."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from gpucap.agent.clock import FakeClock
from gpucap.agent.errors import SpoolError
from gpucap.agent.spool import MAX_SEQ, Spool, lock_spool, seq_floor

from .conftest import break_directory, disk_full_at

INTERVAL = 60.0  # seconds between collections, the default


def _deliver(spool: Spool, clock: FakeClock, n: int) -> list[int]:
    """`n` collections, each reported and acknowledged by the ledger; the seqs used."""
    used = []
    for i in range(n):
        seq = spool.reserve()
        spool.put(seq, {"seq": seq}, change=True, fingerprint=str(i))
        (item,) = spool.pending()
        spool.acknowledge(item)
        used.append(seq)
        clock.wait(INTERVAL)
    return used


@pytest.mark.parametrize("damage", ["garbage", "empty", "not-a-number", "beyond-max", "deleted"])
def test_lost_or_corrupt_state_never_reuses_a_seq(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    used = _deliver(Spool(tmp_path, clock=clock), clock, 5)
    state = tmp_path / "state.json"
    if damage == "garbage":
        state.write_bytes(b'{"next_seq": 6, "last_fi\xff')
    elif damage == "empty":
        state.write_bytes(b"")  # a crash of a filesystem without data journalling
    elif damage == "not-a-number":
        state.write_text(json.dumps({"next_seq": "6"}))
    elif damage == "beyond-max":
        state.write_text(json.dumps({"next_seq": 2**63}))
    else:
        state.unlink()
    clock.wait(5.0)  # the restart
    with caplog.at_level(logging.WARNING, logger="gpucap.agent.spool"):
        reopened = Spool(tmp_path, clock=clock)
    fresh = [reopened.reserve() for _ in range(3)]
    assert min(fresh) > max(used)
    assert fresh == sorted(fresh)
    assert fresh[0] == seq_floor(clock.now())
    if damage == "deleted":
        assert not caplog.records  # a first start looks the same: nothing to warn about
        return
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(state) in warning.getMessage()
    assert "wall-clock floor" in warning.getMessage()
    (kept,) = reopened.quarantined()
    assert kept.name == "state.json"
    assert "unreadable spool state" in kept.with_name("state.json.reason").read_text()
    assert json.loads(state.read_text())["next_seq"] == fresh[-1] + 1  # a good state again


def test_floor_applies_on_every_start_and_never_lowers_the_state(tmp_path: Path) -> None:
    clock = FakeClock()
    used = _deliver(Spool(tmp_path, clock=clock), clock, 2)
    assert used[0] == seq_floor(FakeClock().now())
    clock.wait(3600.0)
    assert Spool(tmp_path, clock=clock).reserve() == seq_floor(clock.now())  # the clock moved on
    state = tmp_path / "state.json"
    ahead = seq_floor(clock.now()) + 10**9  # the wall clock was stepped back since
    state.write_text(json.dumps({"next_seq": ahead, "last_fingerprint": None}))
    assert Spool(tmp_path, clock=clock).reserve() == ahead


def test_a_pending_report_above_the_state_raises_the_next_seq(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path, clock=clock)
    seq = spool.reserve()
    high = seq + 10**6
    spool.put(high, {"seq": high}, change=True, fingerprint="f")
    (tmp_path / "state.json").unlink()
    assert Spool(tmp_path, clock=clock).reserve() == high + 1


def test_seq_stays_within_the_schema_and_the_ledger(report_schema: dict[str, object]) -> None:
    far = seq_floor(datetime(9999, 12, 31, tzinfo=UTC))
    assert far < MAX_SEQ < 2**62  # the ledger accepts seq up to 2**62 and stores a BIGINT
    assert float(MAX_SEQ) == MAX_SEQ  # exact as a JSON number in every parser
    seq_schema = report_schema["properties"]["seq"]  # type: ignore[index]
    jsonschema.validate(far, seq_schema)
    jsonschema.validate(seq_floor(datetime(1970, 1, 1, tzinfo=UTC)), seq_schema)  # never 0


def test_reserve_refuses_to_pass_the_maximum(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"next_seq": MAX_SEQ}))
    spool = Spool(tmp_path, clock=FakeClock())
    assert spool.reserve() == MAX_SEQ
    with pytest.raises(SpoolError, match="exhausted"):
        spool.reserve()


def test_full_disk_on_reserve_is_a_spool_error_and_passes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    first = spool.reserve()
    disk_full_at(tmp_path / "state.json")
    with pytest.raises(SpoolError, match=r"state\.json: .*No space left on device \(ENOSPC\)"):
        spool.reserve()
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file is gone, state.json untouched
    assert json.loads((tmp_path / "state.json").read_text())["next_seq"] == first + 1
    assert spool.reserve() == first + 2  # the failed number is skipped, never reused


def test_full_disk_on_put_stores_nothing_and_keeps_the_fingerprint(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    seq = spool.reserve()
    spool.put(seq, {"seq": seq}, change=True, fingerprint="a")
    seq = spool.reserve()
    disk_full_at(tmp_path / "reports" / f"{seq:020d}.c.json")
    with pytest.raises(SpoolError, match=r"cannot store a report: .*\(ENOSPC\)"):
        spool.put(seq, {"seq": seq}, change=True, fingerprint="b")
    assert spool.last_fingerprint == "a"  # so the next collection is a change again
    assert [p.seq for p in spool.pending()] == [seq - 1]
    assert not list((tmp_path / "reports").glob(".*"))
    seq = spool.reserve()
    assert spool.put(seq, {"seq": seq}, change=True, fingerprint="b")
    assert [p.seq for p in spool.pending()] == [seq - 2, seq]


def test_full_disk_on_the_state_after_the_report_keeps_the_report(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    seq = spool.reserve()
    disk_full_at(tmp_path / "state.json")
    with pytest.raises(SpoolError, match="ENOSPC"):
        spool.put(seq, {"seq": seq}, change=True, fingerprint="a")
    assert spool.last_fingerprint is None
    assert [p.seq for p in spool.pending()] == [seq]  # stored whole; it will be sent


def test_a_file_where_the_reports_directory_belongs(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    seq = spool.reserve()
    spool.put(seq, {"seq": seq}, change=True, fingerprint="a")
    (item,) = spool.pending()
    restore = break_directory(tmp_path / "reports")
    nxt = spool.reserve()  # the state file is elsewhere: still fine
    for call in (
        lambda: spool.put(nxt, {"seq": nxt}, change=False, fingerprint="b"),
        spool.oldest,
        spool.pending,
        lambda: spool.acknowledge(item),
    ):
        with pytest.raises(SpoolError, match=r"reports: .*\(E[A-Z]+\)"):
            call()
        assert spool.count() == 1  # the report is still pending
    with pytest.raises(SpoolError, match=r"cannot use spool directory"):
        Spool(tmp_path, clock=FakeClock())
    restore()
    assert spool.count() == 1  # nothing lost
    spool.acknowledge(item)
    assert spool.count() == 0


def test_a_rejected_report_that_cannot_be_quarantined_stays_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    seq = spool.reserve()
    spool.put(seq, {"seq": seq}, change=True, fingerprint="a")
    (item,) = spool.pending()
    restore = break_directory(tmp_path / "quarantine")
    with pytest.raises(SpoolError, match="cannot quarantine a rejected report"):
        spool.quarantine(item, "HTTP 422: bad")
    assert [p.seq for p in spool.pending()] == [seq]
    restore()
    spool.quarantine(item, "HTTP 422: bad")
    assert spool.count() == 0
    assert [p.name for p in spool.quarantined()] == [item.path.name]


def test_one_agent_per_spool_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    held = lock_spool(spool)
    try:
        assert (spool / ".lock").read_text() == f"{os.getpid()}\n"
        # flock locks belong to the open file, so a second open in this process is refused too.
        with pytest.raises(SpoolError) as refused:
            lock_spool(spool)
        assert str(refused.value) == (
            f"{spool}: spool directory in use by another gpucap agent (pid {os.getpid()})"
        )
    finally:
        os.close(held)
    os.close(lock_spool(spool))  # free again once the holder is gone


def test_lock_on_an_unusable_spool_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("a file where the directory belongs\n")
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        lock_spool(tmp_path / "spool")


def test_second_agent_on_the_same_spool_exits_3_naming_the_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    held = lock_spool(spool)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUCAP_")}
    env["GPUCAP_TOKEN"] = "t"  # (--token would add its own warning line)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpucap",
                "agent",
                "run",
                "--ledger",
                "http://127.0.0.1:9",
                "--node-id",
                "n1",
                "--site",
                "s1",
                "--spool",
                str(spool),
                "--fake",
                "dgx-h100",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(held)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"gpucap: error: {spool}: spool directory in use by another gpucap agent "
        f"(pid {os.getpid()})"
    ]
    assert not (spool / "state.json").exists()  # the running agent's spool was not touched


def test_oldest_keeps_sequence_order_and_skips_what_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, clock=FakeClock())
    a, b, c = spool.reserve(), spool.reserve(), spool.reserve()
    for seq in (c, a, b):  # stored out of order: still sent in sequence order
        spool.put(seq, {"seq": seq}, change=seq != b, fingerprint=str(seq))
    first = spool.oldest()
    assert first is not None
    assert first.seq == a
    first.path.unlink()  # removed behind the spool's back
    with caplog.at_level(logging.WARNING, logger="gpucap.agent.spool"):
        second = spool.oldest()
    assert second is not None
    assert (second.seq, second.change) == (b, False)
    assert "vanished" in caplog.text
    assert spool.count() == 2
    spool.acknowledge(second)
    reopened = Spool(tmp_path, clock=FakeClock())  # the index is rebuilt from the directory
    third = reopened.oldest()
    assert third is not None
    assert third.seq == c
    reopened.acknowledge(third)
    assert reopened.oldest() is None
    assert reopened.count() == 0
