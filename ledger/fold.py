"""Pure folds: a report or a decommission applied to one node's devices.

The ledger never trusts the agent's TPP or model: `resolve` re-derives both from its own
catalogue (PCI device id first, then name) and flags a disagreement. A device counts from the
date it was first seen; absent from a later report, it is gone from that date (`vanished`, a
reconciliation finding, because nobody decommissioned it); a decommission closes every device of
the node. Observed devices aggregate into engine lines keyed by
(site, model, tpp, class, first seen, gone, licence); `LineDelta`s keep that aggregate up to date.
A device's licence is the one whose shipment to the device's own site lists its serial
(`Shipped`, built once per registry); a registry change re-keys the devices whose serials it
moved (`rekey`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpucap.core.catalogue import Catalogue
from gpucap.ledger.log import canonical
from gpucap.ledger.models import ReportedDevice

# The agent rounds TPP for display; a difference below this (in TPP per device) is not a mismatch.
TPP_TOLERANCE = 1.0


@dataclass(frozen=True, slots=True)  # slots: a million of these in a record at fleet scale
class DeviceFacts:
    """What a report says about one device, with TPP and class from the ledger's catalogue."""

    uuid: str
    pci_device_id: str
    name: str
    state: str
    model: str | None  # catalogue id; None when the catalogue does not know the device
    tpp: int | None
    eccn_class: str | None
    agent_tpp: float | None
    tpp_mismatch: bool
    serial: str | None = None  # as reported; never in `digest` (see there)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device row of the `device` table."""

    node_id: str
    site_id: str
    facts: DeviceFacts
    first_seen: str
    gone_on: str | None = None
    vanished: bool = False
    licence: str | None = None  # the licence whose shipment to this site lists its serial


# serial -> (licence, site) of the registry's shipments.
Shipped = Mapping[str, tuple[str, str]]
NOTHING_SHIPPED: Shipped = {}


def shipped_serials(doc: Any) -> dict[str, tuple[str, str]]:
    """serial -> (licence, site) of a registry document's shipments (validated already: each
    serial is listed once); from the raw document, so that the write path needs no parse."""
    out: dict[str, tuple[str, str]] = {}
    if not isinstance(doc, Mapping):
        return out
    for item in doc.get("shipments") or ():
        pair = (str(item["licence"]), str(item["site"]))
        for serial in item["serials"]:
            out[str(serial)] = pair
    return out


def licence_of(shipped: Shipped, serial: str | None, site_id: str) -> str | None:
    """The licence a device is deployed under by serial: its shipment's, when shipped to the
    site it is at (a serial shipped elsewhere is a finding, never coverage)."""
    if serial is None:
        return None
    found = shipped.get(serial)
    return found[0] if found is not None and found[1] == site_id else None


@dataclass(frozen=True, order=True, slots=True)
class LineSpec:
    """One aggregate line of observed devices (dates as ISO strings; licence "" for none)."""

    site_id: str
    model: str
    tpp: int
    eccn_class: str
    installed: str
    removed: str
    licence: str = ""

    @property
    def key(self) -> str:
        # Keys of lines without a licence are those of the ledger before licences (0005).
        parts = (self.site_id, self.model, str(self.tpp), self.eccn_class, self.installed)
        key = "|".join((*parts, self.removed))
        return f"{key}|{self.licence}" if self.licence else key


def line_row(spec: LineSpec, count: int) -> dict[str, object]:
    """An aggregate line as an `inventory_line` row holds it (without its key and version)."""
    return {
        "site_id": spec.site_id,
        "model": spec.model,
        "tpp": spec.tpp,
        "eccn_class": spec.eccn_class,
        "installed": spec.installed,
        "removed": spec.removed or None,
        "licence": spec.licence or None,
        "count": count,
    }


@dataclass(frozen=True)
class Change:
    """Rows to write and line counts to adjust; empty when the report changed nothing."""

    rows: tuple[DeviceRow, ...] = ()
    line_deltas: Mapping[LineSpec, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.rows


def resolve(device: ReportedDevice, catalogue: Catalogue) -> DeviceFacts:
    """The device's facts with TPP and class re-derived from the catalogue."""
    pci = None if device.pci_device_id is None else int(device.pci_device_id, 16)
    acc = catalogue.match(pci, device.name)
    mismatch = False
    if acc is not None:
        if device.tpp is not None and abs(device.tpp - acc.tpp) > TPP_TOLERANCE:
            mismatch = True
        if device.model is not None and device.model != acc.id:
            mismatch = True
    return DeviceFacts(
        uuid=device.uuid,
        pci_device_id=(device.pci_device_id or "").lower(),
        name=device.name or "",
        state=device.state,
        model=None if acc is None else acc.id,
        tpp=None if acc is None else acc.tpp,
        eccn_class=None if acc is None else acc.eccn_class,
        agent_tpp=device.tpp,
        tpp_mismatch=mismatch,
        serial=device.serial,
    )


def digest(facts: Iterable[DeviceFacts]) -> str:
    """A digest of a report's device facts: equal digests mean an unchanged inventory.

    The serial is left out: it is fixed for a UUID, and every stored digest predates it."""
    rows = sorted(
        (f.uuid, f.pci_device_id, f.name, f.state, f.model, f.tpp, f.agent_tpp) for f in facts
    )
    return hashlib.sha256(canonical(rows).encode()).hexdigest()


def line_of(row: DeviceRow) -> LineSpec | None:
    """The line a device counts in, or None for a device the catalogue does not know."""
    f = row.facts
    if f.tpp is None or f.eccn_class is None or f.model is None:
        return None
    return LineSpec(
        row.site_id,
        f.model,
        f.tpp,
        f.eccn_class,
        row.first_seen,
        row.gone_on or "",
        row.licence or "",
    )


def _move(deltas: Counter[LineSpec], old: DeviceRow | None, new: DeviceRow) -> None:
    before = None if old is None else line_of(old)
    after = line_of(new)
    if before == after:
        return
    if before is not None:
        deltas[before] -= 1
    if after is not None:
        deltas[after] += 1


def fold_report(
    node_id: str,
    site_id: str,
    existing: Mapping[str, DeviceRow],
    reported: Sequence[DeviceFacts],
    on: str,
    shipped: Shipped = NOTHING_SHIPPED,
) -> Change:
    """Apply one accepted report, received on date `on`, to the node's device rows; a present
    device takes the licence `shipped` gives its serial at `site_id`."""
    rows: list[DeviceRow] = []
    deltas: Counter[LineSpec] = Counter()
    present = set()
    for facts in reported:
        present.add(facts.uuid)
        old = existing.get(facts.uuid)
        licence = licence_of(shipped, facts.serial, site_id)
        if old is None:
            new = DeviceRow(node_id, site_id, facts, first_seen=on, licence=licence)
        else:
            new = replace(old, facts=facts, gone_on=None, vanished=False, licence=licence)
            if new == old:
                continue
        _move(deltas, old, new)
        rows.append(new)
    for uuid, old in existing.items():
        if uuid not in present and old.gone_on is None:
            new = replace(old, gone_on=on, vanished=True)
            _move(deltas, old, new)
            rows.append(new)
    return Change(tuple(rows), _nonzero(deltas))


def fold_decommission(existing: Mapping[str, DeviceRow], on: str) -> Change:
    """Close every device still present on a node decommissioned on date `on`."""
    rows: list[DeviceRow] = []
    deltas: Counter[LineSpec] = Counter()
    for old in existing.values():
        if old.gone_on is None:
            new = replace(old, gone_on=on, vanished=False)
            _move(deltas, old, new)
            rows.append(new)
    return Change(tuple(rows), _nonzero(deltas))


def rekey(rows: Iterable[DeviceRow], shipped: Shipped) -> Change:
    """Give `rows` (present or gone) the licences a new registry's `shipped` gives them."""
    out: list[DeviceRow] = []
    deltas: Counter[LineSpec] = Counter()
    for old in rows:
        licence = licence_of(shipped, old.facts.serial, old.site_id)
        if licence != old.licence:
            new = replace(old, licence=licence)
            _move(deltas, old, new)
            out.append(new)
    return Change(tuple(out), _nonzero(deltas))


def moved_serials(old: Shipped, new: Shipped) -> set[str]:
    """The serials whose (licence, site) differs between two registries' shipments."""
    return {s for s in old.keys() | new.keys() if old.get(s) != new.get(s)}


def _nonzero(deltas: Counter[LineSpec]) -> Counter[LineSpec]:
    return Counter({k: v for k, v in deltas.items() if v != 0})
