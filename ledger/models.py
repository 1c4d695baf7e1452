"""Strict request models at the API edge: `gpucap.report/v1` and the what-if body.

Extra fields are forbidden and every string and list is bounded, so a malformed or oversized body
is refused (HTTP 422, naming the field path) before anything is written.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from gpucap.ledger.errors import RejectedError

MAX_DEVICES = 1024
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,255}$")]
Short = Annotated[str, StringConstraints(max_length=128)]
Text = Annotated[str, StringConstraints(max_length=256)]
PciId = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{4}$")]
PciSubsystemId = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{4,8}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReportedDevice(_Strict):
    """One accelerator as the agent saw it; the ledger re-derives `tpp` and class itself."""

    uuid: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    pci_device_id: PciId | None
    pci_subsystem_id: PciSubsystemId | None = None
    name: Text | None
    serial: Short | None = None
    board_part_number: Short | None = None
    memory_total_bytes: Annotated[int, Field(ge=0, le=2**50)] | None = None
    mig_enabled: bool | None = None
    state: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    model: Short | None = None
    tpp: Annotated[float, Field(ge=0, le=1e9)] | None = None
    h100e: Annotated[float, Field(ge=0, le=1e6)] | None = None


class Report(_Strict):
    """`gpucap.report/v1`: one node's devices at `collected_at`; `seq` rises per node."""

    schema_: Literal["gpucap.report/v1"] = Field(alias="schema")
    node_id: Ident
    site_id: Ident
    seq: Annotated[int, Field(ge=0, le=2**62)]
    collected_at: AwareDatetime
    agent_version: Short
    driver_version: Short | None = None
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
    as_of: date | None = None

    def check_consistent(self) -> None:
        for name, items in (("add", self.add), ("remove", self.remove)):
            for i, item in enumerate(items):
                if (item.model is None) == (item.tpp is None):
                    raise RejectedError(f"{name}[{i}]", "give exactly one of model or tpp")
