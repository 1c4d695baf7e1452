"""The `gpucap.report/v1` document the agent sends to the ledger. Pure.

schemas/report-v1.schema.json is the contract; tests validate what this module builds
against it. `fingerprint` is what decides whether a report carries a change: identical
fingerprints make a heartbeat, which the spool may drop first when it is full.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from gpucap.agent.inventory import Inventory, h100e_number, hex_id

SCHEMA = "gpucap.report/v1"


def utc_iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z and millisecond precision: 2026-11-27T17:01:02.123Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report_devices(inventory: Inventory) -> list[dict[str, Any]]:
    return [
        {
            "uuid": d.uuid,
            "pci_device_id": hex_id(d.reading.pci_device_id),
            "pci_subsystem_id": hex_id(d.reading.pci_subsystem_id, 8),
            "name": d.reading.name,
            "serial": d.reading.serial,
            "board_part_number": d.reading.board_part_number,
            "memory_total_bytes": d.reading.memory_total_bytes,
            "mig_enabled": d.reading.mig_enabled,
            "state": d.state,
            "model": d.model,
            "tpp": d.tpp,
            "h100e": h100e_number(d.h100e),
        }
        for d in inventory.devices
    ]


def build_report(
    inventory: Inventory,
    *,
    node_id: str,
    site_id: str,
    seq: int,
    collected_at: datetime,
    agent_version: str,
) -> dict[str, Any]:
    """One report; `seq` comes from the spool, which guarantees it was never used before."""
    return {
        "schema": SCHEMA,
        "node_id": node_id,
        "site_id": site_id,
        "seq": seq,
        "collected_at": utc_iso(collected_at),
        "agent_version": agent_version,
        "driver_version": inventory.driver_version,
        "devices": report_devices(inventory),
    }


def fingerprint(report: dict[str, Any]) -> str:
    """What the node looks like, independent of seq and time: equal means nothing changed."""
    body = {k: report[k] for k in ("node_id", "site_id", "driver_version", "devices")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
