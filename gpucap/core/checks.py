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

Licence rules (`us-ear-2026`) make prohibitions (limit 0) per site or entity and a cap per
licence; a component other than None carries what a check reports beside `used_tpp` (tolerated
TPP; devices a licence names but does not cover, for its note), so it too adds up exactly.

The module is longer than most because every rule kind's bound form sits here, next to the
others it shares `_cap` and the group conventions with; each class is one kind.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from fractions import Fraction
from typing import Literal, cast

from gpucap.core.errors import InputError
from gpucap.core.fleet import Entity, Fleet, Licence, Site
from gpucap.core.groups import CountryGroups, Membership
from gpucap.core.ruleset import (
    ConsigneeAnnual,
    CountryAllocation,
    DestinationLicence,
    HeadquartersControl,
    LicenceQuantity,
    MaxSharePerCountry,
    MinShareInRegion,
    ModelProhibition,
    NveuInstalledBase,
    Prohibition,
    Provenance,
    Rule,
    RulePack,
    weakest,
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
    tolerated_tpp: Fraction | None = None  # headquarters_control: not counted, reported


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


def _tpp_words(value: Tpp) -> str:
    """A TPP figure for a note: whole with thousands separators, else to two decimals."""
    exact = Fraction(value)
    return f"{exact.numerator:,}" if exact.denominator == 1 else f"{float(exact):,.2f}"


def _resting_on(base: Provenance, extra: list[tuple[str, str]]) -> Provenance:
    """`base`, as sure as the weakest of it and `extra` (source, confidence) pairs, which its
    source then cites too."""
    if not extra:
        return base
    sources = [base.source, *sorted({src for src, _ in extra} - {base.source})]
    labels = [base.confidence, *(conf for _, conf in extra)]
    return replace(base, source="; ".join(sources), confidence=weakest(labels))


def _groups_of(reg: Registry) -> CountryGroups:
    if reg.groups is None:  # the parser gives every pack with licence rules its groups
        raise ValueError("the pack has no country groups")
    return reg.groups


class _DestinationLicence(BoundRule):
    """Per site holding devices that needed a licence when installed, or whose country needs
    one on the date: the TPP of those devices no licence covers (the limit is 0)."""

    def __init__(self, rule: DestinationLicence, slot: int, fleet: Fleet, reg: Registry) -> None:
        self.rule, self.slot, self.reg = rule, slot, reg
        self.as_of = reg.as_of
        groups = _groups_of(reg)
        need = reg.destination_need[slot]
        self.now = {s.id for s in fleet.sites if need[s.id].on(self.as_of)}
        self.sites = {s.id: s for s in fleet.sites}
        # A check rests on the country's memberships of the groups the rule names (any date).
        names = set(rule.group_names)
        self.provenance: dict[str, Provenance] = {}
        self.in_groups: dict[str, list[str]] = {}
        for code in {s.country for s in fleet.sites}:
            country = groups.resolve(code)
            held = [p for p in groups.periods if p.country == country and p.group in names]
            extra = [(p.source, p.confidence) for p in held]
            extra.append((rule.classes.provenance.source, rule.classes.provenance.confidence))
            self.provenance[code] = _resting_on(rule.provenance, extra)
            self.in_groups[code] = sorted(names & groups.groups_of(code, self.as_of))

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        uncovered, devices = part.destination[self.slot]
        if devices or site.id in self.now:
            return ((site.id, None, uncovered),)
        return ()

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        site = self.sites[str(group)]
        code, on = site.country, self.as_of
        where = (
            code
            if self.reg.country[site.id] == code
            else f"{code} (treated as {self.reg.country[site.id]})"
        )
        listed = ", ".join(self.in_groups[code]) or "none of the groups the rule names"
        if site.id in self.now:
            note = f"{where} is in {listed} on {on}: a destination licence is needed"
        else:
            note = (
                f"{where} needs no destination licence on {on} (in {listed}); devices installed "
                "while it did still need one"
            )
        check = _cap(self.rule, "prohibition", f"site:{group}", sums.get(None, 0), Fraction(0))
        return [replace(check, provenance=self.provenance[code], note=note)]


def _headquarters_chain(
    entity: Entity,
    entities: Mapping[str, Entity],
    rule: HeadquartersControl,
    groups: CountryGroups,
    as_of: date,
) -> tuple[list[Entity], Membership] | None:
    """The chain from `entity` up its parents to the first whose headquarters is in one of the
    rule's groups on `as_of`, and that membership; None when none is (a cycle ends the walk)."""
    chain: list[Entity] = []
    seen: set[str] = set()
    current: Entity | None = entity
    while current is not None and current.id not in seen:
        chain.append(current)
        seen.add(current.id)
        for name in rule.groups:
            found = groups.membership(current.headquarters, name, as_of)
            if found is not None:
                return chain, found
        current = entities.get(current.parent) if current.parent is not None else None
    return None


class _HeadquartersControl(BoundRule):
    """Per entity headquartered, or with a parent up its chain headquartered, in the rule's
    groups and holding sites outside `home`: the TPP no licence covers there (component None)
    and the part of it tolerated by its install date (component "tolerated")."""

    def __init__(self, rule: HeadquartersControl, slot: int, fleet: Fleet, reg: Registry) -> None:
        self.rule, self.slot, self.as_of = rule, slot, reg.as_of
        groups = _groups_of(reg)
        self.outside = {s.id for s in fleet.sites if reg.country[s.id] not in rule.home}
        self.found: dict[str, tuple[list[Entity], Membership]] = {}
        for entity in fleet.entities:
            hit = _headquarters_chain(entity, reg.entities, rule, groups, self.as_of)
            abroad = any(s.id in self.outside for s in reg.sites_by_entity.get(entity.id, ()))
            if hit is not None and abroad:
                self.found[entity.id] = hit
        self.groups = [e.id for e in fleet.entities if e.id in self.found]

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        if site.entity not in self.found or site.id not in self.outside:
            return ()
        counted, tolerated = part.headquarters[self.slot]
        return ((site.entity, None, counted), (site.entity, "tolerated", tolerated))

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        rule = self.rule
        chain, membership = self.found[str(group)]
        top = chain[-1]
        path = " -> ".join(f"{e.id} ({e.headquarters})" for e in chain)
        where = top.headquarters
        if membership.country != where:
            where = f"{where} (treated as {membership.country})"
        notes = [f"headquarters: {path}; {where} is in {membership.group} on {self.as_of}"]
        tolerated = sums.get("tolerated", 0)
        extra = [
            (membership.source, membership.confidence),
            (rule.classes.provenance.source, rule.classes.provenance.confidence),
            (rule.home_provenance.source, rule.home_provenance.confidence),
        ]
        if tolerated:
            notes.append(
                f"{_tpp_words(tolerated)} TPP installed before {rule.tolerated_before} is "
                f"tolerated and not counted: {rule.tolerance_note}"
            )
            extra.append((rule.tolerance_provenance.source, rule.tolerance_provenance.confidence))
        scope = f"entity:{group}"
        check = _cap(rule, "prohibition", scope, sums.get(None, 0), Fraction(0), "; ".join(notes))
        provenance = _resting_on(rule.provenance, extra)
        return [replace(check, provenance=provenance, tolerated_tpp=Fraction(tolerated))]


class _LicenceQuantity(BoundRule):
    """Per licence of the fleet: the TPP of the devices it covers installed by the date,
    removed ones too (component None); and per site and reason the devices and TPP of lines
    naming it that it does not cover (components ("miss", site, reason, "devices"|"tpp"))."""

    def __init__(self, rule: LicenceQuantity, fleet: Fleet, as_of: date) -> None:
        self.rule, self.as_of = rule, as_of
        self.site_entity = {s.id: s.entity for s in fleet.sites}
        self.licences: dict[str, Licence] = {}
        self.limits: dict[str, tuple[Fraction, Provenance, str | None]] = {}
        for i, lic in enumerate(fleet.licences):
            self.licences[lic.id] = lic
            self.limits[lic.id] = self._limit(lic, i)
        self.groups = [lic.id for lic in fleet.licences]

    def _limit(self, lic: Licence, i: int) -> tuple[Fraction, Provenance, str | None]:
        rule = self.rule
        paragraph = f"{rule.provenance.paragraph}: licence {lic.id}"
        base = replace(rule.provenance, paragraph=paragraph)
        if lic.limit_tpp is not None:
            return lic.limit_tpp, base, None
        if lic.limit_units is None or lic.unit_tpp is None:
            raise InputError(
                f"licences[{i}]", "give limit_tpp, or limit_units with a catalogue unit_model"
            )
        conversion = rule.conversion
        provenance = _resting_on(base, [(conversion.source, conversion.confidence)])
        note = (
            f"limit {lic.limit_units:,} x {lic.unit_model} at {_tpp_words(lic.unit_tpp)} TPP "
            f"each: {rule.conversion_note}"
        )
        return lic.unit_tpp * lic.limit_units, provenance, note

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        out: list[Term] = [
            (lic, None, tpp) for lic, tpp in part.licensed.items() if lic in self.licences
        ]
        for (lic, reason), (devices, tpp) in part.unlicensed.items():
            if lic in self.licences:
                out.append((lic, ("miss", site.id, reason, "devices"), devices))
                out.append((lic, ("miss", site.id, reason, "tpp"), tpp))
        return out

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        lic = self.licences[str(group)]
        limit, provenance, conversion_note = self.limits[lic.id]
        notes = [conversion_note] if conversion_note else []
        if lic.valid_from > self.as_of:
            notes.append(f"valid from {lic.valid_from}")
        elif lic.valid_until is not None and lic.valid_until < self.as_of:
            notes.append(f"validity ended {lic.valid_until}; later installs are not covered")
        misses: dict[tuple[str, str], dict[str, Tpp]] = {}
        for component, value in sums.items():
            if isinstance(component, tuple) and value:
                _, site_id, reason, figure = component
                misses.setdefault((site_id, reason), {})[figure] = value
        # The licensee's own sites are named; lines of other entities naming the licence are
        # summed without naming them: the check is the licensee's, and an entity-scoped reader
        # of it must not learn another entity's sites.
        own = {k: v for k, v in misses.items() if self.site_entity.get(k[0]) == lic.licensee}
        others = [v for k, v in misses.items() if k not in own]
        listed = [
            f"site {site_id}: {int(fig.get('devices', 0)):,} devices, "
            f"{_tpp_words(fig.get('tpp', 0))} TPP ({reason})"
            for (site_id, reason), fig in sorted(own.items())
        ]
        if others:
            sites = len({k[0] for k in misses if k not in own})
            devices = sum(int(fig.get("devices", 0)) for fig in others)
            tpp = sum((Fraction(fig.get("tpp", 0)) for fig in others), Fraction(0))
            listed.append(
                f"{devices:,} devices, {_tpp_words(tpp)} TPP at {sites} site(s) of other "
                f"entities (only the licensee's devices can be covered)"
            )
        if listed:
            notes.append(f"not counted, as the licence does not cover them: {'; '.join(listed)}")
        if lic.conditions:
            notes.append(f"conditions (not evaluated): {lic.conditions}")
        check = _cap(
            self.rule,
            "cap",
            f"licence:{lic.id}",
            sums.get(None, 0),
            limit,
            "; ".join(notes) or None,
        )
        return [replace(check, provenance=provenance)]


class _ModelProhibition(BoundRule):
    """Per site holding present devices of a listed model: their TPP (the limit is 0)."""

    def __init__(self, rule: ModelProhibition, slot: int) -> None:
        self.rule, self.slot = rule, slot

    def terms(self, site: Site, part: SitePart) -> Sequence[Term]:
        devices, tpp = part.models[self.slot]
        return ((site.id, None, tpp),) if devices else ()

    def checks(self, group: Hashable, sums: Sums) -> list[Check]:
        scope = f"site:{group}"
        used = sums.get(None, 0)
        return [_cap(self.rule, "prohibition", scope, used, Fraction(0), self.rule.note or None)]


def bind(pack: RulePack, fleet: Fleet, reg: Registry, as_of: date) -> tuple[BoundRule, ...]:
    """Every rule of `pack`, in order, on `fleet`'s registry on `as_of`. Line-level rules read
    their slot of a site part (their index among the rules of their kind)."""
    allocations = annuals = destinations = headquarters = models = 0
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
        elif isinstance(rule, DestinationLicence):
            bound = _DestinationLicence(rule, destinations, fleet, reg)
            destinations += 1
        elif isinstance(rule, HeadquartersControl):
            bound = _HeadquartersControl(rule, headquarters, fleet, reg)
            headquarters += 1
        elif isinstance(rule, LicenceQuantity):
            bound = _LicenceQuantity(rule, fleet, as_of)
        elif isinstance(rule, ModelProhibition):
            bound = _ModelProhibition(rule, models)
            models += 1
        else:
            bound = _Prohibition(rule, reg)
        out.append(bound)
    return tuple(out)
