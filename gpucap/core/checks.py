"""The checks each rule kind makes, from sums of the sites' parts over groups of sites.

A rule bound to one registry, date and pack (`bind`) names the groups it makes checks for (a
country, an entity, an entity in a country, a consignee's year), what each site adds to which
group (`terms`: group, component, TPP), and a group's checks from its sums (`checks`). The engine
adds every site up once, and after a change takes the changed sites' old terms off, adds their
new ones and remakes only those groups' checks: sums are exact (int and Fraction), so both ways
give the same checks. Headroom is in TPP and may be negative:
  cap            limit - used
  maximum share  (s*T - X) / (1 - s)   TPP that can still be added in that country
  minimum share  R/m - T               TPP that can still be added outside the region
where T is the entity's installed base, X its base in the country and R its base in the region.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from fractions import Fraction
from typing import Literal, cast

from gpucap.core.fleet import Fleet, Site
from gpucap.core.ruleset import (
    ConsigneeAnnual,
    CountryAllocation,
    MaxSharePerCountry,
    MinShareInRegion,
    NveuInstalledBase,
    Prohibition,
    Provenance,
    Rule,
    RulePack,
)
from gpucap.core.siteparts import Registry, SitePart, Tpp

Status = Literal["ok", "breach"]
Term = tuple[Hashable, Hashable, Tpp]  # (group, component, TPP) that one site adds
Sums = Mapping[Hashable, Tpp]  # one group's sums by component (None: the group's one figure)


@dataclass(frozen=True)
class Check:
    """One rule applied to one scope. Caps set `limit_tpp`; share rules set the share fields."""

    rule: str
    kind: str
    scope: str
    status: Status
    used_tpp: Fraction
    headroom_tpp: Fraction
    provenance: Provenance
    limit_tpp: Fraction | None = None
    share: Fraction | None = None
    limit_share: Fraction | None = None
    total_tpp: Fraction | None = None
    note: str | None = None


class BoundRule:
    """A rule on one registry, date and pack. `groups`: the groups in check order, or None when
    they are the groups some site names (in sorted order; a group no site names has no check)."""

    groups: Sequence[Hashable] | None = None

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        raise NotImplementedError

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        raise NotImplementedError


def _cap(
    rule: Rule, kind: str, scope: str, used_tpp: Tpp, limit: Fraction, note: str | None = None
) -> Check:
    used = Fraction(used_tpp)
    return Check(
        rule=rule.id,
        kind=kind,
        scope=scope,
        status="breach" if used > limit else "ok",
        used_tpp=used,
        headroom_tpp=limit - used,
        provenance=rule.provenance,
        limit_tpp=limit,
        note=note,
    )


def _share_check(
    rule: Rule, scope: str, held_tpp: Tpp, total_tpp: Tpp, limit: Fraction, maximum: bool
) -> Check:
    held, total = Fraction(held_tpp), Fraction(total_tpp)
    share = held / total if total else None
    if maximum:
        breach = held > limit * total
        headroom = (limit * total - held) / (1 - limit)
    else:
        breach = held < limit * total
        headroom = held / limit - total
    return Check(
        rule=rule.id,
        kind="max_share" if maximum else "min_share",
        scope=scope,
        status="breach" if breach else "ok",
        used_tpp=held,
        headroom_tpp=headroom,
        provenance=rule.provenance,
        share=share,
        limit_share=limit,
        total_tpp=total,
    )


class _CountryAllocation(BoundRule):
    """Per country of the tier: the window TPP of its sites whose entity is not exempt there."""

    def __init__(
        self, rule: CountryAllocation, slot: int, fleet: Fleet, reg: Registry, as_of: date
    ) -> None:
        self.rule, self.slot, self.fleet, self.as_of = rule, slot, fleet, as_of
        self.groups = reg.countries_by_tier.get(rule.tier, [])
        countries = set(self.groups)
        exempt_uveu = "uveu" in rule.exempt_statuses
        exempt_nveu = "nveu_in_authorised_country" in rule.exempt_statuses
        self.counted: dict[str, str] = {}  # site -> its country, where the site counts
        for site in fleet.sites:
            country = reg.country[site.id]
            if country not in countries:
                continue
            entity = reg.site_entity[site.id]
            exempt = (entity.status == "uveu" and exempt_uveu) or (
                entity.status == "nveu" and exempt_nveu and country in entity.nveu_countries
            )
            if not exempt:
                self.counted[site.id] = country

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        country = self.counted.get(site.id)
        if country is None:
            return ()
        return ((country, None, part.window_tpp[self.slot]),)  # removals count too (exports)

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        rule = self.rule
        facts = self.fleet.countries.get(str(group))
        agreement = facts is not None and facts.gov_agreement
        limit = rule.limit_tpp * (rule.gov_agreement_multiplier if agreement else 1)
        notes = []
        if agreement:
            notes.append(f"limit x{rule.gov_agreement_multiplier} (government agreement)")
        if self.as_of > rule.window_end:
            notes.append(f"window ended {rule.window_end}; later installs are not counted")
        note = "; ".join(notes) or None
        return [_cap(rule, "cap", f"country:{group}", sums.get(None, 0), limit, note)]


class _ConsigneeAnnual(BoundRule):
    """Per (entity, year) that some site installed lines of the basis in."""

    def __init__(self, rule: ConsigneeAnnual, slot: int) -> None:
        self.rule, self.slot = rule, slot

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        return [
            ((site.entity, year), None, tpp) for year, tpp in part.annual_tpp[self.slot].items()
        ]

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        entity, year = cast(tuple[str, int], group)
        scope = f"consignee:{entity}/year:{year}"
        return [_cap(self.rule, "cap", scope, sums.get(None, 0), self.rule.limit_tpp)]


def _schedule_limit(rule: NveuInstalledBase, as_of: date) -> tuple[Fraction, Provenance, str]:
    """The schedule figure for the quarter of `as_of`, and a note when it is not exact."""
    key = (as_of.year, (as_of.month - 1) // 3 + 1)
    label = f"{key[0]}Q{key[1]}"
    before = [a for a in rule.schedule if (a.year, a.quarter) <= key]
    if before and (before[-1].year, before[-1].quarter) == key:
        return before[-1].limit_tpp, before[-1].provenance, ""
    if before:
        anchor = before[-1]
        note = f"no figure is known for {label}; using the last known anchor ({anchor.label})"
    else:
        anchor = rule.schedule[0]
        note = (
            f"no figure is known for {label} or any earlier quarter; using the first known "
            f"anchor ({anchor.label}), which may overstate the limit"
        )
    return anchor.limit_tpp, anchor.provenance, note


class _NveuInstalledBase(BoundRule):
    """Per NVEU entity and country of its authorisation: the active TPP of its sites there."""

    def __init__(self, rule: NveuInstalledBase, fleet: Fleet, reg: Registry, as_of: date) -> None:
        self.rule = rule
        self.limit, self.provenance, self.note = _schedule_limit(rule, as_of)
        self.groups = [
            (e.id, country)
            for e in fleet.entities
            if e.status == "nveu"
            for country in sorted(e.nveu_countries)
        ]
        self.group_of: dict[str, tuple[str, str]] = {}
        for site in fleet.sites:
            entity, country = reg.site_entity[site.id], reg.country[site.id]
            if entity.status == "nveu" and country in entity.nveu_countries:
                self.group_of[site.id] = (entity.id, country)

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        group = self.group_of.get(site.id)
        return () if group is None else ((group, None, part.active_tpp),)

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        entity, country = cast(tuple[str, str], group)
        scope = f"entity:{entity}/country:{country}"
        check = _cap(self.rule, "cap", scope, sums.get(None, 0), self.limit)
        return [replace(check, provenance=self.provenance, note=self.note or None)]


class _MaxSharePerCountry(BoundRule):
    """Per entity of the status: its active TPP (component None), and in each country of the
    tier where it has a site (component: the country)."""

    def __init__(self, rule: MaxSharePerCountry, fleet: Fleet, reg: Registry) -> None:
        self.rule, self.reg = rule, reg
        self.groups = [e.id for e in fleet.entities if e.status == rule.status]
        self.members = set(self.groups)

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        if site.entity not in self.members:
            return ()
        total = (site.entity, None, part.active_tpp)
        if self.reg.tier[site.id] != self.rule.tier:
            return (total,)
        return (total, (site.entity, self.reg.country[site.id], part.active_tpp))

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        rule, total = self.rule, sums.get(None, 0)
        held_in = sorted((str(k), v) for k, v in sums.items() if k is not None)
        return [
            _share_check(rule, f"entity:{group}/country:{c}", held, total, rule.max_share, True)
            for c, held in held_in
        ]


class _MinShareInRegion(BoundRule):
    """Per entity of the status (and headquarters): its active TPP (component None) and the
    part of it in the region (component "region")."""

    def __init__(self, rule: MinShareInRegion, fleet: Fleet, reg: Registry) -> None:
        self.rule, self.reg = rule, reg
        self.groups = [
            e.id
            for e in fleet.entities
            if e.status == rule.status
            and (rule.headquarters is None or e.headquarters in rule.headquarters)
        ]
        self.members = set(self.groups)

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        if site.entity not in self.members:
            return ()
        total = (site.entity, None, part.active_tpp)
        rule = self.rule
        if rule.region_countries is not None:
            in_region = self.reg.country[site.id] in rule.region_countries
        else:
            in_region = self.reg.tier[site.id] == rule.region_tier
        return (total, (site.entity, "region", part.active_tpp)) if in_region else (total,)

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        held, total = sums.get("region", 0), sums.get(None, 0)
        rule = self.rule
        return [_share_check(rule, f"entity:{group}", held, total, rule.min_share, False)]


class _Prohibition(BoundRule):
    """Per country of the tier: the active TPP of its sites (the limit is 0)."""

    def __init__(self, rule: Prohibition, reg: Registry) -> None:
        self.rule, self.reg = rule, reg
        self.groups = reg.countries_by_tier.get(rule.tier, [])
        self.countries = set(self.groups)

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        country = self.reg.country[site.id]
        return ((country, None, part.active_tpp),) if country in self.countries else ()

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        used = sums.get(None, 0)
        return [_cap(self.rule, "prohibition", f"country:{group}", used, Fraction(0))]


def bind(pack: RulePack, fleet: Fleet, reg: Registry, as_of: date) -> tuple[BoundRule, ...]:
    """Every rule of `pack`, in order, on `fleet`'s registry on `as_of`. Line-level rules read
    their slot of a site part (their index among the rules of their kind)."""
    allocations = annuals = 0
    out: list[BoundRule] = []
    for rule in pack.rules:
        bound: BoundRule
        if isinstance(rule, CountryAllocation):
            bound = _CountryAllocation(rule, allocations, fleet, reg, as_of)
            allocations += 1
        elif isinstance(rule, ConsigneeAnnual):
            bound = _ConsigneeAnnual(rule, annuals)
            annuals += 1
        elif isinstance(rule, NveuInstalledBase):
            bound = _NveuInstalledBase(rule, fleet, reg, as_of)
        elif isinstance(rule, MaxSharePerCountry):
            bound = _MaxSharePerCountry(rule, fleet, reg)
        elif isinstance(rule, MinShareInRegion):
            bound = _MinShareInRegion(rule, fleet, reg)
        else:
            bound = _Prohibition(rule, reg)
        out.append(bound)
    return tuple(out)
