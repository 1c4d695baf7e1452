"""Hypothesis properties of the us-ear-2026 rules: more devices never lower a licence's or a
prohibition's used TPP, splitting a line changes nothing, a re-tally after a change equals a
fresh evaluation, and every check is the sum of its lines' contributions."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.engine import Evaluation, SiteMemo, evaluate
from gpucap.core.explain import Piece, explain
from gpucap.core.fleet import Entity, Fleet, Licence, Line, Site
from gpucap.core.ruleset import load_ruleset

PACK = load_ruleset("us-ear-2026")
COUNTRIES = ["US", "AE", "SG", "CN", "HK", "KH", "CY", "MO", "DE"]
HEADQUARTERS = ["US", "SG", "CN", "HK", "KH", "MO", "AE"]
# The days a rule or group changes (Cambodia leaves D:5, the tolerance date, the UAE joins A:5)
# and the days either side, so that boundaries are drawn often; and any day of 2025-2027.
EDGES = [date(2026, 2, 3), date(2026, 5, 31), date(2026, 7, 10)]
START = date(2025, 1, 1)
days = st.one_of(
    st.sampled_from([d + timedelta(days=k) for d in EDGES for k in (-1, 0, 1)]),
    st.integers(0, 3 * 365).map(lambda n: START + timedelta(days=n)),
)
MODELS = [None, "ascend-910b", "h100-sxm5-80gb"]
CLASSES = ["3A090.a", "3A090.a", "3A090.b", "not_controlled"]


@st.composite
def lines_for(draw: st.DrawFn, sites: list[Site], licences: list[str]) -> Line:
    installed = draw(days)
    removed = draw(st.none() | days.filter(lambda d, i=installed: d > i))
    return Line(
        site=draw(st.sampled_from(sites)).id,
        count=draw(st.integers(2, 40)),
        tpp_per_device=Fraction(draw(st.sampled_from([15832, 5120, 1]))),
        eccn_class=draw(st.sampled_from(CLASSES)),
        installed=installed,
        removed=removed,
        model=draw(st.sampled_from(MODELS)),
        licence=draw(st.none() | st.sampled_from([*licences, "ghost"])),
    )


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    # A chain op -> mid -> top, and three independent entities.
    entities = [
        Entity("op", draw(st.sampled_from(HEADQUARTERS)), parent="mid"),
        Entity("mid", draw(st.sampled_from(HEADQUARTERS)), parent="top"),
        Entity("top", draw(st.sampled_from(HEADQUARTERS))),
        Entity("g42", "AE"),
        Entity("kh", "KH"),
        Entity("mo", "MO", parent=draw(st.sampled_from([None, "top"]))),
    ]
    sites = [
        Site(f"{e.id}-{c}".lower(), e.id, c)
        for e in entities
        for c in draw(st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=3, unique=True))
    ]
    licences = []
    for i in range(draw(st.integers(0, 3))):
        start = draw(days)
        until = draw(st.none() | days.filter(lambda d, s=start: d >= s))
        units = draw(st.booleans())
        licences.append(
            Licence(
                f"L{i}",
                draw(st.sampled_from(entities)).id,
                frozenset(draw(st.lists(st.sampled_from([s.id for s in sites]), max_size=2))),
                frozenset(draw(st.lists(st.sampled_from(COUNTRIES), max_size=2))),
                start,
                until,
                limit_tpp=None if units else Fraction(draw(st.integers(0, 2_000_000))),
                limit_units=draw(st.integers(0, 100)) if units else None,
                unit_model="h100-sxm5-80gb" if units else None,
                unit_tpp=Fraction(15832) if units else None,
                classes=draw(st.none() | st.just(frozenset({"3A090.a"}))),
            )
        )
    ids = [lic.id for lic in licences]
    lines = draw(st.lists(lines_for(sites, ids), min_size=1, max_size=12))
    return Fleet(PACK.id, tuple(entities), tuple(sites), tuple(lines), licences=tuple(licences))


def used(ev: Evaluation) -> dict[tuple[str, str], Fraction]:
    return {(c.rule, c.scope): c.used_tpp for c in ev.checks}


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_adding_a_device_never_lowers_used_tpp(
    fleet: Fleet, as_of: date, data: st.DataObject
) -> None:
    added = data.draw(lines_for(list(fleet.sites), [lic.id for lic in fleet.licences]))
    before = evaluate(fleet, PACK, as_of)
    after = used(evaluate(replace(fleet, lines=(*fleet.lines, added)), PACK, as_of))
    for check in before.checks:
        assert check.kind in ("cap", "prohibition")
        key = (check.rule, check.scope)
        assert key in after, key  # a check never disappears when a device is added
        assert after[key] >= check.used_tpp, key


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_splitting_a_line_changes_nothing(fleet: Fleet, as_of: date, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(fleet.lines))  # every line has 2 devices or more
    first = data.draw(st.integers(1, target.count - 1))
    lines = list(fleet.lines)
    lines.remove(target)
    lines += [replace(target, count=first), replace(target, count=target.count - first)]
    assert evaluate(fleet, PACK, as_of) == evaluate(replace(fleet, lines=tuple(lines)), PACK, as_of)


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_retally_after_a_change_equals_a_fresh_evaluation(
    fleet: Fleet, as_of: date, data: st.DataObject
) -> None:
    memo = SiteMemo()
    assert memo.evaluate(fleet, PACK, as_of) == evaluate(fleet, PACK, as_of)
    # Change one site: drop some of its lines and add others (groups may appear or vanish).
    site = data.draw(st.sampled_from(fleet.sites))
    kept = [ln for ln in fleet.lines if ln.site != site.id or data.draw(st.booleans())]
    ids = [lic.id for lic in fleet.licences]
    added = data.draw(st.lists(lines_for([site], ids), max_size=3))
    changed = replace(fleet, lines=(*kept, *added))
    assert memo.evaluate(changed, PACK, as_of) == evaluate(changed, PACK, as_of)


@settings(max_examples=60, deadline=None)
@given(fleet=fleets(), as_of=days)
def test_every_check_is_the_sum_of_its_lines(fleet: Fleet, as_of: date) -> None:
    by_site: dict[str, list[Piece]] = {}
    for i, line in enumerate(fleet.lines):
        by_site.setdefault(line.site, []).append(Piece(line, i))
    for check in evaluate(fleet, PACK, as_of).checks:
        made = explain(fleet, PACK, as_of, check.rule, check.scope, lambda s: by_site.get(s, []))
        assert made.total("used_tpp") == check.used_tpp
        assert made.total("tolerated_tpp") == (check.tolerated_tpp or 0)
