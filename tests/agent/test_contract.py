"""One contract suite, two backends: the fake and the real pynvml over the fake C library."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import jsonschema
import pytest

from gpucap.agent.fake_libnvml import FakeLibNvml
from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.inventory import FLAG_UNKNOWN_MODEL, build_inventory
from gpucap.agent.model import NodeReading
from gpucap.agent.nvml_fake import FakeCalls
from gpucap.agent.nvml_real import PynvmlCalls
from gpucap.agent.report import build_report
from gpucap.agent.scenario import load_scenario, shipped_scenarios
from gpucap.agent.walk import BoundedReader, NvmlCalls, NvmlSession
from gpucap.core.catalogue import default_catalogue

from .conftest import FIXTURES, make_backend

BACKENDS = ("fake", "real")
COLLECTIONS = 7

REQUIRED = {
    "dgx-h100",
    "hgx-h200",
    "hgx-h20",
    "dgx-b200",
    "l40s-x4",
    "mig-a100",
    "mixed-node",
    "gpu-lost-midrun",
    "hot-unplug",
    "no-driver",
    "driver-reload",
    "nvml-hang",
    "garbled-serial",
}


def _run(kind: str, scenario: str, n: int = COLLECTIONS, timeout: float = 5.0) -> list[NodeReading]:
    backend = make_backend(kind, scenario, timeout)
    try:
        return [backend.read() for _ in range(n)]
    finally:
        backend.close()


def test_every_required_scenario_ships() -> None:
    assert set(shipped_scenarios()) >= REQUIRED


@pytest.mark.parametrize("scenario", sorted(REQUIRED - {"nvml-hang"}))
def test_backends_agree_on_every_collection(scenario: str) -> None:
    assert _run("fake", scenario) == _run("real", scenario)


@pytest.mark.parametrize("kind", BACKENDS)
def test_dgx_h100_identifies_eight_h100(kind: str) -> None:
    reading = _run(kind, "dgx-h100", 1)[0]
    inventory = build_inventory(reading, default_catalogue())
    assert reading.nvml_up
    assert reading.driver_version == "550.54.15"
    assert [d.model for d in inventory.devices] == ["h100-sxm5-80gb"] * 8
    assert {d.reading.pci_device_id for d in inventory.devices} == {0x2330}
    assert {d.reading.pci_subsystem_id for d in inventory.devices} == {0x16C110DE}
    assert inventory.totals.h100e == 8
    assert inventory.totals.advanced_devices == 8
    assert len({d.uuid for d in inventory.devices}) == 8


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize(
    ("scenario", "model", "count"),
    [
        ("hgx-h200", "h200-sxm-141gb", 8),
        ("hgx-h20", "h20-96gb", 8),
        ("dgx-b200", "b200-sxm-180gb", 8),
        ("l40s-x4", "l40s-48gb", 4),
    ],
)
def test_machines_match_the_catalogue(kind: str, scenario: str, model: str, count: int) -> None:
    inventory = build_inventory(_run(kind, scenario, 1)[0], default_catalogue())
    assert [d.model for d in inventory.devices] == [model] * count


@pytest.mark.parametrize("kind", BACKENDS)
def test_l40s_has_no_mig(kind: str) -> None:
    reading = _run(kind, "l40s-x4", 1)[0]
    assert {d.mig_enabled for d in reading.devices} == {None}


@pytest.mark.parametrize("kind", BACKENDS)
def test_mig_sparse_slices_under_parent_capacity_once(kind: str) -> None:
    reading = _run(kind, "mig-a100", 1)[0]
    parent, whole = reading.devices
    assert parent.mig_enabled is True
    assert whole.mig_enabled is False
    assert [m.index for m in parent.mig] == [0, 3, 5]
    assert [m.gpu_instance_id for m in parent.mig] == [1, 5, 13]
    assert all(m.uuid and m.uuid.startswith("MIG-") for m in parent.mig)
    inventory = build_inventory(reading, default_catalogue())
    assert inventory.totals.tpp == 2 * 4992  # two physical GPUs, slices add nothing


@pytest.mark.parametrize("kind", BACKENDS)
def test_mixed_node_unknown_flagged_and_serial_absent(kind: str) -> None:
    inventory = build_inventory(_run(kind, "mixed-node", 1)[0], default_catalogue())
    by_name = {d.reading.name: d for d in inventory.devices}
    unknown = by_name["NVIDIA RTX PRO 6000 Blackwell Server Edition"]
    assert unknown.model is None
    assert unknown.tpp is None
    assert FLAG_UNKNOWN_MODEL in unknown.flags
    assert len(inventory.devices) == 5  # never dropped
    geforce = by_name["NVIDIA GeForce RTX 4090"]
    assert geforce.reading.serial is None
    assert geforce.reading.board_part_number is None
    assert geforce.model == "geforce-rtx-4090"
    assert by_name["NVIDIA L4"].model == "l4-24gb"


@pytest.mark.parametrize("kind", BACKENDS)
def test_gpu_lost_midrun_marks_only_that_gpu(kind: str) -> None:
    readings = _run(kind, "gpu-lost-midrun", 4)
    assert [d.state for d in readings[1].devices] == ["ok"] * 8
    third = readings[2]
    assert third.nvml_up
    assert [d.state for d in third.devices] == ["ok"] * 5 + ["lost"] + ["ok"] * 2
    assert third.devices[5].reason == "NVML_ERROR_GPU_IS_LOST"


@pytest.mark.parametrize("kind", BACKENDS)
def test_hot_unplug_then_new_uuid_in_same_slot(kind: str) -> None:
    readings = _run(kind, "hot-unplug", 6)
    before = {d.pci_bus_id: d.uuid for d in readings[0].devices}
    assert len(readings[2].devices) == 3
    after = {d.pci_bus_id: d.uuid for d in readings[5].devices}
    assert set(after) == set(before)
    slot = "00000000:5b:00.0"
    assert after[slot] != before[slot]


@pytest.mark.parametrize("kind", BACKENDS)
def test_no_driver_is_degraded_not_an_exception(kind: str) -> None:
    readings = _run(kind, "no-driver", 3)
    assert all(not r.nvml_up for r in readings)
    assert readings[0].reason == "nvmlInitWithFlags: NVML_ERROR_LIBRARY_NOT_FOUND"


@pytest.mark.parametrize("kind", BACKENDS)
def test_driver_reload_recovers_by_reinitialising(kind: str) -> None:
    states = [(r.nvml_up, r.driver_version, r.reason) for r in _run(kind, "driver-reload", 6)]
    assert states[0][:2] == (True, "550.54.15")
    assert states[2] == (False, None, "nvmlDeviceGetCount_v2: NVML_ERROR_DRIVER_NOT_LOADED")
    assert states[3][2] == states[4][2] == "nvmlInitWithFlags: NVML_ERROR_LIB_RM_VERSION_MISMATCH"
    assert states[5][:2] == (True, "550.90.07")


@pytest.mark.parametrize("kind", BACKENDS)
def test_nvml_hang_is_bounded_then_recovers(kind: str) -> None:
    backend = make_backend(kind, "nvml-hang", timeout_seconds=0.3)
    try:
        assert backend.read().nvml_up
        hung = backend.read()
        assert not hung.nvml_up
        assert hung.reason == "nvmlDeviceGetMemoryInfo: no answer within 0.3 s"
        still = backend.read()
        assert not still.nvml_up
        assert "still hung" in (still.reason or "")
        _machine_of(backend).release_hangs()
        for _ in range(200):  # polling for the released worker, not timing it
            recovered = backend.read()
            if recovered.nvml_up:
                break
            time.sleep(0.02)
        assert recovered.nvml_up
        assert len(recovered.devices) == 2
    finally:
        _machine_of(backend).release_hangs()
        backend.close()


def _machine_of(backend: object) -> object:
    library = getattr(backend, "library", None)
    return library.machine if library is not None else backend.machine  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", BACKENDS)
def test_recorded_real_h100_replays(kind: str) -> None:
    reading = _run(kind, str(FIXTURES / "real-h100-sxm5-vm.yaml"), 1)[0]
    inventory = build_inventory(reading, default_catalogue())
    (device,) = inventory.devices
    assert device.model == "h100-sxm5-80gb"
    assert device.tpp == 15832
    assert device.h100e == Fraction(1)
    assert device.reading.board_part_number == "965-2G520-0100-001"
    assert reading.driver_version == "580.159.04"


GARBLED = "16549\ufffd\ufffd2001234"  # the bytes 0xff 0xfe are not UTF-8


@pytest.mark.parametrize("kind", BACKENDS)
def test_garbled_serial_is_reported_with_replacement_characters(
    kind: str, report_schema: dict[str, Any]
) -> None:
    (reading,) = _run(kind, "garbled-serial", 1)
    assert reading.nvml_up, reading.reason
    assert [d.serial for d in reading.devices] == ["1654922001233", GARBLED]
    assert [d.state for d in reading.devices] == ["ok", "ok"]
    report = build_report(
        build_inventory(reading, default_catalogue()),
        node_id="n1",
        site_id="s1",
        seq=1,
        collected_at=datetime(2026, 1, 1, tzinfo=UTC),
        agent_version="0",
    )
    jsonschema.validate(json.loads(json.dumps(report)), report_schema)


class _FakeCallsFailingOnce(FakeCalls):
    """A binding surprise: the first serial read raises something that is not an NVML error."""

    failed = False

    def serial(self, handle: object) -> str:
        if not self.failed:
            self.failed = True
            raise ValueError("boom")
        return super().serial(handle)


class _PynvmlCallsFailingOnce(PynvmlCalls):
    failed = False

    def serial(self, handle: object) -> str:
        if not self.failed:
            self.failed = True
            raise ValueError("boom")
        return super().serial(handle)


@pytest.mark.parametrize("kind", BACKENDS)
def test_unexpected_exception_degrades_one_collection_only(kind: str) -> None:
    machine = FakeMachine(load_scenario("dgx-h100"))
    calls: NvmlCalls = (
        _FakeCallsFailingOnce(machine)
        if kind == "fake"
        else _PynvmlCallsFailingOnce(FakeLibNvml(machine))
    )
    reader = BoundedReader(NvmlSession(calls), 5.0)
    try:
        failed = reader.read()  # raised IndexError (an empty result box) before
        assert not failed.nvml_up
        assert failed.reason == "nvmlDeviceGetSerial: unexpected ValueError: boom"
        again = reader.read()
        assert again.nvml_up
        assert len(again.devices) == 8
    finally:
        reader.close()
