"""Evaluations with a SiteMemo, and tallies re-added after a change (`retally`), equal
evaluations from scratch, after any sequence of changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.engine import SiteMemo, evaluate, retally, tally
from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.siteparts import lines_by_site
from tests.core.test_properties import COUNTRIES, PACK, days, fleets


def _line(data: st.DataObject, sites: tuple[Site, ...]) -> Line:
    installed = data.draw(days)
    return Line(
        site=data.draw(st.sampled_from(sites)).id,
        count=data.draw(st.integers(1, 5000)),
        tpp_per_device=Fraction(data.draw(st.sampled_from([15832, 36000, Fraction(9, 2)]))),
        eccn_class=data.draw(st.sampled_from(["3A090.a", "3A090.a", "4A090.a", "EAR99"])),
        installed=installed,
        removed=data.draw(st.none() | days.filter(lambda d: d > installed)),
        basis=data.draw(st.sampled_from(["standard", "lpp"])),
    )


def _change(
    fleet: Fleet,
    data: st.DataObject,
    kinds: tuple[str, ...] = ("add", "drop", "count", "close", "move"),
) -> Fleet:
    """One random change of the kinds the ledger sees: a line added, removed, recounted or
    closed, or a site moved to another country (a registry change)."""
    lines = list(fleet.lines)
    kind = data.draw(st.sampled_from(kinds))
    if kind == "add" or not lines:
        lines.insert(data.draw(st.integers(0, len(lines))), _line(data, fleet.sites))
    elif kind == "move":
        i = data.draw(st.integers(0, len(fleet.sites) - 1))
        site = replace(fleet.sites[i], country=data.draw(st.sampled_from(COUNTRIES)))
        sites = (*fleet.sites[:i], site, *fleet.sites[i + 1 :])
        return replace(fleet, sites=sites)
    else:
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "drop":
            del lines[i]
        elif kind == "count":
            lines[i] = replace(lines[i], count=data.draw(st.integers(1, 5000)))
        else:
            lines[i] = replace(lines[i], removed=max(lines[i].installed, data.draw(days)))
    return replace(fleet, lines=tuple(lines))


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(), data=st.data())
def test_memo_answers_equal_fresh_answers(fleet: Fleet, data: st.DataObject) -> None:
    memo = SiteMemo(dates=2)
    as_ofs: list[date] = data.draw(st.lists(days, min_size=1, max_size=3))
    for step in range(data.draw(st.integers(1, 8))):
        if step:
            fleet = _change(fleet, data)
        as_of = data.draw(st.sampled_from(as_ofs))
        assert evaluate(fleet, PACK, as_of, memo) == evaluate(fleet, PACK, as_of)


def test_unchanged_sites_reuse_their_parts() -> None:
    """After one line changes, only its site's part is new (the others are the same objects)."""
    sites = tuple(Site(f"s{i}", "acme", "DE") for i in range(3))

    line = Line("s0", 8, Fraction(15832), "3A090.a", date(2025, 3, 1))
    fleet = Fleet(
        PACK.id,
        (Entity("acme", "US", "none"),),
        sites,
        tuple(replace(line, site=s.id) for s in sites),
    )
    memo = SiteMemo()
    first = evaluate(fleet, PACK, date(2025, 6, 1), memo)
    changed = replace(fleet, lines=(replace(line, count=9), *fleet.lines[1:]))
    second = evaluate(changed, PACK, date(2025, 6, 1), memo)
    assert second == evaluate(changed, PACK, date(2025, 6, 1))
    assert second.sites[0] is not first.sites[0]
    assert second.sites[1] is first.sites[1]
    assert second.sites[2] is first.sites[2]


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), data=st.data())
def test_retally_of_the_changed_sites_equals_a_fresh_evaluation(
    fleet: Fleet, data: st.DataObject
) -> None:
    """Given every site whose lines changed (and maybe more, and names of no site), `retally`
    answers as a fresh evaluation does, and keeps the other sites' totals (same objects)."""
    as_of = data.draw(days)
    made = tally(fleet, PACK, as_of)
    ids = [s.id for s in fleet.sites]
    for _ in range(data.draw(st.integers(1, 6))):
        new = _change(fleet, data, ("add", "drop", "count", "close"))
        old_lines, new_lines = lines_by_site(fleet.lines), lines_by_site(new.lines)
        differ = {i for i in ids if old_lines.get(i, []) != new_lines.get(i, [])}
        extra = set(data.draw(st.lists(st.sampled_from([*ids, "no-such-site"]), max_size=3)))
        assert made.fits(new, PACK)
        after = retally(made, {i: new_lines.get(i, []) for i in differ | extra})
        assert after.evaluation == evaluate(new, PACK, as_of)
        assert after.changed is not None
        for pos, total in enumerate(after.evaluation.sites):
            if pos not in after.changed:
                assert total is made.evaluation.sites[pos]
        assert {ids[p] for p in after.changed} <= differ
        made, fleet = after, new
    moved = replace(fleet, sites=(replace(fleet.sites[0], country="CN"), *fleet.sites[1:]))
    assert not made.fits(moved, PACK)  # a registry change: a new tally, never a retally


def test_a_group_no_site_names_any_more_loses_its_check() -> None:
    """Consignee-year checks exist only for years some site installed lines of the basis in."""
    site = Site("s0", "acme", "DE")
    lpp = Line("s0", 8, Fraction(15832), "3A090.a", date(2025, 3, 1), basis="lpp")
    fleet = Fleet(PACK.id, (Entity("acme", "US", "none"),), (site,), (lpp,))
    made = tally(fleet, PACK, date(2025, 6, 1))
    assert any(c.scope == "consignee:acme/year:2025" for c in made.evaluation.checks)
    after = retally(made, {"s0": []})
    assert not any(c.scope.startswith("consignee:") for c in after.evaluation.checks)
    assert after.evaluation == evaluate(replace(fleet, lines=()), PACK, date(2025, 6, 1))
    again = retally(after, {"s0": [lpp]})
    assert again.evaluation == made.evaluation
