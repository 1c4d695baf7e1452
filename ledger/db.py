"""Every statement on the ledger's own tables but the log's: `node`, `device`, `inventory_line`,
`registry`, `token` and the `ledger_state` reads, with typed rows out.

The decisions (is this a heartbeat, a duplicate, a refusal, which finding, which answer) belong
to the callers: the write path (`ingest`), the replay, the read models (`inventory`,
`reconcile`, `linecache`) and `tokens`. This module only reads and writes rows inside the
transaction the caller passes in. The log's tables (`log_entry`, `tree_node`, `checkpoint`,
`log_state`) belong to `log`; the engines and the `ledger_state` counters to `store`. It runs
past 400 lines because it is the one place every such statement lives, grouped by table.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.ledger.fold import Change, DeviceFacts, DeviceRow, line_row
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
    "serial",
    "licence",
)
_DEVICES = HotSql(f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM device WHERE node_id = :node_id")  # noqa: S608 (constant)
_IN_CHUNK = 5000  # values per IN list (SQLite binds at most 32,766 parameters)
_UPSERT_DEVICE = HotSql(
    f"INSERT INTO device ({', '.join(_DEVICE_COLUMNS)}) "  # noqa: S608 (constant)
    f"VALUES ({', '.join(':' + c for c in _DEVICE_COLUMNS)}) "
    "ON CONFLICT (node_id, uuid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_COLUMNS[2:])
)
_ADD_LINE = HotSql(
    "INSERT INTO inventory_line "
    "(key, site_id, model, tpp, eccn_class, installed, removed, licence, count, version) "
    "VALUES (:key, :site_id, :model, :tpp, :eccn_class, :installed, :removed, :licence, :count, "
    ":version) "
    "ON CONFLICT (key) DO UPDATE SET count = inventory_line.count + excluded.count, "
    "version = excluded.version"
)


def _device_row(r: Sequence[Any]) -> DeviceRow:
    """A row of `_DEVICE_COLUMNS` as a DeviceRow."""
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
        serial=r[14],
    )
    return DeviceRow(node, site, facts, r[11], r[12], bool(r[13]), r[15])


def devices(conn: Connection, node_id: str) -> dict[str, DeviceRow]:
    """A node's device rows by UUID."""
    out = {}
    for r in _DEVICES.all(conn, {"node_id": node_id}):
        row = _device_row(r)
        out[row.facts.uuid] = row
    return out


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    ordered = sorted(set(values))
    for i in range(0, len(ordered), _IN_CHUNK):
        yield ordered[i : i + _IN_CHUNK]


def devices_with_serials(conn: Connection, serials: Collection[str]) -> list[DeviceRow]:
    """Every device row (present or gone) whose serial is one of `serials` (indexed), by node
    and UUID: the rows a registry change re-keys."""
    dev = table("device")
    cols = [dev.c[c] for c in _DEVICE_COLUMNS]
    out: list[DeviceRow] = []
    for chunk in _chunks(serials):
        rows = conn.execute(sa.select(*cols).where(dev.c.serial.in_(chunk)))
        out += [_device_row(r) for r in rows]
    return sorted(out, key=lambda r: (r.node_id, r.facts.uuid))


def observed_serials(conn: Connection, serials: Collection[str]) -> dict[str, tuple[str, str]]:
    """serial -> (site, node) of the present devices with one of `serials` (by the serial
    index; a serial present on two rows answers the first by site and node). Available since
    migration 0005, for shipped-against-observed counts."""
    dev = table("device")
    out: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(serials):
        rows = conn.execute(
            sa.select(dev.c.serial, dev.c.site_id, dev.c.node_id)
            .where(dev.c.serial.in_(chunk), dev.c.gone_on.is_(None))
            .order_by(dev.c.serial, dev.c.site_id, dev.c.node_id)
        )
        for serial, site, node in rows:
            out.setdefault(str(serial), (str(site), str(node)))
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
                "serial": r.facts.serial,
                "licence": r.licence,
            }
            for r in change.rows
        ],
    )


def write_lines(conn: Connection, change: Change, version: int) -> None:
    """Add the change's line deltas; rows carry the version this transaction commits and none
    is deleted (a line at count 0 stays as a tombstone, see `InventoryLine`)."""
    rows = [
        {"key": spec.key, **line_row(spec, delta), "version": version}
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


def node_sites(conn: Connection, node_ids: Iterable[str]) -> dict[str, str]:
    """node id -> site id of the given nodes (those that exist)."""
    wanted = list(node_ids)
    if not wanted:
        return {}
    t = table("node")
    rows = conn.execute(sa.select(t.c.node_id, t.c.site_id).where(t.c.node_id.in_(wanted)))
    return {str(n): str(s) for n, s in rows}


# -- read models: GET /v1/inventory, GET /v1/nodes, reconciliation ----------------------------
class NodeSummary(NamedTuple):
    """A node as `GET /v1/nodes` lists it, with its present devices (`gone_on` NULL)."""

    node_id: str
    site_id: str
    last_seq: int
    first_seen: str
    last_seen: str
    decommissioned_on: str | None
    agent_version: str
    devices: int


class DevicePlace(NamedTuple):
    uuid: str
    node_id: str
    site_id: str


class StaleNode(NamedTuple):
    node_id: str
    site_id: str
    last_seen: str


def present_by_site(conn: Connection) -> list[tuple[str, int, int]]:
    """(site, present devices, their TPP) per site with any, by site."""
    dev = table("device")
    rows = conn.execute(
        sa.select(dev.c.site_id, sa.func.count(), sa.func.coalesce(sa.func.sum(dev.c.tpp), 0))
        .where(dev.c.gone_on.is_(None))
        .group_by(dev.c.site_id)
        .order_by(dev.c.site_id)
    ).all()
    return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def site_device_count(conn: Connection, site: str) -> int:
    """Every device row of a site, present or gone."""
    dev = table("device")
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(dev).where(dev.c.site_id == site)
        ).scalar_one()
    )


def site_devices(conn: Connection, site: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` of a site's device rows (every column), by node and UUID."""
    dev = table("device")
    return [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(dev)
            .where(dev.c.site_id == site)
            .order_by(dev.c.node_id, dev.c.uuid)
            .limit(limit)
        )
    ]


def site_lines(conn: Connection, site: str) -> list[dict[str, Any]]:
    """A site's inventory lines with devices (count > 0, every column), by key."""
    line = table("inventory_line")
    return [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(line).where(line.c.site_id == site, line.c.count > 0).order_by(line.c.key)
        )
    ]


def node_count(conn: Connection, sites: Sequence[str]) -> int:
    """The nodes at `sites`, decommissioned ones included."""
    node = table("node")
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(node).where(node.c.site_id.in_(sites))
        ).scalar_one()
    )


def node_summaries(conn: Connection, sites: Sequence[str], limit: int) -> list[NodeSummary]:
    """Up to `limit` of the nodes at `sites`, by node id, each with its present devices."""
    node = table("node")
    dev = table("device")
    # Present devices per node in one grouped subquery (a node's devices are at its site).
    present = (
        sa.select(dev.c.node_id, sa.func.count().label("devices"))
        .where(dev.c.gone_on.is_(None), dev.c.site_id.in_(sites))
        .group_by(dev.c.node_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(
            node.c.node_id,
            node.c.site_id,
            node.c.last_seq,
            node.c.first_seen,
            node.c.last_seen,
            node.c.decommissioned_on,
            node.c.agent_version,
            sa.func.coalesce(present.c.devices, 0).label("devices"),
        )
        .select_from(node.outerjoin(present, present.c.node_id == node.c.node_id))
        .where(node.c.site_id.in_(sites))
        .order_by(node.c.node_id)
        .limit(limit)
    ).all()
    return [NodeSummary(*r) for r in rows]


def duplicate_uuids(conn: Connection) -> list[DevicePlace]:
    """Every present device whose UUID is present on more than one row, by UUID and node."""
    dev = table("device")
    present = dev.c.gone_on.is_(None)
    dup = (
        sa.select(dev.c.uuid)
        .where(present)
        .group_by(dev.c.uuid)
        .having(sa.func.count() > 1)
        .subquery()
    )
    rows = conn.execute(
        sa.select(dev.c.uuid, dev.c.node_id, dev.c.site_id)
        .where(present, dev.c.uuid.in_(sa.select(dup.c.uuid)))
        .order_by(dev.c.uuid, dev.c.node_id)
    ).all()
    return [DevicePlace(*r) for r in rows]


def _device_finding(
    conn: Connection, where: Any, extra: tuple[str, ...], limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """(how many devices match `where`, up to `limit` of them by node and UUID: node_id,
    site_id, uuid, name, pci_device_id and the `extra` columns)."""
    dev = table("device")
    count = int(conn.execute(sa.select(sa.func.count()).select_from(dev).where(where)).scalar_one())
    cols = [dev.c.node_id, dev.c.site_id, dev.c.uuid, dev.c.name, dev.c.pci_device_id]
    cols += [dev.c[c] for c in extra]
    rows = conn.execute(
        sa.select(*cols).where(where).order_by(dev.c.node_id, dev.c.uuid).limit(limit)
    )
    return count, [dict(r._mapping) for r in rows]


def vanished_devices(conn: Connection, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Devices gone without a decommission: (count, up to `limit` with `gone_on`)."""
    dev = table("device")
    return _device_finding(conn, dev.c.vanished.is_(True), ("gone_on",), limit)


def unknown_devices(conn: Connection, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Present devices the catalogue does not know (no model): (count, up to `limit`)."""
    dev = table("device")
    return _device_finding(conn, sa.and_(dev.c.gone_on.is_(None), dev.c.model.is_(None)), (), limit)


def tpp_mismatch_devices(conn: Connection, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Present devices whose agent's TPP or model disagrees with the catalogue: (count, up to
    `limit` with model, tpp and agent_tpp)."""
    dev = table("device")
    where = sa.and_(dev.c.gone_on.is_(None), dev.c.tpp_mismatch.is_(True))
    return _device_finding(conn, where, ("model", "tpp", "agent_tpp"), limit)


class SerialPlace(NamedTuple):
    serial: str
    node_id: str
    site_id: str
    present: bool
    eccn_class: str | None
    licence: str | None


def devices_by_serial(conn: Connection, serials: Collection[str]) -> list[SerialPlace]:
    """Every device row (present or gone) with one of `serials`, by serial, node and UUID."""
    dev = table("device")
    out: list[tuple[str, str, SerialPlace]] = []
    for chunk in _chunks(serials):
        rows = conn.execute(
            sa.select(
                dev.c.serial,
                dev.c.node_id,
                dev.c.site_id,
                dev.c.gone_on,
                dev.c.eccn_class,
                dev.c.licence,
                dev.c.uuid,
            ).where(dev.c.serial.in_(chunk))
        )
        for serial, node, site, gone_on, cls, licence, uuid in rows:
            out.append(
                (serial, uuid, SerialPlace(serial, node, site, gone_on is None, cls, licence))
            )
    out.sort(key=lambda t: (t[0], t[2].node_id, t[1]))
    return [t[2] for t in out]


def unlicensed_devices(
    conn: Connection, classes_by_site: Mapping[str, frozenset[str]], limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """Present devices without a licence at the given sites, of the classes given per site:
    (count, up to `limit` by node and UUID, with serial, model and eccn_class)."""
    dev = table("device")
    groups: dict[frozenset[str], list[str]] = {}
    for site, classes in classes_by_site.items():
        if classes:
            groups.setdefault(classes, []).append(site)
    count = 0
    items: list[dict[str, Any]] = []
    base = sa.and_(dev.c.gone_on.is_(None), dev.c.licence.is_(None))
    for classes, sites in groups.items():
        for chunk in _chunks(sites):
            where = sa.and_(base, dev.c.site_id.in_(chunk), dev.c.eccn_class.in_(sorted(classes)))
            n, found = _device_finding(conn, where, ("serial", "model", "eccn_class"), limit)
            count += n
            items += found
    items.sort(key=lambda i: (i["node_id"], i["uuid"]))
    return count, items[:limit]


def stale_nodes(conn: Connection, cutoff: str, limit: int) -> tuple[int, list[StaleNode]]:
    """Live nodes last seen before `cutoff` (an instant): (count, up to `limit` by node id)."""
    node = table("node")
    stale = sa.and_(node.c.decommissioned_on.is_(None), node.c.last_seen < cutoff)
    count = int(
        conn.execute(sa.select(sa.func.count()).select_from(node).where(stale)).scalar_one()
    )
    rows = conn.execute(
        sa.select(node.c.node_id, node.c.site_id, node.c.last_seen)
        .where(stale)
        .order_by(node.c.node_id)
        .limit(limit)
    )
    return count, [StaleNode(*r) for r in rows]


def present_counts(conn: Connection, sites: Sequence[str]) -> dict[str, int]:
    """site -> present devices, of those of `sites` that have any."""
    dev = table("device")
    rows = conn.execute(
        sa.select(dev.c.site_id, sa.func.count())
        .where(dev.c.gone_on.is_(None), dev.c.site_id.in_(sites))
        .group_by(dev.c.site_id)
    ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def live_node_counts(conn: Connection, cutoff: str) -> dict[tuple[str, str], int]:
    """(site, fresh|stale) -> live (not decommissioned) nodes; stale: last seen before
    `cutoff` (an instant)."""
    node = table("node")
    freshness = sa.case((node.c.last_seen < cutoff, "stale"), else_="fresh")
    rows = conn.execute(
        sa.select(node.c.site_id, freshness, sa.func.count())
        .where(node.c.decommissioned_on.is_(None))
        .group_by(node.c.site_id, freshness)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


# -- inventory lines, for the line cache ------------------------------------------------------
_LINES_SQL = (
    "SELECT key, site_id, model, tpp, eccn_class, installed, removed, count, licence "
    "FROM inventory_line"
)
_ALL_LINES_SQL = _LINES_SQL + " WHERE count > 0"
_LINES_SINCE_SQL = _LINES_SQL + " WHERE version > "
_VERSION_SQL = "SELECT projection_version FROM ledger_state WHERE id = 1"


class LineRows(NamedTuple):
    """The projection version of a snapshot and the `inventory_line` rows read at it, each
    (key, site_id, model, tpp, eccn_class, installed, removed, count, licence): every line
    with devices when `full`, else those written after the base version (none when it is the
    base)."""

    version: int
    full: bool
    rows: Sequence[Any]


def lines_since(conn: Connection, base_version: int | None) -> LineRows:
    """The lines of `conn`'s snapshot: every one (no base, or a base newer than the database)
    or the rows written after `base_version`, none read when the snapshot is at the base. On
    the driver's own cursor: the line cache's read is hot."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # a Connection inside a transaction always holds one
    cur = dbapi.cursor()
    try:
        cur.execute(_VERSION_SQL)
        version = int(cur.fetchone()[0])  # type: ignore[index]  # the state row always exists
        if base_version is not None and base_version == version:
            return LineRows(version, False, [])
        if base_version is None or base_version > version:
            cur.execute(_ALL_LINES_SQL)
            return LineRows(version, True, cur.fetchall())
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        cur.execute(_LINES_SINCE_SQL + mark, (base_version,))
        return LineRows(version, False, cur.fetchall())
    finally:
        cur.close()


# -- the replay's comparison ------------------------------------------------------------------
def projection_rows(conn: Connection, name: str) -> Iterator[dict[str, Any]]:
    """Every row of projection table `name` (lines: those with devices), as column -> value."""
    t = table(name)
    query = sa.select(t)
    if name == "inventory_line":
        query = query.where(t.c.count > 0)
    for r in conn.execute(query):
        yield dict(r._mapping)


# -- tokens -----------------------------------------------------------------------------------
class TokenRow(NamedTuple):
    """A `token` row (an auditor's name is kept in `operator`)."""

    id: str
    kind: str
    node_id: str | None
    site_id: str | None
    operator: str | None
    entity: str | None
    token_sha256: str
    created_at: str
    revoked_at: str | None
    expires_at: str | None = None  # an `iso_instant`; None: never expires
    label: str | None = None


def insert_token(conn: Connection, token: TokenRow) -> None:
    conn.execute(sa.insert(table("token")).values(**token._asdict()))


def unrevoked_token(conn: Connection, token_id: str) -> TokenRow | None:
    token_t = table("token")
    row = conn.execute(
        sa.select(token_t).where(token_t.c.id == token_id, token_t.c.revoked_at.is_(None))
    ).first()
    return None if row is None else TokenRow(**row._mapping)


def revoke_token(conn: Connection, token_id: str, revoked_at: str) -> bool:
    """Mark a token revoked; False when it is unknown or already revoked."""
    token_t = table("token")
    revoked = conn.execute(
        sa.update(token_t)
        .where(token_t.c.id == token_id, token_t.c.revoked_at.is_(None))
        .values(revoked_at=revoked_at)
    ).rowcount
    return bool(revoked)


def unrevoked_node_tokens(conn: Connection, node_id: str) -> list[TokenRow]:
    """The node's unrevoked node tokens (expired ones too), oldest first (ties by id)."""
    token_t = table("token")
    rows = conn.execute(
        sa.select(token_t)
        .where(
            token_t.c.kind == "node",
            token_t.c.node_id == node_id,
            token_t.c.revoked_at.is_(None),
        )
        .order_by(token_t.c.created_at, token_t.c.id)
    )
    return [TokenRow(**r._mapping) for r in rows]


def revoked_token_ids(conn: Connection) -> frozenset[str]:
    token_t = table("token")
    return frozenset(
        conn.execute(sa.select(token_t.c.id).where(token_t.c.revoked_at.is_not(None))).scalars()
    )


def tokens(conn: Connection) -> list[TokenRow]:
    """Every issued token, oldest first (ties by id)."""
    token_t = table("token")
    rows = conn.execute(sa.select(token_t).order_by(token_t.c.created_at, token_t.c.id))
    return [TokenRow(**r._mapping) for r in rows]
