"""Reconciliation: what the ledger's projections say is wrong or unexplained.

Kinds (also the `findings` metric labels, listed in `exporters.snapshots.FINDING_KINDS`):
duplicate_uuid (one GPU UUID present on two nodes or sites: possible diversion), vanished_device
(a device gone without a decommission), stale_node (silent past the stale threshold),
unknown_accelerator (the catalogue does not know it, so it is not counted), tpp_mismatch (the
agent's TPP or model disagrees with the catalogue), declared_vs_observed (a site has both declared
inventory lines and reporting agents, with the counts, so that an operator can check nothing is
counted twice).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet
from gpucap.exporters.snapshots import FINDING_KINDS
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.tables import table

KINDS = FINDING_KINDS
MAX_ITEMS = 1000  # per kind in the API answer; `counts` always holds the full numbers


def stale_cutoff(now: datetime, stale_after_s: float) -> str:
    return iso_instant(now - timedelta(seconds=stale_after_s))


def findings(
    conn: Connection, registry: Fleet, now: datetime, stale_after_s: float, as_of: date
) -> dict[str, Any]:
    """Every finding kind with its count and up to MAX_ITEMS items."""
    dev = table("device")
    node = table("node")
    present = dev.c.gone_on.is_(None)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    counts: dict[str, int] = {}

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
    by_uuid: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_uuid.setdefault(r.uuid, []).append({"node": r.node_id, "site": r.site_id})
    out["duplicate_uuid"] = [{"uuid": u, "seen_on": v} for u, v in by_uuid.items()]
    counts["duplicate_uuid"] = len(by_uuid)

    def device_items(kind: str, where: Any, extra: tuple[str, ...] = ()) -> None:
        counts[kind] = int(
            conn.execute(sa.select(sa.func.count()).select_from(dev).where(where)).scalar_one()
        )
        cols = [dev.c.node_id, dev.c.site_id, dev.c.uuid, dev.c.name, dev.c.pci_device_id]
        cols += [dev.c[c] for c in extra]
        for r in conn.execute(
            sa.select(*cols).where(where).order_by(dev.c.node_id, dev.c.uuid).limit(MAX_ITEMS)
        ):
            out[kind].append(dict(r._mapping))

    device_items("vanished_device", dev.c.vanished.is_(True), ("gone_on",))
    device_items("unknown_accelerator", sa.and_(present, dev.c.model.is_(None)))
    device_items(
        "tpp_mismatch",
        sa.and_(present, dev.c.tpp_mismatch.is_(True)),
        ("model", "tpp", "agent_tpp"),
    )

    cutoff = stale_cutoff(now, stale_after_s)
    stale = sa.and_(node.c.decommissioned_on.is_(None), node.c.last_seen < cutoff)
    counts["stale_node"] = int(
        conn.execute(sa.select(sa.func.count()).select_from(node).where(stale)).scalar_one()
    )
    for r in conn.execute(
        sa.select(node.c.node_id, node.c.site_id, node.c.last_seen)
        .where(stale)
        .order_by(node.c.node_id)
        .limit(MAX_ITEMS)
    ):
        out["stale_node"].append({"node": r.node_id, "site": r.site_id, "last_seen": r.last_seen})

    declared: dict[str, int] = {}
    for ln in registry.lines:
        if ln.installed <= as_of and (ln.removed is None or ln.removed > as_of):
            declared[ln.site] = declared.get(ln.site, 0) + ln.count
    observed: dict[str, int] = dict(
        conn.execute(
            sa.select(dev.c.site_id, sa.func.count())
            .where(present, dev.c.site_id.in_(list(declared)))
            .group_by(dev.c.site_id)
        ).all()
    )
    out["declared_vs_observed"] = [
        {"site": s, "declared": declared[s], "observed": int(observed[s])}
        for s in sorted(declared)
        if observed.get(s)
    ]
    counts["declared_vs_observed"] = len(out["declared_vs_observed"])
    return {"as_of": as_of.isoformat(), "counts": counts, "findings": out}


def node_counts(
    conn: Connection, now: datetime, stale_after_s: float
) -> dict[tuple[str, str], int]:
    """(site, fresh|stale) -> number of live (not decommissioned) nodes, for the metrics."""
    node = table("node")
    cutoff = stale_cutoff(now, stale_after_s)
    freshness = sa.case((node.c.last_seen < cutoff, "stale"), else_="fresh")
    rows = conn.execute(
        sa.select(node.c.site_id, freshness, sa.func.count())
        .where(node.c.decommissioned_on.is_(None))
        .group_by(node.c.site_id, freshness)
    ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def restrict(found: dict[str, Any], sites: set[str]) -> dict[str, Any]:
    """The findings limited to `sites` (for an entity-scoped operator); counts follow the items."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, items in found["findings"].items():
        if kind == "duplicate_uuid":
            kept = [i for i in items if any(s["site"] in sites for s in i["seen_on"])]
            kept = [{**i, "seen_on": [s for s in i["seen_on"] if s["site"] in sites]} for i in kept]
        else:
            kept = [i for i in items if i.get("site_id", i.get("site")) in sites]
        out[kind] = kept
    return {**found, "counts": {k: len(v) for k, v in out.items()}, "findings": out}
