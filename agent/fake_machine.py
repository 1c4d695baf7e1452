"""A fake GPU node driven by a scenario: NVML semantics in plain Python, shared by both fakes.

`FakeMachine` answers in NVML terms: every method returns an NVML return code, plus a value on
success. The fake backend (`nvml_fake.py`) calls it directly; the fake C library
(`fake_libnvml.py`) calls it from ctypes stand-ins so that the real pynvml code path runs on
top. Time in a scenario is counted in collections: each nvmlDeviceGetCount call is one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from gpucap.agent import walk
from gpucap.agent.scenario import FakeDevice, FakeEvent, FakeMig, Scenario

# Handle layout: generation (one per successful init) | slot + 1 | MIG slot + 1.
_GEN_SHIFT = 20
_SLOT_SHIFT = 8


@dataclass(frozen=True)
class _Resolved:
    device: FakeDevice
    mig: FakeMig | None


class FakeMachine:
    """The state of one fake node: enumerated devices, lost GPUs, driver state, pending hangs."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.slots: list[FakeDevice] = list(scenario.devices)
        self.lost: set[str] = set()
        self.driver_version = scenario.driver_version
        self.collections = 0
        self.initialized = False
        self.generation = 0
        self._failed_inits = 0
        self._next_event = 0
        self._handles: dict[int, tuple[str, int]] = {}  # handle -> (uuid, MIG slot or -1)
        self._hangs: list[FakeEvent] = []
        self._release = threading.Event()

    def release_hangs(self) -> None:
        """End every hang now (a test's teardown), so no thread lingers."""
        self._release.set()

    # --- system ---------------------------------------------------------------------------
    def init(self) -> int:
        if self.scenario.init_error:
            return self.scenario.init_error
        if self._failed_inits:
            self._failed_inits -= 1
            return walk.LIB_RM_VERSION_MISMATCH
        self.initialized = True
        self.generation += 1
        self._handles.clear()
        return walk.SUCCESS

    def shutdown(self) -> int:
        if not self.initialized:
            return walk.UNINITIALIZED
        self.initialized = False
        return walk.SUCCESS

    def get_driver_version(self) -> tuple[int, str]:
        return (walk.SUCCESS, self.driver_version) if self.initialized else (walk.UNINITIALIZED, "")

    def get_cuda_driver_version(self) -> tuple[int, int]:
        if not self.initialized:
            return walk.UNINITIALIZED, 0
        return walk.SUCCESS, self.scenario.cuda_driver_version

    def device_count(self) -> tuple[int, int]:
        """One collection begins: apply the events that are due, then count."""
        if not self.initialized:
            return walk.UNINITIALIZED, 0
        reloaded = self._apply_events()
        self.collections += 1
        if reloaded:
            return walk.DRIVER_NOT_LOADED, 0
        return walk.SUCCESS, len(self.slots)

    def _apply_events(self) -> bool:
        reloaded = False
        events = self.scenario.events
        while (
            self._next_event < len(events)
            and events[self._next_event].after_collections <= self.collections
        ):
            event = events[self._next_event]
            self._next_event += 1
            if event.kind == "lose" and event.index < len(self.slots):
                self.lost.add(self.slots[event.index].uuid)
            elif event.kind == "unplug" and event.index < len(self.slots):
                del self.slots[event.index]
            elif event.kind == "plug" and event.device is not None:
                self.slots.insert(min(event.index, len(self.slots)), event.device)
            elif event.kind == "driver_reload":
                self.initialized = False
                self._failed_inits = event.failed_inits
                self.driver_version = event.driver_version or self.driver_version
                reloaded = True
            elif event.kind == "hang":
                self._hangs.append(event)
        return reloaded

    # --- devices --------------------------------------------------------------------------
    def handle_by_index(self, index: int) -> tuple[int, int]:
        if not self.initialized:
            return walk.UNINITIALIZED, 0
        if index >= len(self.slots):
            return walk.INVALID_ARGUMENT, 0
        device = self.slots[index]
        if device.uuid in self.lost:
            return walk.GPU_IS_LOST, 0
        code = device.error_for("handle")
        if code:
            return code, 0
        handle = (self.generation << _GEN_SHIFT) | ((index + 1) << _SLOT_SHIFT)
        self._handles[handle] = (device.uuid, -1)
        return walk.SUCCESS, handle

    def mig_handle(self, parent: int, index: int) -> tuple[int, int]:
        code, found = self._resolve(parent, "nvmlDeviceGetMigDeviceHandleByIndex")
        if found is None:
            return code, 0
        if found.device.mig_mode != 1:
            return walk.NOT_SUPPORTED, 0
        if index >= found.device.max_mig_devices:
            return walk.INVALID_ARGUMENT, 0
        if not any(m.index == index for m in found.device.mig_devices):
            return walk.NOT_FOUND, 0  # an empty slot: indices are sparse
        handle = parent | (index + 1)
        self._handles[handle] = (found.device.uuid, index)
        return walk.SUCCESS, handle

    def _resolve(self, handle: int, call: str, field: str = "") -> tuple[int, _Resolved | None]:
        if not self.initialized:
            return walk.UNINITIALIZED, None
        known = self._handles.get(handle)
        if known is None or handle >> _GEN_SHIFT != self.generation:
            return walk.INVALID_ARGUMENT, None
        uuid, mig_index = known
        device = next((d for d in self.slots if d.uuid == uuid), None)
        if device is None:
            return walk.GPU_IS_LOST, None  # the device vanished under an open handle
        if uuid in self.lost:
            return walk.GPU_IS_LOST, None
        for hang in list(self._hangs):
            slot = self.slots.index(device)
            if hang.call == call and hang.index == slot and mig_index < 0:
                self._hangs.remove(hang)
                self._release.wait(hang.seconds)  # a call that does not return for a while
        code = device.error_for(field) if field else 0
        if code:
            return code, None
        mig = next((m for m in device.mig_devices if m.index == mig_index), None)
        return walk.SUCCESS, _Resolved(device, mig)

    def get(self, handle: int, field: str, call: str) -> tuple[int, object]:
        """A device or MIG-device attribute, as NVML would answer `call` for it."""
        code, found = self._resolve(handle, call, field)
        if found is None:
            return code, None
        device, mig = found.device, found.mig
        if mig is not None:
            mig_values: dict[str, object] = {
                "uuid": mig.uuid,
                "memory_total_bytes": mig.memory_total_bytes,
                "gpu_instance_id": mig.gpu_instance_id,
                "compute_instance_id": mig.compute_instance_id,
            }
            if field not in mig_values:
                return walk.NOT_SUPPORTED, None
            return walk.SUCCESS, mig_values[field]
        if field in ("gpu_instance_id", "compute_instance_id"):
            return walk.INVALID_ARGUMENT, None  # not a MIG device handle
        if field == "pci":
            return walk.SUCCESS, walk.PciIds(
                device.pci_bus_id,
                device.pci_vendor_id,
                device.pci_device_id,
                device.pci_subsystem_id,
            )
        if field == "mig_mode":
            mode = device.mig_mode
            return (walk.NOT_SUPPORTED, None) if mode is None else (walk.SUCCESS, (mode, mode))
        if field == "max_mig_devices":
            if device.mig_mode is None:
                return walk.NOT_SUPPORTED, None
            return walk.SUCCESS, device.max_mig_devices
        value = getattr(device, field)
        return (walk.NOT_SUPPORTED, None) if value is None else (walk.SUCCESS, value)
