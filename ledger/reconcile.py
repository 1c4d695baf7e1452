"""Reconciliation: what the ledger's projections say is wrong or unexplained.

Kinds (also the `findings` metric labels, listed in `exporters.snapshots.FINDING_KINDS`):
duplicate_uuid (one GPU UUID present on two nodes or sites: possible diversion), vanished_device
(a device gone without a decommission), stale_node (silent past the stale threshold),
unknown_accelerator (the catalogue does not know it, so it is not counted), tpp_mismatch (the
agent's TPP or model disagrees with the catalogue), declared_vs_observed (a site has both declared
inventory lines and reporting agents, with the counts, so that an operator can check nothing is
counted twice). The rows behind each kind are read by `db`; this module builds the answer.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet
from gpucap.exporters.snapshots import FINDING_KINDS
from gpucap.ledger import db
from gpucap.ledger.settings import iso_instant

KINDS = FINDING_KINDS
MAX_ITEMS = 1000  # per kind in the API answer; `counts` always holds the full numbers


def stale_cutoff(now: datetime, stale_after_s: float) -> str:
    return iso_instant(now - timedelta(seconds=stale_after_s))


def findings(
    conn: Connection, registry: Fleet, now: datetime, stale_after_s: float, as_of: date
) -> dict[str, Any]:
    """Every finding kind with its count and up to MAX_ITEMS items."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    counts: dict[str, int] = {}

    by_uuid: dict[str, list[dict[str, str]]] = {}
    for r in db.duplicate_uuids(conn):
        by_uuid.setdefault(r.uuid, []).append({"node": r.node_id, "site": r.site_id})
    out["duplicate_uuid"] = [{"uuid": u, "seen_on": v} for u, v in by_uuid.items()]
    counts["duplicate_uuid"] = len(by_uuid)

    counts["vanished_device"], out["vanished_device"] = db.vanished_devices(conn, MAX_ITEMS)
    counts["unknown_accelerator"], out["unknown_accelerator"] = db.unknown_devices(conn, MAX_ITEMS)
    counts["tpp_mismatch"], out["tpp_mismatch"] = db.tpp_mismatch_devices(conn, MAX_ITEMS)

    cutoff = stale_cutoff(now, stale_after_s)
    counts["stale_node"], stale = db.stale_nodes(conn, cutoff, MAX_ITEMS)
    out["stale_node"] = [
        {"node": r.node_id, "site": r.site_id, "last_seen": r.last_seen} for r in stale
    ]

    declared: dict[str, int] = {}
    for ln in registry.lines:
        if ln.installed <= as_of and (ln.removed is None or ln.removed > as_of):
            declared[ln.site] = declared.get(ln.site, 0) + ln.count
    observed = db.present_counts(conn, list(declared))
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
    return db.live_node_counts(conn, stale_cutoff(now, stale_after_s))


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
