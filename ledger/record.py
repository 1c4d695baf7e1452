"""The record as a prefix of the log held it: the same folds as the projections, in memory.

`Record` applies log entries in index order with the folds of the write path (`fold.py`) and
keeps what the projections keep (the registry, each node and its device rows), plus what only
an auditor asks for: the index of the entry that introduced each device and the registry, and
each device's serial and board part number from the report that last described it. It needs no
database, so the same code answers `known_at` queries in the ledger and replays an evidence
bundle offline (`gpucap audit verify`). Liveness follows the entries (a node's last presence or
report entry), never the heartbeats, which are not in the log.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from gpucap.core.catalogue import Catalogue
from gpucap.core.fleet import Fleet, Line
from gpucap.core.scenario import parse_scenario
from gpucap.ledger.errors import LedgerError, LogBrokenError
from gpucap.ledger.fold import (
    Change,
    DeviceRow,
    LineSpec,
    Shipped,
    digest,
    fold_decommission,
    fold_report,
    line_of,
    line_row,
    moved_serials,
    rekey,
    resolve,
    shipped_serials,
)
from gpucap.ledger.inventory import MAX_DEVICES
from gpucap.ledger.log import canonical
from gpucap.ledger.models import Report, loc_path


@dataclass(frozen=True)
class RegistryState:
    """The registry document in force after some entry, with that entry's index."""

    doc: Any
    origin: str
    digest: str
    log_index: int
    recorded_at: str


@dataclass(slots=True)
class NodeState:
    """One node as the log describes it."""

    node_id: str
    site_id: str
    first_seen: str
    last_seen: str
    last_seq: int
    devices_digest: str = ""
    decommissioned_on: str | None = None
    decommission_reason: str | None = None
    agent_version: str = ""
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    introduced: dict[str, int] = field(default_factory=dict)  # uuid -> log index
    labels: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # serial, bpn


class Record:
    """The projections of the first `size` log entries, folded in memory."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.size = 0
        self.registry: RegistryState | None = None
        self.nodes: dict[str, NodeState] = {}
        self.site_nodes: dict[str, set[str]] = {}
        self.lines: Counter[LineSpec] = Counter()
        self.shipped: Shipped = {}  # the registry's serial -> (licence, site)
        self._fleet: tuple[str, Fleet] | None = None

    # -- folding ----------------------------------------------------------------------------
    def apply_all(self, entries: Iterable[tuple[int, str]], *, gaps: bool = False) -> None:
        for index, leaf in entries:
            self.apply(index, leaf, gaps=gaps)

    def apply(self, index: int, leaf: str, *, gaps: bool = False) -> None:
        """Fold entry `index` into the record: the next one, or with `gaps` any later one (an
        evidence bundle holds only the entries its numbers depend on)."""
        if index < self.size or (index > self.size and not gaps):
            raise LogBrokenError(f"entry[{index}]", f"expected entry {self.size} next")
        try:
            entry = json.loads(leaf)
            kind, body, at = entry["kind"], entry["body"], entry["recorded_at"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LogBrokenError(f"entry[{index}]", f"not a log entry: {exc}") from None
        try:
            self._dispatch(index, kind, body, at)
        except (KeyError, TypeError, AttributeError) as exc:
            raise LogBrokenError(f"entry[{index}]", f"malformed {kind} entry: {exc!r}") from None
        self.size = index + 1

    def _dispatch(self, index: int, kind: str, body: Any, at: str) -> None:
        if kind == "registry":
            text = canonical(body["doc"])
            self.registry = RegistryState(
                body["doc"], body["origin"], hashlib.sha256(text.encode()).hexdigest(), index, at
            )
            shipped = shipped_serials(body["doc"])
            moved = moved_serials(self.shipped, shipped)
            self.shipped = shipped
            if moved:  # the devices whose serials the new registry ships elsewhere (or not)
                for held in self.nodes.values():
                    rows = [r for r in held.devices.values() if r.facts.serial in moved]
                    if rows:
                        self._change(held, rekey(rows, shipped), index)
        elif kind == "report":
            self._report(index, body, at)
        elif kind == "presence":
            self._seen(body["node_id"], body["site_id"], body["seq"], at)
        elif kind == "decommission":
            node = self.nodes.get(body["node_id"])
            if node is None:
                raise LogBrokenError(
                    f"entry[{index}]", f"decommissions unknown node {body['node_id']}"
                )
            node.decommissioned_on = body["on"]
            node.decommission_reason = body.get("reason")
            self._change(node, fold_decommission(node.devices, body["on"]), index)

    def _report(self, index: int, body: Any, at: str) -> None:
        try:
            report = Report.model_validate_json(json.dumps(body))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"entry[{index}]"
            raise LogBrokenError(
                where, f"report no longer valid: {loc_path(first['loc'])}: {first['msg']}"
            ) from None
        facts = tuple(resolve(d, self.catalogue) for d in report.devices)
        existed = report.node_id in self.nodes
        node = self._seen(report.node_id, report.site_id, report.seq, at)
        node.agent_version = report.agent_version
        for device in report.devices:
            node.labels[device.uuid] = (device.serial, device.board_part_number)
        new_digest = digest(facts)
        if existed and node.devices_digest == new_digest:
            return  # a heartbeat the hash-chain version logged: it changed no device row
        node.devices_digest = new_digest
        change = fold_report(node.node_id, node.site_id, node.devices, facts, at[:10], self.shipped)
        self._change(node, change, index)

    def _seen(self, node_id: str, site_id: str, seq: int, at: str) -> NodeState:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeState(node_id, site_id, at, at, seq)
            self.site_nodes.setdefault(site_id, set()).add(node_id)
        node.last_seq, node.last_seen = seq, at
        return node

    def _change(self, node: NodeState, change: Change, index: int) -> None:
        for row in change.rows:
            if row.facts.uuid not in node.devices:
                node.introduced[row.facts.uuid] = index
            node.devices[row.facts.uuid] = row
        lines = self.lines
        for spec, delta in change.line_deltas.items():
            count = lines[spec] + delta
            if count:
                lines[spec] = count
            else:
                del lines[spec]

    # -- reading ----------------------------------------------------------------------------
    def registry_fleet(self) -> Fleet:
        """The registry's fleet (declared lines only), parsed once per registry."""
        reg = self.registry
        if reg is None:
            raise LedgerError("registry", "no registry in the log at this size")
        if self._fleet is None or self._fleet[0] != reg.digest:
            self._fleet = (reg.digest, parse_scenario(reg.doc, self.catalogue, reg.origin))
        return self._fleet[1]

    def observed_lines(self) -> list[Line]:
        """The observed devices as engine lines (the same lines `inventory_line` holds)."""
        return [spec_line(spec, n) for spec, n in sorted(self.lines.items()) if n > 0]

    def fleet(self) -> Fleet:
        """The registry's fleet plus the observed lines: what headroom is computed from."""
        reg = self.registry_fleet()
        return replace(reg, lines=reg.lines + tuple(self.observed_lines()))

    def devices(self, sites: Iterable[str] | None = None) -> Iterator[tuple[NodeState, DeviceRow]]:
        """Every device row (of the given sites), by node and uuid."""
        if sites is None:
            ids: Iterable[str] = sorted(self.nodes)
        else:
            ids = sorted({n for s in sites for n in self.site_nodes.get(s, ())})
        for node_id in ids:
            node = self.nodes[node_id]
            for uuid in sorted(node.devices):
                yield node, node.devices[uuid]


def spec_line(spec: LineSpec, count: int) -> Line:
    """An engine line of `count` observed devices of one aggregate line."""
    return Line(
        site=spec.site_id,
        count=count,
        tpp_per_device=Fraction(spec.tpp),
        eccn_class=spec.eccn_class,
        installed=date.fromisoformat(spec.installed),
        removed=date.fromisoformat(spec.removed) if spec.removed else None,
        model=spec.model,
        licence=spec.licence or None,
        observed=bool(spec.licence),
    )


def observed_by_node(
    record: Record, site: str
) -> Mapping[LineSpec, list[tuple[NodeState, list[DeviceRow]]]]:
    """A site's observed devices grouped by aggregate line, then by node (sorted)."""
    out: dict[LineSpec, dict[str, tuple[NodeState, list[DeviceRow]]]] = {}
    for node, row in record.devices([site]):
        spec = line_of(row)
        if spec is None:
            continue
        per_node = out.setdefault(spec, {})
        per_node.setdefault(node.node_id, (node, []))[1].append(row)
    return {spec: [per_node[n] for n in sorted(per_node)] for spec, per_node in out.items()}


def device_dict(node: NodeState, row: DeviceRow) -> dict[str, Any]:
    """A device row as `GET /v1/inventory?site=` answers it (the `device` table's columns)."""
    f = row.facts
    return {
        "node_id": node.node_id,
        "uuid": f.uuid,
        "site_id": row.site_id,
        "model": f.model,
        "pci_device_id": f.pci_device_id,
        "name": f.name,
        "tpp": f.tpp,
        "eccn_class": f.eccn_class,
        "agent_tpp": f.agent_tpp,
        "tpp_mismatch": f.tpp_mismatch,
        "state": f.state,
        "first_seen": row.first_seen,
        "gone_on": row.gone_on,
        "vanished": row.vanished,
        "serial": f.serial,
        "licence": row.licence,
    }


def record_inventory(
    record: Record, fleet: Fleet, site: str | None, entity: str | None
) -> dict[str, Any]:
    """`inventory.inventory_view`'s answer, from a record instead of the projections."""
    if site is None:
        visible = {s.id for s in fleet.sites if entity is None or s.entity == entity}
        per_site: dict[str, list[int]] = {}
        for _node, row in record.devices(visible):
            if row.gone_on is None:
                held = per_site.setdefault(row.site_id, [0, 0])
                held[0] += 1
                held[1] += row.facts.tpp or 0
        return {
            "sites": [{"site": s, "devices": n, "tpp": t} for s, (n, t) in sorted(per_site.items())]
        }
    devices = [device_dict(node, row) for node, row in record.devices([site])]
    lines = [
        line_row(spec, n)
        for spec, n in sorted(record.lines.items())
        if spec.site_id == site and n > 0
    ]
    return {
        "site": site,
        "devices_total": len(devices),
        "devices": devices[:MAX_DEVICES],
        "lines": lines,
    }
