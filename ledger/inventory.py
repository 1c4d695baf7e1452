"""`GET /v1/inventory` and `GET /v1/nodes`: observed devices per site, and each node's liveness
(the last seq the ledger accepted and when), as the projections hold them (read through `db`)."""

from __future__ import annotations

from datetime import date, datetime
from fractions import Fraction
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet, Line
from gpucap.core.report import tpp_number
from gpucap.ledger import db
from gpucap.ledger.reconcile import stale_cutoff

MAX_DEVICES = 10000  # per answer; `devices_total` always holds the full number


def inventory_view(
    conn: Connection, fleet: Fleet, site: str | None, entity: str | None
) -> dict[str, Any]:
    """One site's devices and lines, or (no site) per-site counts of present devices."""
    if site is None:
        sites = {s.id for s in fleet.sites if entity is None or s.entity == entity}
        return {
            "sites": [
                {"site": s, "devices": devices, "tpp": tpp}
                for s, devices, tpp in db.present_by_site(conn)
                if s in sites
            ]
        }
    total = db.site_device_count(conn, site)
    devices = db.site_devices(conn, site, MAX_DEVICES)
    lines = db.site_lines(conn, site)
    for ln in lines:
        ln.pop("key", None)
        ln.pop("version", None)
    return {"site": site, "devices_total": int(total), "devices": devices, "lines": lines}


def declared_view(
    fleet: Fleet, site: str | None, entity: str | None, as_of: date
) -> dict[str, Any]:
    """The registry's declared lines: one site's in full (with `present` on `as_of`), or per
    visible site the devices and TPP present on `as_of` (what headroom counts besides the
    observed devices)."""
    if site is not None:
        return {"declared": [declared_line(ln, as_of) for ln in fleet.lines if ln.site == site]}
    visible = {s.id for s in fleet.sites if entity is None or s.entity == entity}
    per_site: dict[str, tuple[int, Fraction]] = {}
    for ln in fleet.lines:
        if ln.site in visible and _present(ln, as_of):
            count, tpp = per_site.get(ln.site, (0, Fraction(0)))
            per_site[ln.site] = (count + ln.count, tpp + ln.tpp)
    return {"declared": {s: (n, tpp_number(t)) for s, (n, t) in per_site.items()}}


def _present(line: Line, as_of: date) -> bool:
    return line.installed <= as_of and (line.removed is None or line.removed > as_of)


def declared_line(line: Line, as_of: date) -> dict[str, Any]:
    return {
        "model": line.model,
        "count": line.count,
        "tpp_each": tpp_number(line.tpp_per_device),
        "tpp": tpp_number(line.tpp),
        "eccn_class": line.eccn_class,
        "installed": line.installed.isoformat(),
        "removed": None if line.removed is None else line.removed.isoformat(),
        "basis": line.basis,
        "present": _present(line, as_of),
    }


def merge(observed: dict[str, Any], declared: dict[str, Any], site: str | None) -> dict[str, Any]:
    """The inventory answer: observed devices (as `inventory_view` answers them) beside the
    declared lines."""
    if site is not None:
        return {**observed, "declared": declared["declared"]}
    rows = {r["site"]: {**r, "declared_devices": 0, "declared_tpp": 0} for r in observed["sites"]}
    for s, (count, tpp) in declared["declared"].items():
        row = rows.setdefault(s, {"site": s, "devices": 0, "tpp": 0})
        row["declared_devices"], row["declared_tpp"] = count, tpp
    return {"sites": [rows[s] for s in sorted(rows)]}


MAX_NODES = 10000  # per answer; `nodes_total` always holds the full number


def nodes_view(
    conn: Connection,
    fleet: Fleet,
    site: str | None,
    entity: str | None,
    now: datetime,
    stale_after_s: float,
) -> dict[str, Any]:
    """Every visible node (or one site's) with its last accepted seq, first and last contact,
    its state (`node_state`) and how many devices it has present (`gone_on` NULL)."""
    visible = [s.id for s in fleet.sites if entity is None or s.entity == entity]
    sites = [site] if site is not None else visible
    total = db.node_count(conn, sites)
    cutoff = stale_cutoff(now, stale_after_s)
    rows = db.node_summaries(conn, sites, MAX_NODES)
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
                "state": node_state(r.decommissioned_on, r.last_seen, cutoff),
                "decommissioned_on": r.decommissioned_on,
                "agent_version": r.agent_version,
                "devices": int(r.devices),
            }
            for r in rows
        ],
    }


def node_state(decommissioned_on: str | None, last_seen: str, cutoff: str) -> str:
    """`decommissioned`, else `stale` when last seen before `cutoff` (an instant), else `fresh`."""
    if decommissioned_on is not None:
        return "decommissioned"
    return "stale" if last_seen < cutoff else "fresh"
