"""Strict request models at the API edge: `gpucap.report/v1` and the what-if body.

`Report` follows schemas/report-v1.schema.json field for field: every field the schema requires
is required (nullable ones must be given as null), types are strict, and patterns, enums and
minimums, maximums and lengths are the schema's. The ledger adds only what JSON Schema cannot say
well (`LEDGER_BOUNDS`, listed in docs/ledger.md): finite numbers and a `collected_at` that is a
real instant. A body breaking any of it is refused (HTTP 422, naming the field path) before
anything is written.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from gpucap.core.data import parse_day
from gpucap.core.text import refuse_control
from gpucap.ledger.errors import RejectedError

MAX_DEVICES = 1024
INT64_MAX = 2**63 - 1
# What the ledger bounds beyond the schema (the schema sets no maximum for these).
LEDGER_BOUNDS = {
    "devices[].tpp, devices[].h100e": "finite",
    "collected_at": "a real date and time",
}
# What the ledger normalises (the form it stores and logs): lowercase PCI ids, `collected_at`
# in the `Z` form.

# Every string refuses C0 control characters (PostgreSQL cannot store NUL; SQLite would): both
# databases then accept and refuse the same reports.
NO_CONTROL_PATTERN = "^[^\u0000-\u001f]*$"  # the schema file's, for the API description


class _NoControl:
    """`refuse_control` after validation (its message names the character); the JSON schema
    says the same with NO_CONTROL_PATTERN, which validation does not use."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(refuse_control, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = NO_CONTROL_PATTERN
        return out


NoControl = _NoControl()
Ident = Annotated[str, StringConstraints(min_length=1, max_length=256), NoControl]
Short = Annotated[str, StringConstraints(max_length=128), NoControl]
Text = Annotated[str, StringConstraints(max_length=256), NoControl]
PciId = Annotated[
    str, StringConstraints(pattern=r"^0[xX][0-9a-fA-F]{4}$"), AfterValidator(str.lower)
]
PciSubsystemId = Annotated[
    str, StringConstraints(pattern=r"^0[xX][0-9a-fA-F]{8}$"), AfterValidator(str.lower)
]
Tpp = Annotated[float, Field(ge=0, allow_inf_nan=False)]
DeviceState = Literal["ok", "lost", "unsupported", "error", "missing"]

# RFC 3339 date-time (section 5.6: `T` or `t`, `Z` or `z`, any number of fraction digits; gpucap
# takes up to nine), which the ledger keeps only in UTC: `Z`, `+00:00` or `-00:00`.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


def utc_instant(value: str) -> str:
    """An RFC 3339 UTC instant, normalised to `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; ValueError
    with a sentence for anything else (another offset, no offset, an impossible date)."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not an RFC 3339 date and time in UTC, such as 2026-12-01T06:20:00Z "
            "(up to nine fraction digits; Z or +00:00)"
        )
    day, clock, fraction, offset = match.groups()
    if offset not in ("Z", "z", "+00:00", "-00:00"):
        raise ValueError(f"{value!r} is not in UTC: give the instant in UTC, with Z or +00:00")
    try:
        datetime.fromisoformat(f"{day}T{clock}")
    except ValueError:
        raise ValueError(f"not a real date and time: {value!r}") from None
    return f"{day}T{clock}{fraction or ''}Z"


UtcInstant = Annotated[
    str,
    AfterValidator(utc_instant),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
            r"([Zz]|[+-]00:00)$",
            "description": "RFC 3339 date-time in UTC (Z or +00:00), a real one",
        }
    ),
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

    uuid: Annotated[str, StringConstraints(min_length=1, max_length=128), NoControl]
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
    agent_version: Annotated[str, StringConstraints(min_length=1, max_length=128), NoControl]
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
    known_at: Annotated[str, StringConstraints(min_length=1, max_length=64), NoControl] | None = (
        None
    )

    def check_consistent(self) -> None:
        for name, items in (("add", self.add), ("remove", self.remove)):
            for i, item in enumerate(items):
                if (item.model is None) == (item.tpp is None):
                    raise RejectedError(f"{name}[{i}]", "give exactly one of model or tpp")
