"""The cap engine: a pure function of (fleet, rule pack, date) to checks and per-site totals.

The work per line is done per site (`siteparts.py`); the rules add the sites' parts up over
groups of sites (`checks.py`). A `Tally` is an evaluation together with the parts and per-group
sums it was added up from, so that `retally` can take a few changed sites' parts off and put
their new ones on, remaking only the checks of the groups they are in: after one site changed,
the work is that site's, not the fleet's. `evaluate(..., memo=)` finds the changed sites itself
by comparing each site's lines with last time's; the ledger, whose line reads know them, calls
`retally` directly.

Sums are exact: a line's TPP is a plain int when it is whole (catalogue TPP always is) and a
Fraction otherwise (int + Fraction is a Fraction), so tens of thousands of lines add as ints and
only the few figures a check reports become Fractions; taking a part off and on again is exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from itertools import chain

from gpucap.core.checks import BoundRule, Check, Status, bind
from gpucap.core.errors import InputError
from gpucap.core.fleet import Fleet, Line, Site
from gpucap.core.ruleset import RulePack
from gpucap.core.siteparts import Registry, SitePart, SiteTotal, Tpp, lines_by_site, site_part
from gpucap.core.siteparts import line_tpp as line_tpp  # re-exported: part of the engine's API

__all__ = [
    "Check",
    "Evaluation",
    "RulesetState",
    "SiteMemo",
    "SiteTotal",
    "Tally",
    "evaluate",
    "line_tpp",
    "retally",
    "tally",
]


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


def validate_fleet(fleet: Fleet, pack: RulePack, as_of: date) -> None:
    """Rule-dependent checks of a fleet (UVEU headquarters tier), as InputErrors."""
    for i, entity in enumerate(fleet.entities):
        if entity.status == "uveu" and pack.uveu_headquarters_tier is not None:
            tier = pack.tiers.tier(entity.headquarters, as_of)
            if tier != pack.uveu_headquarters_tier:
                raise InputError(
                    f"entities[{i}].headquarters",
                    f"UVEU status requires Tier {pack.uveu_headquarters_tier} headquarters; "
                    f"{entity.headquarters} is Tier {tier} under {pack.id} on {as_of}",
                )


def _ruleset_state(pack: RulePack, as_of: date, checks: Sequence[Check]) -> RulesetState:
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


class _Basis:
    """What a tally rests on besides the lines: the registry, pack and date, and the rules bound
    to them. Shared by a tally and every tally made from it."""

    def __init__(self, fleet: Fleet, pack: RulePack, as_of: date) -> None:
        self.pack, self.as_of = pack, as_of
        self.sites, self.entities, self.countries = fleet.sites, fleet.entities, fleet.countries
        self.licences = fleet.licences  # the registry and licence rules read them
        self.registry = Registry(fleet, pack, as_of)
        self.rules = bind(pack, fleet, self.registry, as_of)
        self.position = {s.id: i for i, s in enumerate(fleet.sites)}
        # Site ids are unique in every fleet we load; without that, no tally is re-added.
        self.unique = len(self.position) == len(fleet.sites)


GroupSums = dict[Hashable, dict[Hashable, Tpp]]  # one rule's sums: group -> component -> TPP
GroupChecks = dict[Hashable, list[Check]]  # one rule's checks by group


class Tally:
    """An evaluation and what it was added up from. Never modified: `retally` makes a new one
    that shares what did not change. `changed`: the positions in `evaluation.sites` whose totals
    are new since the tally this one was made from (None: made from scratch)."""

    __slots__ = (
        "_basis",
        "_by_rule",
        "_checks",
        "_counts",
        "_parts",
        "_sums",
        "changed",
        "evaluation",
    )

    def __init__(
        self,
        basis: _Basis,
        parts: Mapping[str, SitePart],
        sums: tuple[GroupSums, ...],
        counts: tuple[dict[Hashable, int], ...],
        checks: tuple[GroupChecks, ...],
        by_rule: tuple[tuple[Check, ...], ...],
        evaluation: Evaluation,
        changed: tuple[int, ...] | None,
    ) -> None:
        self._basis, self._parts, self._sums, self._counts = basis, parts, sums, counts
        self._checks, self._by_rule = checks, by_rule
        self.evaluation, self.changed = evaluation, changed

    def fits(self, fleet: Fleet, pack: RulePack) -> bool:
        """Whether `fleet` has this tally's registry and `pack` is its pack (then `retally`
        with the sites whose lines differ gives `fleet`'s evaluation)."""
        basis = self._basis
        return (
            basis.unique
            and basis.pack is pack
            and basis.sites is fleet.sites
            and basis.entities is fleet.entities
            and basis.countries == fleet.countries
            and basis.licences == fleet.licences
        )


def _in_order(rule: BoundRule, sums: GroupSums, checks: GroupChecks) -> tuple[Check, ...]:
    """One rule's checks in the engine's order: its groups', or its named groups' sorted."""
    groups = rule.groups if rule.groups is not None else sorted(sums)  # type: ignore[type-var]
    return tuple(c for g in groups for c in checks[g])


def _evaluation(
    basis: _Basis, by_rule: Sequence[tuple[Check, ...]], sites: tuple[SiteTotal, ...]
) -> Evaluation:
    checks = tuple(chain.from_iterable(by_rule))
    return Evaluation(
        ruleset=_ruleset_state(basis.pack, basis.as_of, checks),
        as_of=basis.as_of,
        h100e_tpp=basis.pack.h100e_tpp,
        checks=checks,
        sites=sites,
    )


def tally(
    fleet: Fleet,
    pack: RulePack,
    as_of: date,
    by_site: Mapping[str, Sequence[Line]] | None = None,
) -> Tally:
    """Evaluate `fleet` from scratch. `by_site`: its lines grouped by site, when the caller
    has them (`lines_by_site(fleet.lines)` otherwise)."""
    validate_fleet(fleet, pack, as_of)
    basis = _Basis(fleet, pack, as_of)
    lines = lines_by_site(fleet.lines) if by_site is None else by_site
    reg = basis.registry
    parts = {s.id: site_part(s, lines.get(s.id, ()), pack, as_of, reg) for s in fleet.sites}
    all_sums, all_counts, all_checks, by_rule = [], [], [], []
    for rule in basis.rules:
        sums: GroupSums = {}
        counts: dict[Hashable, int] = {}
        terms, dynamic = rule.terms, rule.groups is None  # counts matter to named groups only
        for site in fleet.sites:
            for group, component, tpp in terms(site, parts[site.id]):
                figures = sums.get(group)
                if figures is None:
                    figures = sums[group] = {}
                figures[component] = figures.get(component, 0) + tpp
                if dynamic:
                    counts[group] = counts.get(group, 0) + 1
        groups = rule.groups if rule.groups is not None else sums
        checks = {g: rule.checks(g, sums.get(g, {})) for g in groups}
        all_sums.append(sums)
        all_counts.append(counts)
        all_checks.append(checks)
        by_rule.append(_in_order(rule, sums, checks))
    evaluation = _evaluation(basis, by_rule, tuple(parts[s.id].total for s in fleet.sites))
    return Tally(
        basis,
        parts,
        tuple(all_sums),
        tuple(all_counts),
        tuple(all_checks),
        tuple(by_rule),
        evaluation,
        None,
    )


def retally(prev: Tally, changed: Mapping[str, Sequence[Line]]) -> Tally:
    """`prev`'s fleet after a change: `changed` holds every site whose lines differ from those
    `prev` was added up from, with all of its lines now (more sites do no harm; sites not in
    the registry are ignored). Only those sites' parts and their groups' checks are remade; the
    rest (parts, site totals, checks) are `prev`'s objects."""
    basis = prev._basis
    reg, pack, as_of = basis.registry, basis.pack, basis.as_of
    updates: list[tuple[int, Site, SitePart, SitePart]] = []
    for site_id, lines in changed.items():
        pos = basis.position.get(site_id)
        if pos is None:
            continue
        site = basis.sites[pos]
        old = prev._parts[site_id]
        new = site_part(site, lines, pack, as_of, reg)
        if new != old:  # an equal part keeps its object (and its site's document entry)
            updates.append((pos, site, old, new))
    ev = prev.evaluation
    if not updates:
        return Tally(
            basis, prev._parts, prev._sums, prev._counts, prev._checks, prev._by_rule, ev, ()
        )
    parts = dict(prev._parts)
    totals = list(ev.sites)
    for pos, site, _, new in updates:
        parts[site.id] = new
        totals[pos] = new.total
    all_sums, all_counts = list(prev._sums), list(prev._counts)
    all_checks, by_rule = list(prev._checks), list(prev._by_rule)
    moved = False
    for r, rule in enumerate(basis.rules):
        terms = [
            (term, sign)
            for _, site, old, new in updates
            for part, sign in ((old, -1), (new, 1))
            for term in rule.terms(site, part)
        ]
        if not terms:
            continue
        # Copy on write: the dicts of `prev` are shared, never changed.
        sums, counts, checks = dict(prev._sums[r]), dict(prev._counts[r]), dict(prev._checks[r])
        dynamic = rule.groups is None  # counts matter to named groups only
        own: set[Hashable] = set()
        for (group, component, tpp), sign in terms:
            if group not in own:
                sums[group] = dict(sums.get(group, {}))
                own.add(group)
            figures = sums[group]
            figures[component] = figures.get(component, 0) + sign * tpp
            if dynamic:
                counts[group] = counts.get(group, 0) + sign
        rule_moved = False
        for group in own:
            if dynamic and counts[group] == 0:  # no site names this group now
                del sums[group], counts[group], checks[group]
                rule_moved = True
                continue
            made, before = rule.checks(group, sums[group]), checks.get(group)
            if before is not None and len(before) == len(made):
                # An equal check keeps its object (and its document entry).
                made = [b if b == m else m for b, m in zip(before, made, strict=True)]
                if all(m is b for m, b in zip(made, before, strict=True)):
                    continue
            checks[group] = made
            rule_moved = True
        all_sums[r], all_counts[r], all_checks[r] = sums, counts, checks
        if rule_moved:
            by_rule[r] = _in_order(rule, sums, checks)
            moved = True
    if moved:
        evaluation = _evaluation(basis, by_rule, tuple(totals))
    else:
        evaluation = Evaluation(ev.ruleset, as_of, ev.h100e_tpp, ev.checks, tuple(totals))
    return Tally(
        basis,
        parts,
        tuple(all_sums),
        tuple(all_counts),
        tuple(all_checks),
        tuple(by_rule),
        evaluation,
        tuple(sorted(pos for pos, *_ in updates)),
    )


class SiteMemo:
    """The last tally per (date, pack) for `evaluate(..., memo=)`, with the lines of each site,
    so that an evaluation after a small change re-adds only the sites whose lines differ (lists
    of identical lines compare at C speed). A memo never changes an answer.

    Safe to share between threads: an evaluation reads one slot and replaces it whole.
    """

    def __init__(self, dates: int = 4) -> None:
        self._slots: OrderedDict[tuple[date, int], tuple[Tally, dict[str, list[Line]]]]
        self._slots = OrderedDict()
        self._dates = dates

    def evaluate(self, fleet: Fleet, pack: RulePack, as_of: date) -> Evaluation:
        key = (as_of, id(pack))
        by_site = lines_by_site(fleet.lines)
        slot = self._slots.get(key)
        if slot is not None and slot[0].fits(fleet, pack):
            known = slot[1]
            none: list[Line] = []
            changed = {}
            for site in fleet.sites:
                lines = by_site.get(site.id, none)
                if lines != known.get(site.id, none):
                    changed[site.id] = lines
            made = retally(slot[0], changed)
        else:
            made = tally(fleet, pack, as_of, by_site)
        self._slots[key] = (made, by_site)
        self._slots.move_to_end(key)
        while len(self._slots) > self._dates:
            self._slots.popitem(last=False)
        return made.evaluation


def evaluate(fleet: Fleet, pack: RulePack, as_of: date, memo: SiteMemo | None = None) -> Evaluation:
    """Apply every rule of `pack` to `fleet` on `as_of`.

    `memo` (optional, the caller's) keeps the last tally so that only sites whose lines changed
    are recomputed; the answer is the same with or without it.
    """
    if memo is None:
        return tally(fleet, pack, as_of).evaluation
    return memo.evaluate(fleet, pack, as_of)
