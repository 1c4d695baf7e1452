"""Evaluations with a SiteMemo equal evaluations from scratch, after any sequence of changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.engine import evaluate
from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.siteparts import SiteMemo
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


def _change(fleet: Fleet, data: st.DataObject) -> Fleet:
    """One random change of the kinds the ledger sees: a line added, removed, recounted or
    closed, or a site moved to another country (a registry change)."""
    lines = list(fleet.lines)
    kind = data.draw(st.sampled_from(["add", "drop", "count", "close", "move"]))
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
