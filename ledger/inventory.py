"""`GET /v1/inventory` and `GET /v1/nodes`: observed devices per site, and each node's liveness
(the last seq the ledger accepted and when), as the projections hold them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet
from gpucap.ledger.reconcile import stale_cutoff
from gpucap.ledger.tables import table

MAX_DEVICES = 10000  # per answer; `devices_total` always holds the full number


def inventory_view(
    conn: Connection, fleet: Fleet, site: str | None, entity: str | None
) -> dict[str, Any]:
    """One site's devices and lines, or (no site) per-site counts of present devices."""
    dev = table("device")
    line = table("inventory_line")
    if site is None:
        sites = {s.id for s in fleet.sites if entity is None or s.entity == entity}
        rows = conn.execute(
            sa.select(dev.c.site_id, sa.func.count(), sa.func.coalesce(sa.func.sum(dev.c.tpp), 0))
            .where(dev.c.gone_on.is_(None))
            .group_by(dev.c.site_id)
            .order_by(dev.c.site_id)
        ).all()
        return {
            "sites": [
                {"site": r[0], "devices": int(r[1]), "tpp": int(r[2])}
                for r in rows
                if r[0] in sites
            ]
        }
    total = conn.execute(
        sa.select(sa.func.count()).select_from(dev).where(dev.c.site_id == site)
    ).scalar_one()
    devices = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(dev)
            .where(dev.c.site_id == site)
            .order_by(dev.c.node_id, dev.c.uuid)
            .limit(MAX_DEVICES)
        )
    ]
    lines = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(line).where(line.c.site_id == site, line.c.count > 0).order_by(line.c.key)
        )
    ]
    for ln in lines:
        ln.pop("key", None)
        ln.pop("version", None)
    return {"site": site, "devices_total": int(total), "devices": devices, "lines": lines}


MAX_NODES = 10000  # per answer; `nodes_total` always holds the full number


def nodes_view(
    conn: Connection,
    fleet: Fleet,
    site: str | None,
    entity: str | None,
    now: datetime,
    stale_after_s: float,
) -> dict[str, Any]:
    """Every visible node (or one site's) with its last accepted seq, first and last contact."""
    node = table("node")
    visible = [s.id for s in fleet.sites if entity is None or s.entity == entity]
    sites = [site] if site is not None else visible
    where = node.c.site_id.in_(sites)
    total = conn.execute(sa.select(sa.func.count()).select_from(node).where(where)).scalar_one()
    cutoff = stale_cutoff(now, stale_after_s)
    rows = conn.execute(
        sa.select(
            node.c.node_id,
            node.c.site_id,
            node.c.last_seq,
            node.c.first_seen,
            node.c.last_seen,
            node.c.decommissioned_on,
            node.c.agent_version,
        )
        .where(where)
        .order_by(node.c.node_id)
        .limit(MAX_NODES)
    ).all()
    return {
        "nodes_total": int(total),
        "nodes": [
            {
                "node": r.node_id,
                "site": r.site_id,
                "last_seq": int(r.last_seq),
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
                "stale": r.decommissioned_on is None and r.last_seen < cutoff,
                "decommissioned_on": r.decommissioned_on,
                "agent_version": r.agent_version,
            }
            for r in rows
        ],
    }
