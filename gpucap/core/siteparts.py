"""A site's lines reduced to what the engine needs on one date.

The engine's work per line (classing, date tests, TPP sums) is a function of one site's lines,
the site, the rule pack and the date, so it is done per site (`site_part`) and the rules only
add the sites' parts up (`checks.py`); after a change, the engine (`retally`) remakes only the
changed sites' parts.

Under a pack with licence rules, each line is also tested against the licence it names
(`Registry.licence_miss`): a covered device is licensed; one its licence does not cover counts
as unlicensed, with the reason, for the licence's check to list.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from fractions import Fraction

from gpucap.core.errors import DataError
from gpucap.core.fleet import Entity, Fleet, Licence, Line, Site
from gpucap.core.groups import CountryGroups
from gpucap.core.ruleset import (
    ConsigneeAnnual,
    CountryAllocation,
    DestinationLicence,
    HeadquartersControl,
    LicenceQuantity,
    ModelProhibition,
    RulePack,
)

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
    order, before entity exemptions; `annual_tpp`: per `ConsigneeAnnual` rule, year -> TPP).

    Licence rules (each tuple per rule of its kind, in pack order; devices present on the date):
    `destination`: (TPP no licence covers, devices) of the devices that needed a destination
    licence when installed; `headquarters`: (counted, tolerated) TPP of licensable devices no
    licence covers, installed on or after / before the tolerance date; `models`: (devices, TPP)
    of listed models. `licensed`: licence -> TPP it covers (removed devices too);
    `unlicensed`: (licence, reason) -> (devices, TPP) of lines naming a licence that does not
    cover them."""

    total: SiteTotal
    active_tpp: Tpp
    window_tpp: tuple[Tpp, ...]
    annual_tpp: tuple[Mapping[int, Tpp], ...]
    destination: tuple[tuple[Tpp, int], ...] = ()
    headquarters: tuple[tuple[Tpp, Tpp], ...] = ()
    models: tuple[tuple[int, Tpp], ...] = ()
    licensed: Mapping[str, Tpp] = field(default_factory=dict)
    unlicensed: Mapping[tuple[str, str], tuple[int, Tpp]] = field(default_factory=dict)


class Dated:
    """A yes/no about a country that changes only on given days (country-group changes)."""

    def __init__(self, days: tuple[date, ...], values: tuple[bool, ...], before: bool) -> None:
        self.days, self.values, self.before = days, values, before

    def on(self, day: date) -> bool:
        i = bisect_right(self.days, day) - 1
        return self.before if i < 0 else self.values[i]


def needs_destination_licence(
    rule: DestinationLicence, groups: CountryGroups, code: str, day: date
) -> bool:
    """Whether a device installed in `code` on `day` needs a licence under `rule`."""
    if any(groups.is_member(code, g, day) for g in rule.also):
        return True
    listed = any(groups.is_member(code, g, day) for g in rule.any_of)
    return listed and not any(groups.is_member(code, g, day) for g in rule.none_of)


def destination_dates(
    rule: DestinationLicence, groups: CountryGroups, code: str, as_of: date
) -> Dated:
    """`needs_destination_licence` for `code` as a function of the day, evaluated once per
    stretch between the days the rule's groups change."""
    days = tuple(sorted({d for g in rule.group_names for d in groups.changes(g)}))
    values = tuple(needs_destination_licence(rule, groups, code, d) for d in days)
    if not days:
        before = needs_destination_licence(rule, groups, code, as_of)
    elif days[0] == date.min:
        before = values[0]
    else:
        before = needs_destination_licence(rule, groups, code, days[0] - timedelta(days=1))
    return Dated(days, values, before)


class Registry:
    """Indexes of a fleet's registry (entities, sites, tiers) on one date under one pack."""

    def __init__(self, fleet: Fleet, pack: RulePack, as_of: date) -> None:
        self.as_of = as_of
        self.entities = {e.id: e for e in fleet.entities}
        # The line-level rules, in pack order (a site part's slots).
        self.allocations = [r for r in pack.rules if isinstance(r, CountryAllocation)]
        self.annuals = [r for r in pack.rules if isinstance(r, ConsigneeAnnual)]
        self.destinations = [r for r in pack.rules if isinstance(r, DestinationLicence)]
        self.headquarters = [r for r in pack.rules if isinstance(r, HeadquartersControl)]
        self.models = [r for r in pack.rules if isinstance(r, ModelProhibition)]
        # Lines are tested against their licences only under a pack with licence rules.
        self.licensing = bool(
            self.destinations
            or self.headquarters
            or any(isinstance(r, LicenceQuantity) for r in pack.rules)
        )
        self.licences: dict[str, Licence] = {lic.id: lic for lic in fleet.licences}
        self.licence_classes = pack.licence_classes.value if pack.licence_classes else frozenset()
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
        self.groups = pack.groups
        # Per destination rule: site -> whether its country needed a licence, by install day.
        self.destination_need: list[dict[str, Dated]] = []
        if self.destinations:
            if self.groups is None:
                raise DataError(pack.id, "a pack with destination rules needs country groups")
            for rule in self.destinations:
                by_code = {c: destination_dates(rule, self.groups, c, as_of) for c in codes}
                self.destination_need.append({s.id: by_code[s.country] for s in fleet.sites})

    def licence_miss(self, site: Site, line: Line) -> str | None:
        """Why the licence `line` names does not cover it (None: it does). A licence covers a
        device of its licensee's, at a site or in a country it names, installed within its
        validity, of one of its classes."""
        lic = self.licences.get(line.licence or "")
        if lic is None:
            return "no such licence"
        if lic.licensee != site.entity:
            return f"licensee is {lic.licensee}, not {site.entity}"
        if site.id not in lic.sites and site.country not in lic.countries:
            return f"site {site.id} ({site.country}) is not named by the licence"
        until = lic.valid_until
        if line.installed < lic.valid_from or (until is not None and line.installed > until):
            span = f"{lic.valid_from} to {until if until is not None else 'open'}"
            return f"installed {line.installed}, outside the licence's validity ({span})"
        classes = lic.classes if lic.classes is not None else self.licence_classes
        if line.eccn_class not in classes:
            return f"class {line.eccn_class} is not among the licence's classes"
        return None


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
    licensing = registry.licensing
    destinations = [
        (rule.classes.value, need[site.id])
        for rule, need in zip(registry.destinations, registry.destination_need, strict=True)
    ]
    hqs = [(r.classes.value, r.tolerated_before) for r in registry.headquarters]
    models = [r.models for r in registry.models]
    dest: list[list[Tpp]] = [[0, 0] for _ in destinations]
    hq: list[list[Tpp]] = [[0, 0] for _ in hqs]
    model: list[list[Tpp]] = [[0, 0] for _ in models]
    licensed: dict[str, Tpp] = {}
    unlicensed: dict[tuple[str, str], tuple[int, Tpp]] = {}
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
        if not licensing:
            continue
        covered = False
        if ln.licence is not None:
            miss = registry.licence_miss(site, ln)
            if miss is None:
                covered = True
                licensed[ln.licence] = licensed.get(ln.licence, 0) + tpp  # removed ones too
            else:
                key = (ln.licence, miss)
                devices, held = unlicensed.get(key, (0, 0))
                unlicensed[key] = (devices + ln.count, held + tpp)
        if not present:
            continue
        for i, (classes, need) in enumerate(destinations):
            if ln.eccn_class in classes and need.on(ln.installed):
                dest[i][0] += 0 if covered else tpp
                dest[i][1] += ln.count
        for i, (classes, tolerated_before) in enumerate(hqs):
            if ln.eccn_class in classes and not covered:
                hq[i][1 if ln.installed < tolerated_before else 0] += tpp
        for i, listed in enumerate(models):
            if ln.model in listed:
                model[i][0] += ln.count
                model[i][1] += tpp
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
    return SitePart(
        total,
        active,
        tuple(window),
        tuple(annual),
        tuple((d[0], int(d[1])) for d in dest),
        tuple((h[0], h[1]) for h in hq),
        tuple((int(m[0]), m[1]) for m in model),
        licensed,
        unlicensed,
    )


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
