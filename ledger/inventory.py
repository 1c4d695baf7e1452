"""`GET /v1/inventory`: observed devices per site, as the projections hold them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet
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
