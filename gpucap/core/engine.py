"""The cap engine: a pure function of (fleet, rule pack, date) to checks and per-site totals.

Each rule kind has one function here. Headroom is in TPP and may be negative:
  cap            limit - used
  maximum share  (s*T - X) / (1 - s)   TPP that can still be added in that country
  minimum share  R/m - T               TPP that can still be added outside the region
where T is the entity's installed base, X its base in the country and R its base in the region.

Sums are exact: a line's TPP is a plain int when it is whole (catalogue TPP always is) and a
Fraction otherwise (int + Fraction is a Fraction), so tens of thousands of lines add as ints and
only the few figures a check reports become Fractions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any, Literal

from gpucap.core.errors import InputError
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
from gpucap.core.siteparts import SiteMemo, SiteTotal, Tpp, fresh_parts
from gpucap.core.siteparts import line_tpp as line_tpp  # re-exported: part of the engine's API

__all__ = ["Check", "Evaluation", "RulesetState", "SiteMemo", "SiteTotal", "evaluate", "line_tpp"]

Status = Literal["ok", "breach"]


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


@dataclass(frozen=True)
class RulesetState:
    """The pack applied and its legal status on the date."""

    id: str
    version: str
    title: str
    citation: str
    status: str
    status_since: date | None
    in_force: bool
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """The engine's answer; `h100e_tpp` converts TPP figures to H100-equivalents."""

    ruleset: RulesetState
    as_of: date
    h100e_tpp: Fraction
    checks: tuple[Check, ...]
    sites: tuple[SiteTotal, ...]

    @property
    def verdict(self) -> Status:
        return "breach" if any(c.status == "breach" for c in self.checks) else "ok"


class _Context:
    """The fleet on one date, shared by the rule functions: registry indexes and site parts."""

    def __init__(self, fleet: Fleet, pack: RulePack, as_of: date, memo: SiteMemo | None) -> None:
        self.fleet, self.pack, self.as_of = fleet, pack, as_of
        if memo is None:
            registry, parts = fresh_parts(fleet, pack, as_of)
        else:
            registry, parts = memo.parts(fleet, pack, as_of)
        self.parts = parts
        self.entities = registry.entities
        self.sites = registry.sites
        self.country = registry.country
        self.tier = registry.tier
        self.site_entity = registry.site_entity
        self.sites_by_entity = registry.sites_by_entity
        self.sites_by_country = registry.sites_by_country
        self._countries_by_tier = registry.countries_by_tier
        self.active_by_site: dict[str, Tpp] = {k: p.active_tpp for k, p in parts.items()}
        # Each line-level rule's index among the rules of its kind (a site part's order).
        self.rule_slot: dict[int, int] = {}
        for kind in (CountryAllocation, ConsigneeAnnual):
            for i, rule in enumerate(r for r in pack.rules if isinstance(r, kind)):
                self.rule_slot[id(rule)] = i

    def sites_of(self, entity: str) -> list[Site]:
        return self.sites_by_entity.get(entity, [])

    def countries_with_sites(self, tier: int) -> list[str]:
        return self._countries_by_tier.get(tier, [])

    def active_tpp(self, sites: Iterable[Site]) -> Tpp:
        active = self.active_by_site
        return sum(active.get(s.id, 0) for s in sites)


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


def _country_allocation(rule: CountryAllocation, ctx: _Context) -> list[Check]:
    checks = []
    exempt_uveu = "uveu" in rule.exempt_statuses
    exempt_nveu = "nveu_in_authorised_country" in rule.exempt_statuses
    for country in ctx.countries_with_sites(rule.tier):
        exempt: dict[str, bool] = {}  # per site of the country: its entity is exempt here
        for site in ctx.sites_by_country.get(country, ()):
            entity = ctx.site_entity[site.id]
            exempt[site.id] = (entity.status == "uveu" and exempt_uveu) or (
                entity.status == "nveu" and exempt_nveu and country in entity.nveu_countries
            )
        slot = ctx.rule_slot[id(rule)]
        used: Tpp = 0  # removal does not give allocation back: it counts exports
        for site in ctx.sites_by_country.get(country, ()):
            if not exempt[site.id]:
                used += ctx.parts[site.id].window_tpp[slot]
        facts = ctx.fleet.countries.get(country)
        agreement = facts is not None and facts.gov_agreement
        limit = rule.limit_tpp * (rule.gov_agreement_multiplier if agreement else 1)
        notes = []
        if agreement:
            notes.append(f"limit x{rule.gov_agreement_multiplier} (government agreement)")
        if ctx.as_of > rule.window_end:
            notes.append(f"window ended {rule.window_end}; later installs are not counted")
        note = "; ".join(notes) or None
        checks.append(_cap(rule, "cap", f"country:{country}", used, limit, note))
    return checks


def _consignee_annual(rule: ConsigneeAnnual, ctx: _Context) -> list[Check]:
    slot = ctx.rule_slot[id(rule)]
    used: dict[tuple[str, int], Tpp] = defaultdict(int)
    for site_id, part in ctx.parts.items():
        for year, tpp in part.annual_tpp[slot].items():
            used[(ctx.sites[site_id].entity, year)] += tpp
    return [
        _cap(rule, "cap", f"consignee:{entity}/year:{year}", tpp, rule.limit_tpp)
        for (entity, year), tpp in sorted(used.items())
    ]


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


def _nveu_installed_base(rule: NveuInstalledBase, ctx: _Context) -> list[Check]:
    limit, provenance, note = _schedule_limit(rule, ctx.as_of)
    checks = []
    for entity in ctx.fleet.entities:
        if entity.status != "nveu":
            continue
        for country in sorted(entity.nveu_countries):
            sites = [s for s in ctx.sites_of(entity.id) if ctx.country[s.id] == country]
            used = ctx.active_tpp(sites)
            check = _cap(rule, "cap", f"entity:{entity.id}/country:{country}", used, limit)
            checks.append(
                Check(**{**check.__dict__, "provenance": provenance, "note": note or None})
            )
    return checks


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


def _max_share_per_country(rule: MaxSharePerCountry, ctx: _Context) -> list[Check]:
    checks = []
    for entity in ctx.fleet.entities:
        if entity.status != rule.status:
            continue
        sites = ctx.sites_of(entity.id)
        total = ctx.active_tpp(sites)
        held_in: dict[str, Tpp] = {}
        for s in sites:
            if ctx.tier[s.id] == rule.tier:
                country = ctx.country[s.id]
                held_in[country] = held_in.get(country, 0) + ctx.active_by_site.get(s.id, 0)
        for country, held in sorted(held_in.items()):
            scope = f"entity:{entity.id}/country:{country}"
            checks.append(_share_check(rule, scope, held, total, rule.max_share, maximum=True))
    return checks


def _min_share_in_region(rule: MinShareInRegion, ctx: _Context) -> list[Check]:
    checks = []
    for entity in ctx.fleet.entities:
        if entity.status != rule.status:
            continue
        if rule.headquarters is not None and entity.headquarters not in rule.headquarters:
            continue
        sites = ctx.sites_of(entity.id)

        def in_region(site: Site) -> bool:
            if rule.region_countries is not None:
                return ctx.country[site.id] in rule.region_countries
            return ctx.tier[site.id] == rule.region_tier

        held = ctx.active_tpp(s for s in sites if in_region(s))
        total = ctx.active_tpp(sites)
        scope = f"entity:{entity.id}"
        checks.append(_share_check(rule, scope, held, total, rule.min_share, maximum=False))
    return checks


def _prohibition(rule: Prohibition, ctx: _Context) -> list[Check]:
    checks = []
    for country in ctx.countries_with_sites(rule.tier):
        used = ctx.active_tpp(ctx.sites_by_country.get(country, ()))
        checks.append(_cap(rule, "prohibition", f"country:{country}", used, Fraction(0)))
    return checks


_KINDS: dict[type[Any], Callable[[Any, _Context], list[Check]]] = {
    CountryAllocation: _country_allocation,
    ConsigneeAnnual: _consignee_annual,
    NveuInstalledBase: _nveu_installed_base,
    MaxSharePerCountry: _max_share_per_country,
    MinShareInRegion: _min_share_in_region,
    Prohibition: _prohibition,
}


def validate_fleet(fleet: Fleet, pack: RulePack, as_of: date) -> None:
    """Rule-dependent checks of a fleet (UVEU headquarters tier), as InputErrors."""
    for i, entity in enumerate(fleet.entities):
        if entity.status == "uveu":
            tier = pack.tiers.tier(entity.headquarters, as_of)
            if tier != pack.uveu_headquarters_tier:
                raise InputError(
                    f"entities[{i}].headquarters",
                    f"UVEU status requires Tier {pack.uveu_headquarters_tier} headquarters; "
                    f"{entity.headquarters} is Tier {tier} under {pack.id} on {as_of}",
                )


def _ruleset_state(pack: RulePack, as_of: date, checks: list[Check]) -> RulesetState:
    period = pack.status_on(as_of)
    warnings = []
    if period is None:
        status, since = "not_yet_effective", None
        warnings.append(f"{pack.id} is not yet effective on {as_of}")
    else:
        status, since = period.value, period.start
        if status != "in_force":
            warnings.append(
                f"{pack.id} is {status} on {as_of} (since {since}): these results show what the "
                f"pack would require, not an enforced limit. {period.note}".rstrip()
            )
    unconfirmed = sorted({c.rule for c in checks if c.provenance.confidence == "unconfirmed"})
    for rule in unconfirmed:
        warnings.append(f"{rule} rests on unconfirmed figures: verify before relying on it")
    return RulesetState(
        pack.id,
        pack.version,
        pack.title,
        pack.citation,
        status,
        since,
        status == "in_force",
        tuple(warnings),
    )


def evaluate(fleet: Fleet, pack: RulePack, as_of: date, memo: SiteMemo | None = None) -> Evaluation:
    """Apply every rule of `pack` to `fleet` on `as_of`.

    `memo` (optional, the caller's) keeps per-site parts between calls so that only sites whose
    lines changed are recomputed; the answer is the same with or without it.
    """
    validate_fleet(fleet, pack, as_of)
    ctx = _Context(fleet, pack, as_of, memo)
    checks: list[Check] = []
    for rule in pack.rules:
        checks.extend(_KINDS[type(rule)](rule, ctx))
    return Evaluation(
        ruleset=_ruleset_state(pack, as_of, checks),
        as_of=as_of,
        h100e_tpp=pack.h100e_tpp,
        checks=tuple(checks),
        sites=tuple(ctx.parts[s.id].total for s in fleet.sites),
    )
