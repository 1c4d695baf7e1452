"""A site's lines reduced to what the engine needs on one date.

The engine's work per line (classing, date tests, TPP sums) is a function of one site's lines,
the site, the rule pack and the date, so it is done per site (`site_part`) and the rules only
add the sites' parts up (`checks.py`); after a change, the engine (`retally`) remakes only the
changed sites' parts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.ruleset import ConsigneeAnnual, CountryAllocation, RulePack

Tpp = int | Fraction  # an exact TPP figure: int when whole


def line_tpp(line: Line) -> Tpp:
    """Total TPP of a line, exact; an int when whole (much cheaper to add than a Fraction)."""
    per = line.tpp_per_device
    if per.denominator == 1:
        return per.numerator * line.count
    return per * line.count


@dataclass(frozen=True)
class SiteTotal:
    """What a site holds on the date: counted (controlled-class) TPP and devices, and the rest."""

    id: str
    entity: str
    country: str
    treated_as: str | None
    tier: int
    installed_tpp: Fraction
    counted_devices: int
    other_devices: int


@dataclass(frozen=True)
class SitePart:
    """One site on the date: its total, its installed (active) counted TPP, and per rule of the
    pack the TPP the line-level rules count (`window_tpp`: per `CountryAllocation` rule, in pack
    order, before entity exemptions; `annual_tpp`: per `ConsigneeAnnual` rule, year -> TPP)."""

    total: SiteTotal
    active_tpp: Tpp
    window_tpp: tuple[Tpp, ...]
    annual_tpp: tuple[Mapping[int, Tpp], ...]


class Registry:
    """Indexes of a fleet's registry (entities, sites, tiers) on one date under one pack."""

    def __init__(self, fleet: Fleet, pack: RulePack, as_of: date) -> None:
        self.entities = {e.id: e for e in fleet.entities}
        # The line-level rules, in pack order (a site part's slots).
        self.allocations = [r for r in pack.rules if isinstance(r, CountryAllocation)]
        self.annuals = [r for r in pack.rules if isinstance(r, ConsigneeAnnual)]
        self.sites = {s.id: s for s in fleet.sites}
        # Tiers per country code, not per site: 150 look-ups instead of 10,000s.
        codes = {s.country for s in fleet.sites}
        resolved = {c: pack.tiers.resolve(c) for c in codes}
        tiers = {c: pack.tiers.tier(c, as_of) for c in codes}
        self.country = {s.id: resolved[s.country] for s in fleet.sites}
        self.tier = {s.id: tiers[s.country] for s in fleet.sites}
        self.site_entity: dict[str, Entity] = {s.id: self.entities[s.entity] for s in fleet.sites}
        self.sites_by_entity: dict[str, list[Site]] = defaultdict(list)
        self.sites_by_country: dict[str, list[Site]] = defaultdict(list)
        for site in fleet.sites:
            self.sites_by_entity[site.entity].append(site)
            self.sites_by_country[self.country[site.id]].append(site)
        self.countries_by_tier: dict[int, list[str]] = {}
        for tier in set(tiers.values()):
            ids = (s.id for s in fleet.sites if self.tier[s.id] == tier)
            self.countries_by_tier[tier] = sorted({self.country[i] for i in ids})


def site_part(
    site: Site, lines: Sequence[Line], pack: RulePack, as_of: date, registry: Registry
) -> SitePart:
    """Reduce one site's lines on `as_of` (lines installed later do not count at all)."""
    counted_classes = pack.counted_classes
    allocations, annuals = registry.allocations, registry.annuals
    active: Tpp = 0
    counted_devices = other_devices = 0
    window: list[Tpp] = [0] * len(allocations)
    annual: list[dict[int, Tpp]] = [{} for _ in annuals]
    for ln in lines:
        if ln.installed > as_of:
            continue
        present = ln.removed is None or ln.removed > as_of
        if ln.eccn_class not in counted_classes:
            other_devices += ln.count if present else 0
            continue
        tpp = line_tpp(ln)
        if present:
            active += tpp
            counted_devices += ln.count
        for i, alloc in enumerate(allocations):
            # Removal does not give allocation back: removed lines count too (exports).
            in_window = alloc.window_start <= ln.installed <= alloc.window_end
            if in_window and ln.basis not in alloc.exempt_bases:
                window[i] += tpp
        for i, rule in enumerate(annuals):
            if ln.basis == rule.basis:
                year = ln.installed.year
                annual[i][year] = annual[i].get(year, 0) + tpp
    country = registry.country[site.id]
    total = SiteTotal(
        id=site.id,
        entity=site.entity,
        country=site.country,
        treated_as=country if country != site.country else None,
        tier=registry.tier[site.id],
        installed_tpp=Fraction(active),
        counted_devices=counted_devices,
        other_devices=other_devices,
    )
    return SitePart(total, active, tuple(window), tuple(annual))


def lines_by_site(lines: Sequence[Line]) -> dict[str, list[Line]]:
    """A fleet's lines grouped by site, in their order."""
    out: dict[str, list[Line]] = {}
    for ln in lines:
        group = out.get(ln.site)
        if group is None:
            out[ln.site] = [ln]
        else:
            group.append(ln)
    return out
