"""Why a check's number is what it is: each line's part of the figures the check is made from.

The engine reduces each site's lines to a part (`siteparts.py`) and each rule adds the parts'
terms up over groups (`checks.py`). Both steps are sums over lines, so a line's contribution to
a check is the term that rule makes from a part of that one line, in the check's group. Adding
the contributions gives the check's figures exactly (int and Fraction sums): `used_tpp`, for
share rules `total_tpp` too, and for headquarters_control `tolerated_tpp`. Callers may split a
line (one observed line into its nodes' devices) as long as the pieces add up to the fleet's
lines; `explain` checks that they do.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from gpucap.core.checks import BoundRule, Check, bind
from gpucap.core.engine import evaluate
from gpucap.core.errors import InputError
from gpucap.core.fleet import Fleet, Line, Site
from gpucap.core.ruleset import RulePack
from gpucap.core.siteparts import Registry, Tpp, lines_by_site, site_part


@dataclass(frozen=True)
class Piece:
    """A line (or part of one) that may contribute, with the caller's label for it."""

    line: Line
    tag: Any


@dataclass(frozen=True)
class Contribution:
    """A piece's part of one of the check's figures (`used_tpp`, `total_tpp` or
    `tolerated_tpp`)."""

    piece: Piece
    figure: str
    tpp: Tpp


@dataclass(frozen=True)
class Explanation:
    check: Check
    contributions: tuple[Contribution, ...]

    def total(self, figure: str) -> Tpp:
        return sum((c.tpp for c in self.contributions if c.figure == figure), 0)


def _figure(check: Check, component: Hashable) -> str | None:
    """Which figure of `check` a term's component adds to (None: another check's)."""
    if check.kind == "max_share":
        if component is None:
            return "total_tpp"
        return "used_tpp" if f"country:{component}" in check.scope.split("/") else None
    if check.kind == "min_share":
        return "total_tpp" if component is None else "used_tpp"
    if component == "tolerated":
        return "tolerated_tpp"
    # Other components of caps and prohibitions are what a note lists, not a figure.
    return "used_tpp" if component is None else None


def explain(
    fleet: Fleet,
    pack: RulePack,
    as_of: date,
    rule_id: str,
    scope: str,
    pieces: Callable[[str], Sequence[Piece]],
) -> Explanation:
    """The check of `rule_id` for `scope` and every piece's contribution to it; `pieces(site)`
    gives a site's pieces, asked for only for the sites the check's group adds up.

    InputError names `rule` or `scope` when there is no such check; ValueError when the pieces
    do not add up to the check (they were not the fleet's lines).
    """
    ids = [r.id for r in pack.rules]
    if rule_id not in ids:
        raise InputError("rule", f"no rule {rule_id!r} in {pack.id} (rules: {', '.join(ids)})")
    evaluation = evaluate(fleet, pack, as_of)
    check = next((c for c in evaluation.checks if c.rule == rule_id and c.scope == scope), None)
    if check is None:
        raise InputError("scope", f"{rule_id} has no check for scope {scope!r} on {as_of}")
    registry = Registry(fleet, pack, as_of)
    bound = bind(pack, fleet, registry, as_of)[ids.index(rule_id)]
    group, in_group = _group(bound, fleet, pack, as_of, registry, check)
    out: list[Contribution] = []
    for site in in_group:
        for piece in pieces(site.id):
            if piece.line.site != site.id:
                raise ValueError(f"a piece of site {piece.line.site} given for {site.id}")
            part = site_part(site, [piece.line], pack, as_of, registry)
            for g, component, tpp in bound.terms(site, part):
                figure = _figure(check, component)
                if g == group and figure is not None and tpp != 0:
                    out.append(Contribution(piece, figure, tpp))
    made = Explanation(check, tuple(out))
    expected = {"used_tpp": check.used_tpp}
    if check.total_tpp is not None:
        expected["total_tpp"] = check.total_tpp
    if check.tolerated_tpp is not None:
        expected["tolerated_tpp"] = check.tolerated_tpp
    for figure, want in expected.items():
        if made.total(figure) != want:
            raise ValueError(f"the pieces add up to {made.total(figure)} {figure}, not {want}")
    return made


def _group(
    bound: BoundRule, fleet: Fleet, pack: RulePack, as_of: date, registry: Registry, check: Check
) -> tuple[Hashable, list[Site]]:
    """The group of `bound` whose checks include `check`, and the sites that add to it."""
    sums: dict[Hashable, dict[Hashable, Tpp]] = {}
    members: dict[Hashable, list[Site]] = {}
    by_site = lines_by_site(fleet.lines)
    for site in fleet.sites:
        part = site_part(site, by_site.get(site.id, []), pack, as_of, registry)
        for g, component, tpp in bound.terms(site, part):
            group = sums.setdefault(g, {})
            group[component] = group.get(component, 0) + tpp
            held = members.setdefault(g, [])
            if not held or held[-1] is not site:
                held.append(site)
    groups = bound.groups if bound.groups is not None else list(sums)
    for g in groups:
        if any(c.scope == check.scope for c in bound.checks(g, sums.get(g, {}))):
            return g, members.get(g, [])
    raise ValueError(f"no group of {check.rule} makes {check.scope}")  # the engine made it
