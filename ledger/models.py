"""Strict request models at the API edge: `gpucap.report/v1` and the what-if body.

`Report` follows schemas/report-v1.schema.json field for field: every field the schema requires
is required (nullable ones must be given as null), types are strict, and patterns, enums and
minimums, maximums and lengths are the schema's. The ledger adds only what JSON Schema cannot say
well (`LEDGER_BOUNDS`, listed in docs/ledger.md): finite numbers and a `collected_at` that is a
real instant. A body breaking any of it is refused (HTTP 422, naming the field path) before
anything is written.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from gpucap.core.data import parse_day
from gpucap.ledger.errors import RejectedError

MAX_DEVICES = 1024
INT64_MAX = 2**63 - 1
# What the ledger bounds beyond the schema (the schema sets no maximum for these).
LEDGER_BOUNDS = {
    "devices[].tpp, devices[].h100e": "finite",
    "collected_at": "a real date and time",
}

Ident = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Short = Annotated[str, StringConstraints(max_length=128)]
Text = Annotated[str, StringConstraints(max_length=256)]
PciId = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{4}$")]
PciSubsystemId = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{8}$")]
Tpp = Annotated[float, Field(ge=0, allow_inf_nan=False)]
DeviceState = Literal["ok", "lost", "unsupported", "error", "missing"]


def _real_instant(value: str) -> str:
    """`collected_at` must name a real instant (the schema's pattern alone allows month 13)."""
    try:
        datetime.fromisoformat(value[:-1])
    except ValueError:
        raise ValueError(f"not a real date and time: {value!r}") from None
    return value


UtcInstant = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
    ),
    AfterValidator(_real_instant),
]


def loc_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ('devices', 0, 'uuid') -> devices[0].uuid."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReportedDevice(_Strict):
    """One accelerator as the agent saw it; the ledger re-derives `tpp` and class itself."""

    uuid: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    pci_device_id: PciId | None
    pci_subsystem_id: PciSubsystemId | None
    name: Text | None
    serial: Short | None
    board_part_number: Short | None
    memory_total_bytes: Annotated[int, Field(ge=0, le=INT64_MAX)] | None
    mig_enabled: bool | None
    state: DeviceState
    model: Short | None
    tpp: Tpp | None
    h100e: Tpp | None


class Report(_Strict):
    """`gpucap.report/v1`: one node's devices at `collected_at` (UTC, `Z`); `seq` rises per node."""

    schema_: Literal["gpucap.report/v1"] = Field(alias="schema")
    node_id: Ident
    site_id: Ident
    seq: Annotated[int, Field(ge=1, le=INT64_MAX)]
    collected_at: UtcInstant
    agent_version: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    driver_version: Short | None
    devices: Annotated[list[ReportedDevice], Field(max_length=MAX_DEVICES)]

    def check_consistent(self) -> None:
        """Refuse a report naming one device twice (the schema alone cannot say so)."""
        seen: set[str] = set()
        for i, dev in enumerate(self.devices):
            if dev.uuid in seen:
                raise RejectedError(f"devices[{i}].uuid", f"duplicate device {dev.uuid!r}")
            seen.add(dev.uuid)


class Placement(_Strict):
    """Devices to add to or remove from a site in a what-if: by catalogue model or by TPP."""

    site: Ident
    model: Short | None = None
    tpp: Annotated[int, Field(gt=0, le=10**9)] | None = None
    count: Annotated[int, Field(gt=0, le=10**8)]


class WhatIf(_Strict):
    """`POST /v1/whatif`: hypothetical additions and removals, evaluated as of `as_of`."""

    add: Annotated[list[Placement], Field(max_length=1000)] = []
    remove: Annotated[list[Placement], Field(max_length=1000)] = []
    as_of: Annotated[date, BeforeValidator(parse_day)] | None = None
    known_at: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None

    def check_consistent(self) -> None:
        for name, items in (("add", self.add), ("remove", self.remove)):
            for i, item in enumerate(items):
                if (item.model is None) == (item.tpp is None):
                    raise RejectedError(f"{name}[{i}]", "give exactly one of model or tpp")
