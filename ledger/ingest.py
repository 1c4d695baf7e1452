"""The write paths: reports, registry changes, decommissions, and rebuilding projections.

Each runs in one `Store.write()` transaction: the projections change and the event is appended
together, or nothing is written. A report is a compare-and-set on its node's last `seq` under
the ledger-wide writer lock, so the same report from two processes is accepted exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gpucap.core.catalogue import Catalogue
from gpucap.core.fleet import Fleet
from gpucap.core.scenario import parse_scenario
from gpucap.ledger import eventlog
from gpucap.ledger.errors import LedgerError, RejectedError
from gpucap.ledger.eventlog import Head, canonical
from gpucap.ledger.fold import (
    Change,
    DeviceFacts,
    DeviceRow,
    digest,
    fold_decommission,
    fold_report,
    resolve,
)
from gpucap.ledger.models import Report, loc_path
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import HotSql, State, Store, bump
from gpucap.ledger.tables import table

_SELECT_NODE = HotSql(
    "SELECT node_id, site_id, last_seq, devices_digest, decommissioned_on FROM node "
    "WHERE node_id = :node_id"
)
_UPDATE_NODE = HotSql(
    "UPDATE node SET last_seq = :last_seq, last_seen = :last_seen, "
    "devices_digest = :devices_digest, agent_version = :agent_version WHERE node_id = :node_id"
)
_INSERT_NODE = HotSql(
    "INSERT INTO node (node_id, site_id, last_seq, first_seen, last_seen, devices_digest, "
    "decommissioned_on, agent_version) VALUES (:node_id, :site_id, :last_seq, :last_seen, "
    ":last_seen, :devices_digest, NULL, :agent_version)"
)
_SELECT_REGISTRY_DIGEST = HotSql("SELECT digest FROM registry")


class NodeRow(NamedTuple):
    """The `node` columns a report is checked against."""

    node_id: str
    site_id: str
    last_seq: int
    devices_digest: str
    decommissioned_on: str | None


def node_row(conn: Connection, node_id: str) -> NodeRow | None:
    row = _SELECT_NODE.one(conn, {"node_id": node_id})
    return None if row is None else NodeRow(*row)


@dataclass(frozen=True)
class Outcome:
    """The answer to one report: accepted with its seq, or a duplicate (nothing changed)."""

    status: Literal["accepted", "duplicate"]
    seq: int


def registry_sites(conn: Connection) -> dict[str, str] | None:
    """site id -> entity of the current registry, or None when no registry was loaded."""
    reg = conn.execute(sa.select(table("registry").c.doc)).scalar_one_or_none()
    if reg is None:
        return None
    doc = json.loads(reg)
    return {str(s["id"]): str(s["entity"]) for s in doc.get("sites", [])}


class SiteCache:
    """site id -> entity of the registry, kept across reports and checked under the writer lock.

    Every registry change bumps `projection_version` in the same transaction, so while the
    version a write transaction finds is the one last checked, the cached sites are current;
    when it moved, one small SELECT of the registry digest says whether to re-read the document.
    Only touched inside write transactions, which the writer lock serialises.
    """

    def __init__(self) -> None:
        self._state: tuple[int, str | None, Mapping[str, str]] = (-1, None, {})

    def sites(self, conn: Connection, state: State) -> Mapping[str, str]:
        version, digest, sites = self._state
        if state.projection_version != version:
            row = _SELECT_REGISTRY_DIGEST.one(conn)
            current = None if row is None else row[0]
            if current != digest or current is None:
                sites = registry_sites(conn) or {}
            self._state = (state.projection_version, current, sites)
        return sites


def ingest_report(
    store: Store,
    report: Report,
    catalogue: Catalogue,
    now: datetime,
    sites: SiteCache | None = None,
) -> Outcome:
    """Validate against the ledger's state and store one report; see the module docstring.

    `sites` keeps the registry's sites between reports (the caller's, one per process); without
    it the registry is read in this transaction.
    """
    report.check_consistent()
    facts = [resolve(d, catalogue) for d in report.devices]
    cache = sites or SiteCache()
    with store.write() as (conn, state):
        node = node_row(conn, report.node_id)
        if node is not None and report.seq <= node.last_seq:
            return Outcome("duplicate", report.seq)
        if report.site_id not in cache.sites(conn, state):
            raise RejectedError("site_id", f"no site {report.site_id!r} in the registry")
        if node is not None and node.decommissioned_on is not None:
            raise RejectedError(
                "node_id",
                f"node {report.node_id!r} was decommissioned on {node.decommissioned_on}; "
                "a node id is never reused: enrol the machine under a new node id",
            )
        if node is not None and node.site_id != report.site_id:
            raise RejectedError(
                "site_id",
                f"node {report.node_id!r} reports for site {node.site_id!r}; "
                "decommission it before moving it",
            )
        body = report.model_dump(mode="json", by_alias=True)
        recorded_at = iso_instant(now)
        apply_report(conn, state, report, facts, recorded_at, node)
        eventlog.append(
            conn,
            Head(state.head_seq, state.head_hash),
            "report",
            f"node:{report.node_id}",
            body,
            recorded_at,
        )
    return Outcome("accepted", report.seq)


def apply_report(
    conn: Connection,
    state: State,
    report: Report,
    facts: list[DeviceFacts],
    recorded_at: str,
    node: NodeRow | None,
) -> None:
    """Fold a report into the projections (shared by ingest and rebuild)."""
    new_digest = digest(facts)
    values = {
        "node_id": report.node_id,
        "last_seq": report.seq,
        "last_seen": recorded_at,
        "devices_digest": new_digest,
        "agent_version": report.agent_version,
    }
    if node is None:
        _INSERT_NODE.run(conn, {"site_id": report.site_id, **values})
    else:
        _UPDATE_NODE.run(conn, values)
    if node is not None and node.devices_digest == new_digest:
        return  # unchanged inventory: nothing else to touch (the common case)
    existing = _devices(conn, report.node_id)
    change = fold_report(report.node_id, report.site_id, existing, facts, recorded_at[:10])
    _write_change(conn, state, change)


def decommission(store: Store, node_id: str, now: datetime, actor: str) -> int:
    """Close a node: its devices stop counting for installed-base rules from today."""
    node_t = table("node")
    recorded_at = iso_instant(now)
    with store.write() as (conn, state):
        node = conn.execute(sa.select(node_t).where(node_t.c.node_id == node_id)).first()
        if node is None:
            raise RejectedError("node", f"no node {node_id!r} has reported")
        if node.decommissioned_on is not None:
            raise RejectedError("node", f"node {node_id!r} was decommissioned already")
        n = apply_decommission(conn, state, node_id, recorded_at)
        eventlog.append(
            conn,
            Head(state.head_seq, state.head_hash),
            "decommission",
            actor,
            {"node_id": node_id, "on": recorded_at[:10]},
            recorded_at,
        )
    return n


def apply_decommission(conn: Connection, state: State, node_id: str, recorded_at: str) -> int:
    node_t = table("node")
    conn.execute(
        sa.update(node_t)
        .where(node_t.c.node_id == node_id)
        .values(decommissioned_on=recorded_at[:10])
    )
    change = fold_decommission(_devices(conn, node_id), recorded_at[:10])
    _write_change(conn, state, change)
    return len(change.rows)


def load_registry_doc(doc: Any, origin: str, catalogue: Catalogue) -> Fleet:
    """Validate a registry document (the scenario format); InputError names the bad field."""
    return parse_scenario(doc, catalogue, origin)


def set_registry(store: Store, doc: Any, origin: str, now: datetime, actor: str) -> bool:
    """Record a registry document if it differs from the current one; True if it changed."""
    text = canonical(doc)
    new_digest = hashlib.sha256(text.encode()).hexdigest()
    recorded_at = iso_instant(now)
    with store.write() as (conn, state):
        current = conn.execute(sa.select(table("registry").c.digest)).scalar_one_or_none()
        if current == new_digest:
            return False
        apply_registry(conn, state, json.loads(text), origin, recorded_at)
        eventlog.append(
            conn,
            Head(state.head_seq, state.head_hash),
            "registry",
            actor,
            {"origin": origin, "doc": json.loads(text), "previous_digest": current},
            recorded_at,
        )
    return True


def apply_registry(conn: Connection, state: State, doc: Any, origin: str, recorded_at: str) -> None:
    reg_t = table("registry")
    text = canonical(doc)
    values = {
        "digest": hashlib.sha256(text.encode()).hexdigest(),
        "doc": text,
        "origin": origin,
        "loaded_at": recorded_at,
    }
    conn.execute(sa.delete(reg_t))
    conn.execute(sa.insert(reg_t).values(id=1, **values))
    bump(conn, projection_version=state.projection_version + 1)


def _devices(conn: Connection, node_id: str) -> dict[str, DeviceRow]:
    dev_t = table("device")
    rows = conn.execute(sa.select(dev_t).where(dev_t.c.node_id == node_id)).all()
    return {
        r.uuid: DeviceRow(
            node_id=r.node_id,
            site_id=r.site_id,
            facts=DeviceFacts(
                uuid=r.uuid,
                pci_device_id=r.pci_device_id,
                name=r.name,
                state=r.state,
                model=r.model,
                tpp=r.tpp,
                eccn_class=r.eccn_class,
                agent_tpp=r.agent_tpp,
                tpp_mismatch=r.tpp_mismatch,
            ),
            first_seen=r.first_seen,
            gone_on=r.gone_on,
            vanished=r.vanished,
        )
        for r in rows
    }


def _upsert(conn: Connection, name: str, keys: list[str], rows: list[dict[str, Any]]) -> None:
    t = table(name)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(t)
    update = {c.name: stmt.excluded[c.name] for c in t.columns if c.name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)


def _write_change(conn: Connection, state: State, change: Change) -> None:
    if change.empty:
        return
    _upsert(
        conn,
        "device",
        ["node_id", "uuid"],
        [
            {
                "node_id": r.node_id,
                "uuid": r.facts.uuid,
                "site_id": r.site_id,
                "model": r.facts.model,
                "pci_device_id": r.facts.pci_device_id,
                "name": r.facts.name,
                "tpp": r.facts.tpp,
                "eccn_class": r.facts.eccn_class,
                "agent_tpp": r.facts.agent_tpp,
                "tpp_mismatch": r.facts.tpp_mismatch,
                "state": r.facts.state,
                "first_seen": r.first_seen,
                "gone_on": r.gone_on,
                "vanished": r.vanished,
            }
            for r in change.rows
        ],
    )
    line_t = table("inventory_line")
    if change.line_deltas:
        # Rows carry the version this transaction bumps to; none is deleted (see InventoryLine).
        version = state.projection_version + 1
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(line_t)
        for spec, delta in sorted(change.line_deltas.items()):
            conn.execute(
                stmt.values(
                    key=spec.key,
                    site_id=spec.site_id,
                    model=spec.model,
                    tpp=spec.tpp,
                    eccn_class=spec.eccn_class,
                    installed=spec.installed,
                    removed=spec.removed or None,
                    count=delta,
                    version=version,
                ).on_conflict_do_update(
                    index_elements=["key"],
                    set_={"count": line_t.c.count + delta, "version": version},
                )
            )
        bump(conn, projection_version=version)


def _recorded_report(seq: int, body: str) -> Report:
    """A report event's body as a Report; a body today's model refuses (a report accepted by an
    older, laxer ledger) is one error naming the event and field, and nothing is rebuilt."""
    try:
        return Report.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = f"report no longer valid: {loc_path(first['loc'])}: {first['msg']}"
        raise LedgerError(f"event[{seq}]", reason) from None


def rebuild(store: Store, catalogue: Catalogue) -> int:
    """Drop every projection and replay the event log into it; returns the events replayed."""
    n = 0
    with store.write() as (conn, state):
        for name in ("device", "node", "registry"):
            conn.execute(sa.delete(table(name)))
        # Lines are zeroed, not deleted, at the version the rebuild ends on: a reader holding an
        # older version re-reads every row, and a line the replay no longer makes stays a
        # tombstone, so that it is seen to be gone.
        line_t = table("inventory_line")
        conn.execute(sa.update(line_t).values(count=0, version=state.projection_version + 1))
        for row in list(eventlog.read_rows(conn)):
            body = json.loads(row.body)
            if row.kind == "registry":
                apply_registry(conn, state, body["doc"], body["origin"], row.recorded_at)
            elif row.kind == "report":
                report = _recorded_report(row.seq, row.body)
                facts = [resolve(d, catalogue) for d in report.devices]
                node = node_row(conn, report.node_id)
                apply_report(conn, state, report, facts, row.recorded_at, node)
            elif row.kind == "decommission":
                apply_decommission(conn, state, body["node_id"], row.recorded_at)
            n += 1
        bump(conn, projection_version=state.projection_version + 1)
    return n
