"""Reconciliation: what the ledger's projections say is wrong or unexplained.

Kinds (also the `findings` metric labels, listed in `exporters.snapshots.FINDING_KINDS`):
duplicate_uuid (one GPU UUID present on two nodes or sites: possible diversion), vanished_device
(a device gone without a decommission), stale_node (silent past the stale threshold),
unknown_accelerator (the catalogue does not know it, so it is not counted), tpp_mismatch (the
agent's TPP or model disagrees with the catalogue), declared_vs_observed (a site has both declared
inventory lines and reporting agents, with the counts, so that an operator can check nothing is
counted twice), shipment_missing (a shipped serial never reported at its shipment's site more
than the grace days after `shipped`), shipment_elsewhere (a shipped serial present at another
site: it is not covered there), unexpected_device (a present device of a class a destination
licence rule of an evaluated pack needs at its site's country on the date, whose serial is in no
shipment and whose line names no licence). The rows behind each kind are read by `db`; this
module builds the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.fleet import Fleet, Shipment
from gpucap.core.ruleset import DestinationLicence, RulePack
from gpucap.core.siteparts import needs_destination_licence
from gpucap.exporters.snapshots import FINDING_KINDS
from gpucap.ledger import db
from gpucap.ledger.settings import iso_instant

KINDS = FINDING_KINDS
MAX_ITEMS = 1000  # per kind in the API answer; `counts` always holds the full numbers


def stale_cutoff(now: datetime, stale_after_s: float) -> str:
    return iso_instant(now - timedelta(seconds=stale_after_s))


def findings(
    conn: Connection,
    registry: Fleet,
    now: datetime,
    stale_after_s: float,
    as_of: date,
    packs: Sequence[RulePack] = (),
    grace_days: int = 30,
) -> dict[str, Any]:
    """Every finding kind with its count and up to MAX_ITEMS items (`packs`: those evaluated,
    whose destination licence rules say which devices need a licence)."""
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
    _shipments(conn, registry, as_of, grace_days, packs, out, counts)
    return {"as_of": as_of.isoformat(), "counts": counts, "findings": out}


def _shipments(
    conn: Connection,
    registry: Fleet,
    as_of: date,
    grace_days: int,
    packs: Sequence[RulePack],
    out: dict[str, list[dict[str, Any]]],
    counts: dict[str, int],
) -> None:
    """shipment_missing, shipment_elsewhere and unexpected_device: reads the devices of the
    shipped serials (by the serial index) and the unlicensed devices at sites needing one."""
    shipment_of: dict[str, Shipment] = {s: sh for sh in registry.shipments for s in sh.serials}
    places = db.devices_by_serial(conn, shipment_of)
    reported = {(p.serial, p.site_id) for p in places}
    due = as_of - timedelta(days=grace_days)  # shipped before this and unreported: missing
    missing = [
        _item(serial, sh, site=sh.site, shipped=sh.shipped.isoformat())
        for sh in registry.shipments
        if sh.shipped < due
        for serial in sh.serials
        if (serial, sh.site) not in reported
    ]
    elsewhere = [
        (p, shipment_of[p.serial])
        for p in places
        if p.present and p.site_id != shipment_of[p.serial].site
    ]
    counts["shipment_missing"], out["shipment_missing"] = len(missing), missing[:MAX_ITEMS]
    counts["shipment_elsewhere"] = len(elsewhere)
    out["shipment_elsewhere"] = [
        _item(p.serial, sh, site=sh.site, reported_site=p.site_id, node=p.node_id)
        for p, sh in elsewhere[:MAX_ITEMS]
    ]
    need = needing_classes(registry, packs, as_of)
    # Present unlicensed devices at those sites whose serial is shipped are shipped elsewhere.
    shipped_here = [
        p
        for p, _ in elsewhere
        if p.licence is None and p.eccn_class in need.get(p.site_id, frozenset())
    ]
    count, items = db.unlicensed_devices(conn, need, MAX_ITEMS + len(shipped_here))
    counts["unexpected_device"] = count - len(shipped_here)
    out["unexpected_device"] = [i for i in items if i["serial"] not in shipment_of][:MAX_ITEMS]


def _item(serial: str, shipment: Shipment, **more: str) -> dict[str, str]:
    return {"serial": serial, "licence": shipment.licence, "shipment": shipment.id, **more}


def needing_classes(
    registry: Fleet, packs: Sequence[RulePack], as_of: date
) -> dict[str, frozenset[str]]:
    """site -> the classes a destination licence rule of `packs` needs a licence for there on
    `as_of` (sites needing none left out); the rule's country groups decide, per country."""
    out: dict[str, frozenset[str]] = {}
    for pack in packs:
        groups = pack.groups
        rules = [r for r in pack.rules if isinstance(r, DestinationLicence)]
        if groups is None or not rules:
            continue
        for rule in rules:
            codes = {s.country for s in registry.sites}
            needs = {c for c in codes if needs_destination_licence(rule, groups, c, as_of)}
            for site in registry.sites:
                if site.country in needs:
                    out[site.id] = out.get(site.id, frozenset()) | rule.classes.value
    return out


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
        elif kind == "shipment_elsewhere":  # either end may be the entity's; the other is hidden
            kept = [
                {
                    **i,
                    "site": i["site"] if i["site"] in sites else None,
                    "reported_site": i["reported_site"] if i["reported_site"] in sites else None,
                    "node": i["node"] if i["reported_site"] in sites else None,
                }
                for i in items
                if i["site"] in sites or i["reported_site"] in sites
            ]
        else:
            kept = [i for i in items if i.get("site_id", i.get("site")) in sites]
        out[kind] = kept
    return {**found, "counts": {k: len(v) for k, v in out.items()}, "findings": out}
