"""Rule packs: dated, versioned data files turned into typed rules for the engine.

A pack (`gpucap/data/rulesets/<id>.yaml`) holds its dates, its status over time, the tier table,
the reference unit and a list of rules. Each rule has a `kind`; the engine has one function per
kind, so a successor regime is a new data file and, at most, a new kind.

The module is longer than most because each rule kind's typed value and its parsing stay side by
side, so adding a kind touches one place here and one function in `engine.py`.

A pack without a `tiers` table (`us-ear-2026`) names EAR country groups instead, read from the
shipped country-groups file on the dates the rules ask about; its model lists are checked
against the catalogue when it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpucap.core.data import parse_day, read_yaml, require_mapping, shipped
from gpucap.core.errors import DataError, InputError

if TYPE_CHECKING:
    from gpucap.core.catalogue import Catalogue
    from gpucap.core.groups import CountryGroups

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_QUARTER = re.compile(r"^(\d{4})Q([1-4])$")


@dataclass(frozen=True)
class Provenance:
    """Where a figure comes from: the rule paragraph, the sources and a confidence label."""

    paragraph: str
    source: str
    confidence: str


@dataclass(frozen=True)
class StatusPeriod:
    """The pack's legal status from `start` until the next period begins."""

    start: date
    value: str  # in_force | not_enforced | ...
    note: str
    provenance: Provenance


@dataclass(frozen=True)
class TierTable:
    """Tier membership by ISO 3166-1 alpha-2 code, dated through `tier3_changes`."""

    valid_codes: frozenset[str]
    tier1: frozenset[str]
    tier3: frozenset[str]
    tier3_changes: tuple[tuple[date, frozenset[str], frozenset[str]], ...]  # (date, add, remove)
    treated_as: tuple[tuple[str, str], ...]
    provenance_tier1: Provenance | None  # None: the pack has no tiers
    provenance_tier3: Provenance | None
    tiered: bool = True  # False: a pack without tiers; every code is tier 0

    def resolve(self, code: str) -> str:
        """The country a territory is treated as (HK -> CN), else the code itself."""
        return dict(self.treated_as).get(code, code)

    def tier(self, code: str, as_of: date) -> int:
        """Tier (1, 2 or 3) of a country on `as_of`, after resolving territories; 0 for every
        code under a pack without tiers."""
        if not self.tiered:
            return 0
        code = self.resolve(code)
        if code in self.tier1:
            return 1
        tier3 = set(self.tier3)
        for when, add, remove in self.tier3_changes:
            if when <= as_of:
                tier3 |= add
                tier3 -= remove
        return 3 if code in tier3 else 2


@dataclass(frozen=True)
class CountryAllocation:
    """Cumulative TPP cap per country of one tier over a window; agreements multiply it."""

    id: str
    tier: int
    window_start: date
    window_end: date
    limit_tpp: Fraction
    gov_agreement_multiplier: Fraction
    exempt_bases: frozenset[str]
    exempt_statuses: frozenset[str]
    provenance: Provenance


@dataclass(frozen=True)
class ConsigneeAnnual:
    """TPP cap per consignee per calendar year for lines on one basis (LPP)."""

    id: str
    basis: str
    limit_tpp: Fraction
    provenance: Provenance


@dataclass(frozen=True)
class ScheduleAnchor:
    """A known figure of a quarterly schedule."""

    year: int
    quarter: int
    limit_tpp: Fraction
    note: str
    provenance: Provenance

    @property
    def label(self) -> str:
        return f"{self.year}Q{self.quarter}"


@dataclass(frozen=True)
class NveuInstalledBase:
    """Per-entity per-country installed-base cap following a quarterly schedule."""

    id: str
    schedule: tuple[ScheduleAnchor, ...]  # sorted by quarter
    provenance: Provenance


@dataclass(frozen=True)
class MaxSharePerCountry:
    """An entity may hold at most `max_share` of its installed base in any one country of a tier."""

    id: str
    status: str
    tier: int
    max_share: Fraction
    provenance: Provenance


@dataclass(frozen=True)
class MinShareInRegion:
    """An entity must hold at least `min_share` of its installed base in a region."""

    id: str
    status: str
    headquarters: frozenset[str] | None  # applies only to entities headquartered there
    region_tier: int | None
    region_countries: frozenset[str] | None
    min_share: Fraction
    provenance: Provenance


@dataclass(frozen=True)
class Prohibition:
    """No counted device may be installed in a country of this tier."""

    id: str
    tier: int
    provenance: Provenance


@dataclass(frozen=True)
class Classes:
    """The ECCN classes a rule applies to (its 3A090/4A090 paragraphs), with their sources."""

    value: frozenset[str]
    provenance: Provenance


@dataclass(frozen=True)
class DestinationLicence:
    """A device needs a licence when, on its installed date, its site's country is in one of
    `any_of` and none of `none_of`, or in one of `also`; devices no licence covers breach."""

    id: str
    classes: Classes
    any_of: tuple[str, ...]
    none_of: tuple[str, ...]
    also: tuple[str, ...]
    provenance: Provenance

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.any_of + self.none_of + self.also


@dataclass(frozen=True)
class HeadquartersControl:
    """Entities headquartered (themselves or up their parent chain) in one of `groups` need a
    licence for devices at sites outside `home`; devices installed before `tolerated_before`
    are tolerated (reported, not counted)."""

    id: str
    classes: Classes
    groups: tuple[str, ...]
    groups_provenance: Provenance
    home: frozenset[str]
    home_provenance: Provenance
    tolerated_before: date
    tolerance_note: str
    tolerance_provenance: Provenance
    provenance: Provenance


@dataclass(frozen=True)
class LicenceQuantity:
    """Each licence caps the TPP of the devices it covers; a limit in units of a model is
    converted at that model's TPP (`conversion`: how, and how sure)."""

    id: str
    conversion_note: str
    conversion: Provenance
    provenance: Provenance


@dataclass(frozen=True)
class ModelProhibition:
    """No counted device of a listed catalogue model may be installed anywhere."""

    id: str
    models: frozenset[str]
    note: str
    provenance: Provenance


Rule = (
    CountryAllocation
    | ConsigneeAnnual
    | NveuInstalledBase
    | MaxSharePerCountry
    | MinShareInRegion
    | Prohibition
    | DestinationLicence
    | HeadquartersControl
    | LicenceQuantity
    | ModelProhibition
)

# The confidence labels from strongest to weakest; a figure resting on several is as sure as the
# weakest of them.
CONFIDENCE_ORDER = ("primary", "secondary", "derived", "unconfirmed")


def weakest(labels: list[str] | tuple[str, ...]) -> str:
    """The weakest of confidence labels (an unknown label counts as the weakest)."""
    rank = {label: i for i, label in enumerate(CONFIDENCE_ORDER)}
    return max(labels, key=lambda label: rank.get(label, len(rank)))


@dataclass(frozen=True)
class RulePack:
    """One rule pack, validated."""

    id: str
    version: str
    title: str
    citation: str
    dates: tuple[tuple[str, date, Provenance], ...]
    status: tuple[StatusPeriod, ...]
    h100e_tpp: Fraction
    h100e_provenance: Provenance
    counted_classes: frozenset[str]
    tiers: TierTable
    uveu_headquarters_tier: int | None  # None: the pack has no UVEU status
    rules: tuple[Rule, ...]
    # Country groups the rules name (None: no rule names one) and the classes a licence with
    # none of its own covers (with their sources).
    groups: CountryGroups | None = field(default=None, compare=False)
    licence_classes: Classes | None = None

    def status_on(self, as_of: date) -> StatusPeriod | None:
        """The status period in force on `as_of`; None before the first one."""
        current = None
        for period in self.status:
            if period.start <= as_of:
                current = period
        return current


# --- parsing -----------------------------------------------------------------------------------


class _Reader:
    """Typed access to one mapping of the pack, raising DataError with the field path."""

    def __init__(self, raw: Any, path: str) -> None:
        self.raw = require_mapping(raw, path)
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def child(self, key: str) -> _Reader:
        return _Reader(self.raw.get(key), self.at(key))

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise DataError(self.at(key), "expected a non-empty string")
        return value

    def day(self, key: str) -> date:
        try:
            return parse_day(self.raw.get(key))
        except ValueError as exc:
            raise DataError(self.at(key), str(exc)) from None

    def number(self, key: str) -> Fraction:
        value = self.raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(self.at(key), f"expected a number, got {value!r}")
        return Fraction(str(value))

    def integer(self, key: str) -> int:
        value = self.raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(self.at(key), f"expected an integer, got {value!r}")
        return value

    def codes(self, key: str, valid: frozenset[str]) -> frozenset[str]:
        value = self.raw.get(key)
        if not isinstance(value, list):
            raise DataError(self.at(key), "expected a list of country codes")
        for i, code in enumerate(value):
            if code not in valid:
                raise DataError(f"{self.at(key)}[{i}]", f"not an ISO 3166-1 alpha-2 code: {code!r}")
        return frozenset(value)

    def sourced_number(self, key: str, paragraph: str) -> tuple[Fraction, Provenance]:
        """A `{value, source, confidence}` figure."""
        node = self.child(key)
        return node.number("value"), node.provenance(paragraph)

    def provenance(self, paragraph: str) -> Provenance:
        return Provenance(paragraph, self.text("source"), self.text("confidence"))

    def names(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise DataError(self.at(key), "expected a list of names")
        return tuple(value)

    def note(self) -> str:
        return " ".join(str(self.raw.get("note", "")).split())


class _Context:
    """What a pack's rules are checked against: country codes, the counted classes, and (read
    on first use) the shipped country groups and catalogue, or the ones the caller gives."""

    def __init__(
        self,
        valid: frozenset[str],
        counted: frozenset[str],
        groups: CountryGroups | None,
        catalogue: Catalogue | None,
    ) -> None:
        self.valid, self.counted = valid, counted
        self._groups, self._catalogue = groups, catalogue

    def groups(self) -> CountryGroups:
        if self._groups is None:
            from gpucap.core.groups import default_groups  # groups imports this module

            self._groups = default_groups()
        return self._groups

    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            from gpucap.core.catalogue import default_catalogue

            self._catalogue = default_catalogue()
        return self._catalogue

    def group_names(self, node: _Reader, key: str) -> tuple[str, ...]:
        names = node.names(key)
        known = self.groups().names
        for i, name in enumerate(names):
            if name not in known:
                listed = ", ".join(sorted(known))
                raise DataError(f"{node.at(key)}[{i}]", f"no country group {name!r} ({listed})")
        return names

    def classes(self, node: _Reader, key: str, paragraph: str) -> Classes:
        """A `{value: [classes], source, confidence}` list, each a counted class."""
        item = node.child(key)
        value = item.raw.get("value")
        if not isinstance(value, list) or not value:
            raise DataError(item.at("value"), "expected a non-empty list of ECCN classes")
        for i, cls in enumerate(value):
            if cls not in self.counted:
                raise DataError(f"{item.at('value')}[{i}]", f"{cls!r} is not a counted class")
        return Classes(frozenset(str(c) for c in value), item.provenance(paragraph))

    def models(self, node: _Reader, key: str) -> frozenset[str]:
        """Catalogue model ids, each of a counted class."""
        item = node.child(key)
        value = item.raw.get("value")
        if not isinstance(value, list) or not value:
            raise DataError(item.at("value"), "expected a non-empty list of catalogue model ids")
        catalogue = self.catalogue()
        for i, model in enumerate(value):
            found = catalogue.get(str(model))
            where = f"{item.at('value')}[{i}]"
            if found is None:
                raise DataError(where, f"no catalogue model {model!r}")
            if found.eccn_class not in self.counted:
                raise DataError(where, f"{model} is {found.eccn_class}, not a counted class")
        return frozenset(str(m) for m in value)


def _parse_rule(node: _Reader, ctx: _Context) -> Rule:
    valid = ctx.valid
    rule_id = node.text("id")
    kind = node.text("kind")
    paragraph = node.text("paragraph", node.raw.get("id"))
    if kind == "country_allocation":
        limit, prov = node.sourced_number("limit_tpp", paragraph)
        multiplier, _ = node.sourced_number("gov_agreement_multiplier", paragraph)
        window = node.child("window")
        exempt = node.child("exempt")
        return CountryAllocation(
            rule_id,
            node.integer("tier"),
            window.day("start"),
            window.day("end"),
            limit,
            multiplier,
            frozenset(exempt.raw.get("basis") or ()),
            frozenset(exempt.raw.get("statuses") or ()),
            prov,
        )
    if kind == "consignee_annual":
        limit, prov = node.sourced_number("limit_tpp", paragraph)
        return ConsigneeAnnual(rule_id, node.text("basis"), limit, prov)
    if kind == "nveu_installed_base":
        rows = node.raw.get("schedule")
        if not isinstance(rows, list) or not rows:
            raise DataError(node.at("schedule"), "expected a non-empty list of quarters")
        anchors = []
        for i, row in enumerate(rows):
            item = _Reader(row, f"{node.at('schedule')}[{i}]")
            match = _QUARTER.match(str(item.raw.get("quarter", "")))
            if not match:
                raise DataError(item.at("quarter"), "expected a quarter like 2025Q4")
            anchors.append(
                ScheduleAnchor(
                    int(match[1]),
                    int(match[2]),
                    item.number("limit_tpp"),
                    str(item.raw.get("note", "")),
                    item.provenance(paragraph),
                )
            )
        anchors.sort(key=lambda a: (a.year, a.quarter))
        return NveuInstalledBase(rule_id, tuple(anchors), anchors[-1].provenance)
    if kind == "max_share_per_country":
        share, prov = node.sourced_number("max_share", paragraph)
        return MaxSharePerCountry(rule_id, node.text("status"), node.integer("tier"), share, prov)
    if kind == "min_share_in_region":
        share, prov = node.sourced_number("min_share", paragraph)
        region = node.child("region")
        hq = node.codes("headquarters", valid) if "headquarters" in node.raw else None
        countries = region.codes("countries", valid) if "countries" in region.raw else None
        tier = region.integer("tier") if "tier" in region.raw else None
        if (tier is None) == (countries is None):
            raise DataError(node.at("region"), "give exactly one of tier or countries")
        return MinShareInRegion(rule_id, node.text("status"), hq, tier, countries, share, prov)
    if kind == "prohibition":
        return Prohibition(rule_id, node.integer("tier"), node.provenance(paragraph))
    if kind == "destination_licence":
        test = node.child("destinations")
        any_of = ctx.group_names(test, "any_of")
        if not any_of:
            raise DataError(test.at("any_of"), "expected at least one country group")
        return DestinationLicence(
            rule_id,
            ctx.classes(node, "classes", paragraph),
            any_of,
            ctx.group_names(test, "none_of"),
            ctx.group_names(test, "also"),
            test.provenance(paragraph),
        )
    if kind == "headquarters_control":
        owner = node.child("headquarters")
        groups = ctx.group_names(owner, "groups")
        if not groups:
            raise DataError(owner.at("groups"), "expected at least one country group")
        home = node.child("home")
        tolerance = node.child("tolerance")
        return HeadquartersControl(
            rule_id,
            ctx.classes(node, "classes", paragraph),
            groups,
            owner.provenance(paragraph),
            home.codes("countries", valid),
            home.provenance(paragraph),
            tolerance.day("installed_before"),
            tolerance.note(),
            tolerance.provenance(paragraph),
            node.provenance(paragraph),
        )
    if kind == "licence_quantity":
        conversion = node.child("unit_conversion")
        return LicenceQuantity(
            rule_id, conversion.note(), conversion.provenance(paragraph), node.provenance(paragraph)
        )
    if kind == "model_prohibition":
        models = node.child("models")
        return ModelProhibition(
            rule_id, ctx.models(node, "models"), models.note(), models.provenance(paragraph)
        )
    raise DataError(node.at("kind"), f"unknown rule kind {kind!r}")


def _untiered(valid: frozenset[str], groups: CountryGroups) -> TierTable:
    """The table of a pack without tiers: no tier, territories treated as the groups say."""
    treated = tuple((t.code, t.country) for t in groups.treated_as)
    return TierTable(valid, frozenset(), frozenset(), (), treated, None, None, tiered=False)


def _group_tier(
    node: _Reader, ctx: _Context
) -> tuple[frozenset[str], list[tuple[date, frozenset[str], frozenset[str]]]]:
    """A tier given as the union of country groups (`groups: [D:5, Macau]`): its members before
    any dated change of those groups, and each change as (date, added, removed)."""
    names = ctx.group_names(node, "groups")
    if not names:
        raise DataError(node.at("groups"), "expected at least one country group")
    if "countries" in node.raw or "changes" in node.raw:
        raise DataError(node.path, "give groups, or countries with changes, not both")
    groups = ctx.groups()
    days = sorted({d for name in names for d in groups.changes(name)})

    def members(on: date) -> frozenset[str]:
        return frozenset().union(*(groups.members(name, on) for name in names))

    first = members(date.min)
    changes, previous = [], first
    for day in days:
        now = members(day)
        if now != previous:
            changes.append((day, now - previous, previous - now))
        previous = now
    return first, changes


def _parse_tiers(node: _Reader, valid: frozenset[str], ctx: _Context) -> TierTable:
    t1 = node.child("tier1")
    t3 = node.child("tier3")
    changes = []
    for i, row in enumerate(t3.raw.get("changes") or []):
        item = _Reader(row, f"{t3.at('changes')}[{i}]")
        add = item.codes("add", valid) if "add" in item.raw else frozenset()
        remove = item.codes("remove", valid) if "remove" in item.raw else frozenset()
        changes.append((item.day("date"), add, remove))
    if "groups" in t3.raw:
        tier3, changes = _group_tier(t3, ctx)
    else:
        tier3 = t3.codes("countries", valid)
    changes.sort(key=lambda c: c[0])
    treated = []
    for code, target in (node.raw.get("treated_as") or {}).items():
        item = _Reader(target, f"{node.at('treated_as')}.{code}")
        if code not in valid or item.raw.get("country") not in valid:
            raise DataError(item.path, "expected {country: CODE} for a valid code")
        treated.append((code, item.text("country")))
    tier1 = t1.codes("countries", valid)
    if tier1 & tier3:
        raise DataError(node.path, f"codes in both tier 1 and tier 3: {sorted(tier1 & tier3)}")
    return TierTable(
        valid,
        tier1,
        tier3,
        tuple(changes),
        tuple(treated),
        t1.provenance("tier 1"),
        t3.provenance("tier 3"),
    )


def parse_ruleset(
    doc: Any,
    valid_codes: frozenset[str],
    origin: str = "ruleset",
    *,
    groups: CountryGroups | None = None,
    catalogue: Catalogue | None = None,
) -> RulePack:
    """Validate a parsed rule pack. `groups` and `catalogue`: what its group names and model
    ids are checked against (default: the shipped ones, read only when the pack needs them)."""
    top = _Reader(doc, origin)
    pack_id = top.text("id")
    if not _ID.match(pack_id):
        raise DataError(top.at("id"), "expected lowercase letters, digits, '.', '_' or '-'")
    dates = []
    for name in top.child("dates").raw:
        item = top.child("dates").child(name)
        dates.append((name, item.day("value"), item.provenance(name)))
    periods = []
    for i, row in enumerate(top.raw.get("status") or []):
        item = _Reader(row, f"{top.at('status')}[{i}]")
        periods.append(
            StatusPeriod(
                item.day("from"),
                item.text("value"),
                " ".join(str(item.raw.get("note", "")).split()),
                item.provenance("status"),
            )
        )
    if not periods:
        raise DataError(top.at("status"), "expected at least one status period")
    periods.sort(key=lambda p: p.start)
    h100e, h100e_prov = top.child("reference_unit").sourced_number("h100e_tpp", "reference unit")
    counted = top.child("counted_classes")
    classes = counted.raw.get("value")
    if not isinstance(classes, list) or not classes:
        raise DataError(counted.at("value"), "expected a non-empty list of ECCN classes")
    rules_raw = top.raw.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise DataError(top.at("rules"), "expected a non-empty list")
    counted_classes = frozenset(str(c) for c in classes)
    ctx = _Context(valid_codes, counted_classes, groups, catalogue)
    rules = tuple(
        _parse_rule(_Reader(r, f"{top.at('rules')}[{i}]"), ctx) for i, r in enumerate(rules_raw)
    )
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise DataError(top.at("rules"), "rule ids must be unique")
    names_groups = any(isinstance(r, DestinationLicence | HeadquartersControl) for r in rules)
    if "tiers" in top.raw:
        tiers = _parse_tiers(top.child("tiers"), valid_codes, ctx)
    else:
        tiers = _untiered(valid_codes, ctx.groups())
    licence_classes = None
    if "licences" in top.raw:
        licence_classes = ctx.classes(top.child("licences"), "default_classes", "licences")
    elif any(isinstance(r, LicenceQuantity) for r in rules):
        raise DataError(top.at("licences"), "a pack with licence_quantity gives default_classes")
    uveu_tier = None
    if "uveu_headquarters_tier" in top.raw or "tiers" in top.raw:
        uveu_tier = top.child("uveu_headquarters_tier").integer("value")
    return RulePack(
        id=pack_id,
        version=str(top.raw.get("version", "")),
        title=top.text("title"),
        citation=top.text("citation"),
        dates=tuple(dates),
        status=tuple(periods),
        h100e_tpp=h100e,
        h100e_provenance=h100e_prov,
        counted_classes=counted_classes,
        tiers=tiers,
        uveu_headquarters_tier=uveu_tier,
        rules=rules,
        groups=ctx.groups() if names_groups or "tiers" not in top.raw else None,
        licence_classes=licence_classes,
    )


@cache
def country_codes() -> frozenset[str]:
    """The valid ISO 3166-1 alpha-2 codes (shipped data)."""
    doc = _Reader(read_yaml(shipped("iso3166.yaml")), "iso3166.yaml")
    codes = doc.raw.get("codes")
    if not isinstance(codes, list):
        raise DataError("iso3166.yaml.codes", "expected a list")
    return frozenset(str(c) for c in codes)


def available_rulesets() -> list[str]:
    """Ids of the packs shipped with gpucap."""
    return sorted(p.stem for p in shipped("rulesets").glob("*.yaml"))


def load_ruleset_file(path: Path) -> RulePack:
    """Read and validate a pack from a file."""
    return parse_ruleset(read_yaml(path), country_codes(), path.name)


@cache
def load_ruleset(ruleset_id: str) -> RulePack:
    """A shipped pack by id; InputError naming the known ids when there is none."""
    if not _ID.match(ruleset_id) or ruleset_id not in available_rulesets():
        known = ", ".join(available_rulesets())
        raise InputError("ruleset", f"unknown rule pack {ruleset_id!r} (known: {known})")
    pack = load_ruleset_file(shipped("rulesets", f"{ruleset_id}.yaml"))
    if pack.id != ruleset_id:
        raise DataError(f"{ruleset_id}.yaml.id", f"file declares id {pack.id!r}")
    return pack
