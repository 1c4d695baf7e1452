"""From raw NVML readings to a node inventory: catalogue match, TPP, H100e, totals. Pure.

Capacity is counted once, on the physical GPU: MIG slices are listed under their parent and
carry no TPP of their own. An accelerator the catalogue does not know keeps `model: None`, is
flagged `unknown_model` and is never dropped. A device seen earlier in the agent's life that
has vanished from enumeration stays listed as `missing` until another device takes its PCI slot.
A GPU lost before its UUID could be read is reported under `placeholder_uuid`, unique per node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from gpucap.agent.model import (
    STATE_LOST,
    STATE_MISSING,
    STATE_OK,
    DeviceReading,
    MigReading,
    NodeReading,
)
from gpucap.core.catalogue import Catalogue

FLAG_UNKNOWN_MODEL = "unknown_model"
FLAG_IDENTITY_UNKNOWN = "identity_unknown"  # lost before its UUID could be read
MAX_UUID_CHARS = 128  # the ledger refuses a longer device uuid


def placeholder_uuid(node_id: str | None, index: int) -> str:
    """The UUID of a GPU lost before NVML gave its UUID: `GPU-unknown-<node>-index-<n>`.

    The node id keeps it from colliding with another node's placeholder (the ledger flags a
    UUID reported by two nodes). A node id too long for MAX_UUID_CHARS is cut to 40 characters
    plus 16 hex digits of its SHA-256. No node id (a local listing) gives `GPU-unknown-index-<n>`.
    """
    if node_id is None:
        return f"GPU-unknown-index-{index}"
    uuid = f"GPU-unknown-{node_id}-index-{index}"
    if len(uuid) <= MAX_UUID_CHARS:
        return uuid
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:16]
    return f"GPU-unknown-{node_id[:40]}-{digest}-index-{index}"


@dataclass(frozen=True)
class InventoryDevice:
    """One physical GPU, identified and normalised; `tpp` per device, `h100e` in H100 SXM5 units."""

    reading: DeviceReading
    model: str | None
    tpp: int | None
    h100e: Fraction | None
    eccn: str | None
    flags: tuple[str, ...] = ()
    node_id: str | None = None  # names the placeholder UUID of a GPU whose UUID was never read

    @property
    def uuid(self) -> str:
        return self.reading.uuid or placeholder_uuid(self.node_id, self.reading.index)

    @property
    def state(self) -> str:
        return self.reading.state


@dataclass(frozen=True)
class Totals:
    tpp: int
    h100e: Fraction
    advanced_devices: int  # devices in ECCN 3A090.a or 3A090.b


@dataclass(frozen=True)
class Inventory:
    """The node as of one collection; `devices` in NVML order, then missing ones."""

    nvml_up: bool
    reason: str | None
    driver_version: str | None
    cuda_driver_version: int | None
    devices: tuple[InventoryDevice, ...]
    totals: Totals


def identify(
    reading: DeviceReading, catalogue: Catalogue, node_id: str | None = None
) -> InventoryDevice:
    """Match one device to the catalogue: PCI device id first, then NVML name."""
    if reading.pci_vendor_id is None:
        acc = catalogue.match(reading.pci_device_id, reading.name)
    else:
        acc = catalogue.match(reading.pci_device_id, reading.name, reading.pci_vendor_id)
    flags: tuple[str, ...] = () if acc is not None else (FLAG_UNKNOWN_MODEL,)
    if reading.uuid is None:
        flags += (FLAG_IDENTITY_UNKNOWN,)
    if acc is None:
        return InventoryDevice(reading, None, None, None, None, flags, node_id)
    return InventoryDevice(
        reading, acc.id, acc.tpp, catalogue.h100e(acc.tpp), acc.eccn_class, flags, node_id
    )


def reconcile(
    current: tuple[DeviceReading, ...], previous: tuple[DeviceReading, ...]
) -> tuple[DeviceReading, ...]:
    """Fill in lost devices' identity from the last collection and keep vanished ones as missing.

    A lost GPU often cannot even answer its UUID; NVML indices are stable within a session, so
    the identity seen at the same index last time is carried over. A device that disappeared is
    kept (state `missing`) unless a device with another UUID now sits in its PCI slot (replaced).
    """
    by_index = {d.index: d for d in previous if d.state != STATE_MISSING}
    filled: list[DeviceReading] = []
    for device in current:
        if device.uuid is None and device.state != STATE_OK:
            before = by_index.get(device.index)
            if before is not None and before.uuid is not None:
                device = replace(before, state=device.state, reason=device.reason, mig=())
        filled.append(device)
    seen = {d.uuid for d in filled if d.uuid is not None}
    slots = {d.pci_bus_id for d in filled if d.pci_bus_id is not None}
    for gone in previous:
        if gone.uuid is None or gone.uuid in seen:
            continue
        if gone.pci_bus_id is not None and gone.pci_bus_id in slots:
            continue  # replaced: another device now answers in this PCI slot
        filled.append(replace(gone, state=STATE_MISSING, reason="no longer enumerated", mig=()))
        seen.add(gone.uuid)
    return tuple(filled)


def build_inventory(
    reading: NodeReading, catalogue: Catalogue, *, node_id: str | None = None
) -> Inventory:
    """Identify every device and add up the node's counted capacity.

    `node_id` goes into placeholder UUIDs; anything reported to the ledger must pass it.
    """
    devices = tuple(identify(d, catalogue, node_id) for d in reading.devices)
    counted = [d for d in devices if d.tpp is not None and d.state != STATE_MISSING]
    totals = Totals(
        tpp=sum(d.tpp or 0 for d in counted),
        h100e=sum((d.h100e or Fraction(0) for d in counted), Fraction(0)),
        advanced_devices=sum(1 for d in counted if d.eccn in ("3A090.a", "3A090.b")),
    )
    return Inventory(
        nvml_up=reading.nvml_up,
        reason=reading.reason,
        driver_version=reading.driver_version,
        cuda_driver_version=reading.cuda_driver_version,
        devices=devices,
        totals=totals,
    )


def hex_id(value: int | None, width: int = 4) -> str | None:
    """A PCI id as NVML tools print it, lowercase: 0x2330, 0x16c110de."""
    return None if value is None else f"0x{value:0{width}x}"


def h100e_number(value: Fraction | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _mig_json(mig: MigReading) -> dict[str, Any]:
    return {
        "index": mig.index,
        "uuid": mig.uuid,
        "gpu_instance_id": mig.gpu_instance_id,
        "compute_instance_id": mig.compute_instance_id,
        "memory_total_bytes": mig.memory_total_bytes,
    }


def inventory_json(inventory: Inventory, node: dict[str, Any]) -> dict[str, Any]:
    """The `gpucap agent inventory --format json` document."""
    devices = []
    for d in inventory.devices:
        r = d.reading
        devices.append(
            {
                "uuid": d.uuid,
                "index": r.index,
                "model": d.model,
                "pci_device_id": hex_id(r.pci_device_id),
                "pci_subsystem_id": hex_id(r.pci_subsystem_id, 8),
                "pci_bus_id": r.pci_bus_id,
                "name": r.name,
                "serial": r.serial,
                "board_part_number": r.board_part_number,
                "architecture": r.architecture,
                "memory_total_bytes": r.memory_total_bytes,
                "mig_enabled": r.mig_enabled,
                "tpp": d.tpp,
                "h100e": h100e_number(d.h100e),
                "eccn": d.eccn,
                "state": r.state,
                "reason": r.reason,
                "flags": list(d.flags),
                "mig": [_mig_json(m) for m in r.mig],
            }
        )
    return {
        "node": {
            **node,
            "nvml_up": inventory.nvml_up,
            "reason": inventory.reason,
            "driver_version": inventory.driver_version,
            "cuda_driver_version": inventory.cuda_driver_version,
        },
        "devices": devices,
        "totals": {
            "tpp": inventory.totals.tpp,
            "h100e": h100e_number(inventory.totals.h100e),
            "advanced_devices": inventory.totals.advanced_devices,
        },
    }


def lost_or_missing(inventory: Inventory) -> int:
    return sum(1 for d in inventory.devices if d.state in (STATE_LOST, STATE_MISSING))
