"""EAR Country Groups (Supplement No. 1 to 15 CFR part 740) by date, from a data file.

Membership is a list of dated periods per group: `from` is the first day a country is a member
(inclusive), `until` the first day it no longer is (exclusive); either may be open. A territory
in `treated_as` (Hong Kong) is counted as its country (China) for every group, so lookups resolve
the code first and never list the territory itself.

Asking about a group the file does not define raises `DataError` (path `<file>.groups`): the
group name comes from another data file (a rule pack), not from a user; a pack should check its
names against `CountryGroups.names` when it is read, to name its own field instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any

from gpucap.core.catalogue import CONFIDENCE_LABELS
from gpucap.core.data import parse_day, read_yaml, require_mapping, shipped
from gpucap.core.errors import DataError

SCHEMA = "gpucap.country-groups/v1"
_GROUP = re.compile(r"^[A-Za-z][A-Za-z0-9:._-]*$")
_TOP_KEYS = frozenset({"schema", "description", "treated_as", "groups"})
_TREATED_KEYS = frozenset({"country", "source", "confidence", "note"})
_GROUP_KEYS = frozenset({"title", "source", "confidence", "note", "members"})
_MEMBER_KEYS = frozenset({"countries", "from", "until", "source", "confidence", "note"})


@dataclass(frozen=True)
class Membership:
    """One country's membership of one group from `start` (inclusive) to `end` (exclusive)."""

    country: str
    group: str
    start: date | None  # None: since before any date a pack uses
    end: date | None  # None: still a member
    source: str
    confidence: str

    def covers(self, on: date) -> bool:
        """Whether the period includes the day `on`."""
        return (self.start is None or self.start <= on) and (self.end is None or on < self.end)


@dataclass(frozen=True)
class TreatedAs:
    """A territory counted as another country for every group (HK -> CN), with provenance."""

    code: str
    country: str
    source: str
    confidence: str


@dataclass(frozen=True)
class CountryGroups:
    """Dated group membership; every lookup resolves `treated_as` territories first."""

    names: frozenset[str]
    periods: tuple[Membership, ...]
    treated_as: tuple[TreatedAs, ...]
    origin: str = "country-groups"
    _by_group: dict[str, tuple[Membership, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_group: dict[str, list[Membership]] = {name: [] for name in self.names}
        for period in self.periods:
            by_group[period.group].append(period)
        # A frozen dataclass sets its derived index through object.__setattr__.
        object.__setattr__(self, "_by_group", {k: tuple(v) for k, v in by_group.items()})

    def _group(self, group: str) -> tuple[Membership, ...]:
        found = self._by_group.get(group)
        if found is None:
            known = ", ".join(sorted(self.names))
            raise DataError(f"{self.origin}.groups", f"no country group {group!r} (known: {known})")
        return found

    def resolve(self, code: str) -> str:
        """The country a territory is treated as (HK -> CN), else the code itself."""
        for item in self.treated_as:
            if item.code == code:
                return item.country
        return code

    def membership(self, code: str, group: str, on: date) -> Membership | None:
        """The period in which `code` (resolved) is a member of `group` on `on`, or None."""
        country = self.resolve(code)
        for period in self._group(group):
            if period.country == country and period.covers(on):
                return period
        return None

    def is_member(self, code: str, group: str, on: date) -> bool:
        """Whether `code` (resolved) is in `group` on `on`."""
        return self.membership(code, group, on) is not None

    def groups_of(self, code: str, on: date) -> frozenset[str]:
        """Every group `code` (resolved) belongs to on `on`."""
        country = self.resolve(code)
        return frozenset(p.group for p in self.periods if p.country == country and p.covers(on))

    def members(self, group: str, on: date) -> frozenset[str]:
        """The listed countries of `group` on `on` (territories treated as them not included)."""
        return frozenset(p.country for p in self._group(group) if p.covers(on))

    def changes(self, group: str) -> tuple[date, ...]:
        """The dates on which membership of `group` changes, sorted."""
        days = {d for p in self._group(group) for d in (p.start, p.end) if d is not None}
        return tuple(sorted(days))


# --- parsing -----------------------------------------------------------------------------------


def _check_keys(raw: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise DataError(f"{path}.{key}", f"unknown field (expected one of: {known})")


def _text(raw: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}.{key}", "expected a non-empty string")
    return value


def _confidence(raw: dict[str, Any], path: str, default: str | None = None) -> str:
    value = _text(raw, "confidence", path, default)
    if value not in CONFIDENCE_LABELS:
        known = " | ".join(CONFIDENCE_LABELS)
        raise DataError(f"{path}.confidence", f"expected one of {known}, got {value!r}")
    return value


def _day(raw: dict[str, Any], key: str, path: str) -> date | None:
    if key not in raw:
        return None
    try:
        return parse_day(raw[key])
    except ValueError as exc:
        raise DataError(f"{path}.{key}", str(exc)) from None


def _code(value: Any, valid: frozenset[str], path: str) -> str:
    if not isinstance(value, str) or value not in valid:
        raise DataError(path, f"not an ISO 3166-1 alpha-2 code: {value!r}")
    return value


def _parse_treated(raw: Any, valid: frozenset[str], path: str) -> tuple[TreatedAs, ...]:
    if raw is None:
        return ()
    items = []
    for code, target in require_mapping(raw, path).items():
        where = f"{path}.{code}"
        _code(code, valid, where)
        node = require_mapping(target, where)
        _check_keys(node, _TREATED_KEYS, where)
        country = _code(node.get("country"), valid, f"{where}.country")
        if country == code:
            raise DataError(f"{where}.country", "a territory cannot be treated as itself")
        items.append(
            TreatedAs(code, country, _text(node, "source", where), _confidence(node, where))
        )
    territories = {t.code for t in items}
    for item in items:
        if item.country in territories:
            raise DataError(
                f"{path}.{item.code}.country", f"{item.country} is itself treated as another code"
            )
    return tuple(items)


def _parse_group(
    name: str, raw: Any, valid: frozenset[str], territories: frozenset[str], path: str
) -> list[Membership]:
    node = require_mapping(raw, path)
    _check_keys(node, _GROUP_KEYS, path)
    _text(node, "title", path)
    source = node.get("source")
    confidence = node.get("confidence")
    if "confidence" in node:
        _confidence(node, path)
    if "source" in node:
        _text(node, "source", path)
    rows = node.get("members")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}.members", "expected a non-empty list")
    periods: list[Membership] = []
    for i, row in enumerate(rows):
        where = f"{path}.members[{i}]"
        item = require_mapping(row, where)
        _check_keys(item, _MEMBER_KEYS, where)
        start = _day(item, "from", where)
        end = _day(item, "until", where)
        if start is not None and end is not None and end <= start:
            raise DataError(f"{where}.until", f"must be after from ({start.isoformat()})")
        item_source = _text(item, "source", where, source)
        item_confidence = _confidence(item, where, confidence)
        codes = item.get("countries")
        if not isinstance(codes, list) or not codes:
            raise DataError(f"{where}.countries", "expected a non-empty list of country codes")
        for j, value in enumerate(codes):
            code = _code(value, valid, f"{where}.countries[{j}]")
            if code in territories:
                raise DataError(
                    f"{where}.countries[{j}]",
                    f"{code} is in treated_as; list the country it is treated as",
                )
            period = Membership(code, name, start, end, item_source, item_confidence)
            for other in periods:
                if other.country == code and _overlap(other, period):
                    raise DataError(
                        f"{where}.countries[{j}]",
                        f"{code} is already a member of {name} in an overlapping period "
                        f"({_span(other)})",
                    )
            periods.append(period)
    return periods


def _overlap(a: Membership, b: Membership) -> bool:
    a_before_b = a.end is not None and b.start is not None and a.end <= b.start
    b_before_a = b.end is not None and a.start is not None and b.end <= a.start
    return not (a_before_b or b_before_a)


def _span(m: Membership) -> str:
    start = m.start.isoformat() if m.start else "open"
    end = m.end.isoformat() if m.end else "open"
    return f"from {start} until {end}"


def parse_groups(
    doc: Any, valid_codes: frozenset[str], origin: str = "country-groups"
) -> CountryGroups:
    """Validate a parsed country-groups file; DataError naming the field path otherwise."""
    top = require_mapping(doc, origin)
    _check_keys(top, _TOP_KEYS, origin)
    if top.get("schema") != SCHEMA:
        raise DataError(f"{origin}.schema", f"expected {SCHEMA!r}, got {top.get('schema')!r}")
    treated = _parse_treated(top.get("treated_as"), valid_codes, f"{origin}.treated_as")
    territories = frozenset(t.code for t in treated)
    groups = require_mapping(top.get("groups"), f"{origin}.groups")
    if not groups:
        raise DataError(f"{origin}.groups", "expected at least one group")
    periods: list[Membership] = []
    for name, raw in groups.items():
        if not isinstance(name, str) or not _GROUP.match(name):
            raise DataError(f"{origin}.groups.{name}", "expected a group name like 'D:5'")
        periods.extend(_parse_group(name, raw, valid_codes, territories, f"{origin}.groups.{name}"))
    return CountryGroups(frozenset(groups), tuple(periods), treated, origin)


@cache
def default_groups() -> CountryGroups:
    """The shipped country groups (`gpucap/data/country-groups.yaml`), read once on first use."""
    from gpucap.core.ruleset import country_codes  # ruleset may come to import this module

    return parse_groups(
        read_yaml(shipped("country-groups.yaml")), country_codes(), "country-groups.yaml"
    )
