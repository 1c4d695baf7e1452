"""The projection tables' rows: every statement the write path, the replay and the registry
reads run on `node`, `device`, `inventory_line` and `registry`, with typed rows out.

The decisions (is this a heartbeat, a duplicate, a refusal) are `ingest`'s; this module only
reads and writes rows inside the caller's transaction. The log's own tables belong to `log`;
read models that only answer queries (`reconcile`, `inventory`, `linecache`) keep their SELECTs
beside the answer they build, and tokens theirs in `tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.ledger.fold import Change, DeviceFacts, DeviceRow
from gpucap.ledger.store import HotSql
from gpucap.ledger.tables import table

_HEARTBEAT = HotSql(
    "UPDATE node SET last_seq = :seq, last_seen = :now, agent_version = :agent_version "
    "WHERE node_id = :node_id AND last_seq < :seq AND devices_digest = :digest "
    "AND site_id = :site_id AND decommissioned_on IS NULL AND presence_day = :day"
)
_NODE_SQL = (
    "SELECT node_id, site_id, last_seq, devices_digest, decommissioned_on, presence_day "
    "FROM node WHERE node_id = :node_id"
)
_SELECT_NODE = {True: HotSql(_NODE_SQL), False: HotSql(_NODE_SQL + " FOR UPDATE")}
_UPDATE_NODE = HotSql(
    "UPDATE node SET last_seq = :seq, last_seen = :now, devices_digest = :digest, "
    "agent_version = :agent_version, presence_day = :day WHERE node_id = :node_id"
)
_INSERT_NODE = HotSql(
    "INSERT INTO node (node_id, site_id, last_seq, first_seen, last_seen, devices_digest, "
    "presence_day, decommissioned_on, agent_version) VALUES (:node_id, :site_id, :seq, :now, "
    ":now, :digest, :day, NULL, :agent_version) ON CONFLICT (node_id) DO NOTHING"
)
_REGISTRY_DIGEST = HotSql("SELECT digest FROM registry")
_LOCK_STATE = HotSql("SELECT projection_version FROM ledger_state WHERE id = 1 FOR UPDATE")


class NodeRow(NamedTuple):
    """The `node` columns a report is checked against."""

    node_id: str
    site_id: str
    last_seq: int
    devices_digest: str
    decommissioned_on: str | None
    presence_day: str


class RegistryRow(NamedTuple):
    digest: str
    doc: str  # canonical JSON
    origin: str


# -- nodes ------------------------------------------------------------------------------------
def heartbeat(conn: Connection, report: Mapping[str, Any]) -> bool:
    """The heartbeat's compare-and-set (keys as `_HEARTBEAT`); True when it advanced the node."""
    return _HEARTBEAT.run(conn, report) == 1


def node_for_update(conn: Connection, node_id: str, *, lock: bool) -> NodeRow | None:
    """The node's row, locked until commit when `lock` (PostgreSQL; SQLite has one writer)."""
    row = _SELECT_NODE[not lock].one(conn, {"node_id": node_id})
    return None if row is None else NodeRow(*row)


def insert_node(conn: Connection, report: Mapping[str, Any]) -> bool:
    """Enrol a node from its first report; False when another transaction enrolled it first."""
    return _INSERT_NODE.run(conn, report) == 1


def update_node(conn: Connection, report: Mapping[str, Any]) -> None:
    """Advance a node to an accepted report (liveness, devices digest, presence day)."""
    _UPDATE_NODE.run(conn, report)


def set_node(conn: Connection, node_id: str, **values: Any) -> None:
    node_t = table("node")
    conn.execute(sa.update(node_t).where(node_t.c.node_id == node_id).values(**values))


def node_exists(conn: Connection, node_id: str) -> bool:
    node_t = table("node")
    return (
        conn.execute(sa.select(node_t.c.node_id).where(node_t.c.node_id == node_id)).first()
        is not None
    )


def new_node(conn: Connection, node_id: str, site_id: str, first_seen: str, **values: Any) -> None:
    conn.execute(
        sa.insert(table("node")).values(
            node_id=node_id,
            site_id=site_id,
            first_seen=first_seen,
            devices_digest="",
            decommissioned_on=None,
            agent_version="",
            **values,
        )
    )


def liveness(conn: Connection) -> dict[str, tuple[int, str, str]]:
    """node id -> (last_seq, last_seen, agent_version)."""
    node_t = table("node")
    rows = conn.execute(
        sa.select(node_t.c.node_id, node_t.c.last_seq, node_t.c.last_seen, node_t.c.agent_version)
    )
    return {r[0]: (int(r[1]), r[2], r[3]) for r in rows}


# -- devices and lines ------------------------------------------------------------------------
_DEVICE_COLUMNS = (
    "node_id",
    "uuid",
    "site_id",
    "model",
    "pci_device_id",
    "name",
    "tpp",
    "eccn_class",
    "agent_tpp",
    "tpp_mismatch",
    "state",
    "first_seen",
    "gone_on",
    "vanished",
)
_DEVICES = HotSql(f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM device WHERE node_id = :node_id")  # noqa: S608 (constant)
_UPSERT_DEVICE = HotSql(
    f"INSERT INTO device ({', '.join(_DEVICE_COLUMNS)}) "  # noqa: S608 (constant)
    f"VALUES ({', '.join(':' + c for c in _DEVICE_COLUMNS)}) "
    "ON CONFLICT (node_id, uuid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_COLUMNS[2:])
)
_ADD_LINE = HotSql(
    "INSERT INTO inventory_line "
    "(key, site_id, model, tpp, eccn_class, installed, removed, count, version) "
    "VALUES (:key, :site_id, :model, :tpp, :eccn_class, :installed, :removed, :count, :version) "
    "ON CONFLICT (key) DO UPDATE SET count = inventory_line.count + excluded.count, "
    "version = excluded.version"
)


def devices(conn: Connection, node_id: str) -> dict[str, DeviceRow]:
    """A node's device rows by UUID."""
    out = {}
    for r in _DEVICES.all(conn, {"node_id": node_id}):
        (node, uuid, site, model, pci, name, tpp, eccn, agent_tpp, mismatch, state) = r[:11]
        facts = DeviceFacts(
            uuid=uuid,
            pci_device_id=pci,
            name=name,
            state=state,
            model=model,
            tpp=tpp,
            eccn_class=eccn,
            agent_tpp=agent_tpp,
            tpp_mismatch=bool(mismatch),  # SQLite answers 0/1
        )
        out[uuid] = DeviceRow(node, site, facts, r[11], r[12], bool(r[13]))
    return out


def write_devices(conn: Connection, change: Change) -> None:
    """Upsert the changed device rows (one prepared statement, executemany)."""
    _UPSERT_DEVICE.many(
        conn,
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


def write_lines(conn: Connection, change: Change, version: int) -> None:
    """Add the change's line deltas; rows carry the version this transaction commits and none
    is deleted (a line at count 0 stays as a tombstone, see `InventoryLine`)."""
    rows = [
        {
            "key": spec.key,
            "site_id": spec.site_id,
            "model": spec.model,
            "tpp": spec.tpp,
            "eccn_class": spec.eccn_class,
            "installed": spec.installed,
            "removed": spec.removed or None,
            "count": delta,
            "version": version,
        }
        for spec, delta in sorted(change.line_deltas.items())
    ]
    if rows:
        _ADD_LINE.many(conn, rows)


def clear_projections(conn: Connection, version: int) -> None:
    """Empty `node`, `device` and `registry`; zero every line at `version` (tombstones, so that
    a reader holding an older version re-reads them and sees what went away)."""
    for name in ("device", "node", "registry"):
        conn.execute(sa.delete(table(name)))
    conn.execute(sa.update(table("inventory_line")).values(count=0, version=version))


# -- registry ---------------------------------------------------------------------------------
def lock_state(conn: Connection) -> None:
    """Lock `ledger_state` until commit (PostgreSQL), for writes that must not interleave."""
    _LOCK_STATE.one(conn)


def registry(conn: Connection) -> RegistryRow | None:
    reg_t = table("registry")
    row = conn.execute(sa.select(reg_t.c.digest, reg_t.c.doc, reg_t.c.origin)).first()
    return None if row is None else RegistryRow(*row)


def registry_digest(conn: Connection) -> str | None:
    row = _REGISTRY_DIGEST.one(conn)
    return None if row is None else str(row[0])


def replace_registry(conn: Connection, digest: str, doc: str, origin: str, loaded_at: str) -> None:
    reg_t = table("registry")
    conn.execute(sa.delete(reg_t))
    conn.execute(
        sa.insert(reg_t).values(id=1, digest=digest, doc=doc, origin=origin, loaded_at=loaded_at)
    )
