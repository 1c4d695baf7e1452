"""What a backend reads from NVML: plain frozen values, base units, None for "absent".

A reading is raw identity only; matching to the catalogue happens in `inventory.py`.
PCI ids are ints here (`pci_device_id` is the 16-bit device id, `pci_subsystem_id` the 32-bit
id NVML gives, e.g. 0x16C110DE); they become "0x2330"-style strings only in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

# NVML's nvmlDeviceArchitecture_t values (nvml.h); anything else is reported as "unknown".
ARCHITECTURES: dict[int, str] = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}
ARCHITECTURE_CODES: dict[str, int] = {v: k for k, v in ARCHITECTURES.items()}

# Device states, a small fixed set (they become a metric label).
STATE_OK = "ok"
STATE_LOST = "lost"  # GPU_IS_LOST: fell off the bus, needs a reset
STATE_UNSUPPORTED = "unsupported"  # NVML refuses to give a handle (no permission, not supported)
STATE_ERROR = "error"  # any other NVML failure on this device
STATE_MISSING = "missing"  # seen earlier in this agent's life, now gone from enumeration
STATES = (STATE_OK, STATE_LOST, STATE_UNSUPPORTED, STATE_ERROR, STATE_MISSING)


@dataclass(frozen=True)
class MigReading:
    """One MIG device (a GPU/compute instance pair) under its physical parent."""

    index: int  # slot index under the parent; slots can be sparse
    uuid: str | None
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total_bytes: int | None


@dataclass(frozen=True)
class DeviceReading:
    """One physical GPU as NVML answered this collection."""

    index: int  # NVML enumeration index: a label for people, not a key
    uuid: str | None
    name: str | None
    serial: str | None
    board_part_number: str | None
    pci_bus_id: str | None
    pci_vendor_id: int | None
    pci_device_id: int | None
    pci_subsystem_id: int | None
    architecture: str | None
    memory_total_bytes: int | None
    mig_enabled: bool | None  # None: MIG not supported by this GPU
    state: str = STATE_OK
    reason: str | None = None  # why state is not ok, e.g. "NVML_ERROR_GPU_IS_LOST"
    mig: tuple[MigReading, ...] = ()


@dataclass(frozen=True)
class NodeReading:
    """One collection of the whole node; `nvml_up` False means degraded (see `reason`)."""

    nvml_up: bool
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    devices: tuple[DeviceReading, ...] = ()
    reason: str | None = None
