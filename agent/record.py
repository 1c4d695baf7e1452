"""Recording a node's NVML answers as a fake-NVML scenario, anonymised. Pure.

UUIDs and serials are replaced by values derived from a SHA-256 of the original, so the same
GPU always records the same way (fixtures stay stable) while keeping the shape a parser expects:
`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, `MIG-...`, and a 13-digit serial.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gpucap.agent.model import ARCHITECTURE_CODES, DeviceReading, NodeReading
from gpucap.agent.scenario import SCHEMA
from gpucap.agent.walk import ERROR_NAMES, GPU_IS_LOST

_SALT = "gpucap-record/v1:"


def anonymous_uuid(uuid: str) -> str:
    """A stable stand-in for a GPU or MIG UUID, keeping its prefix and layout."""
    prefix = uuid.split("-", 1)[0] if "-" in uuid else "GPU"
    h = hashlib.sha256((_SALT + uuid).encode()).hexdigest()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def anonymous_serial(serial: str) -> str:
    h = hashlib.sha256((_SALT + "serial:" + serial).encode()).hexdigest()
    return str(int(h[:16], 16))[-13:].rjust(13, "1")


def _hex(value: int | None, width: int) -> str:
    return f"0x{(value or 0):0{width}x}"


def _device(d: DeviceReading) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uuid": anonymous_uuid(d.uuid or f"GPU-unreadable-{d.index}"),
        "name": d.name or "unreadable",
        "pci": {
            "bus_id": d.pci_bus_id or f"00000000:{d.index:02x}:00.0",
            "vendor_id": _hex(d.pci_vendor_id, 4),
            "device_id": _hex(d.pci_device_id, 4),
            "subsystem_id": _hex(d.pci_subsystem_id, 8),
        },
        "serial": None if d.serial is None else anonymous_serial(d.serial),
        "board_part_number": d.board_part_number,
        "architecture": d.architecture if d.architecture in ARCHITECTURE_CODES else None,
        "memory_total_bytes": d.memory_total_bytes,
    }
    if d.mig_enabled is not None:
        out["mig_mode"] = "enabled" if d.mig_enabled else "disabled"
    if d.mig:
        out["max_mig_devices"] = max(7, max(m.index for m in d.mig) + 1)
        out["mig_devices"] = [
            {
                "index": m.index,
                "uuid": anonymous_uuid(m.uuid or f"MIG-unreadable-{d.index}-{m.index}"),
                "gpu_instance_id": m.gpu_instance_id or 0,
                "compute_instance_id": m.compute_instance_id or 0,
                "memory_total_bytes": m.memory_total_bytes or 0,
            }
            for m in d.mig
        ]
    if d.state != "ok":
        out["errors"] = {
            "handle": ERROR_NAMES[GPU_IS_LOST].lower() if d.state == "lost" else "unknown"
        }
    return out


def scenario_from_reading(reading: NodeReading, description: str) -> dict[str, Any]:
    """A scenario document that makes the fake NVML answer as this node did."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "description": description,
        "driver_version": reading.driver_version or "unknown",
        "cuda_driver_version": reading.cuda_driver_version or 0,
    }
    if not reading.nvml_up:
        doc["init_error"] = "library_not_found"
    doc["devices"] = [_device(d) for d in reading.devices]
    return doc
