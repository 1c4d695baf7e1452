"""Hypothesis properties of the engine."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.engine import Evaluation, evaluate
from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.ruleset import load_ruleset

PACK = load_ruleset("us-bis-ai-diffusion-2025")
COUNTRIES = ["US", "DE", "AE", "SA", "IN", "CN", "HK", "KH"]
START = date(2025, 1, 1)
days = st.integers(min_value=0, max_value=4 * 365).map(lambda n: START + timedelta(days=n))
CAP_KINDS = ("cap", "prohibition")


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    entities = [
        Entity("acme", "US", "uveu"),
        Entity("eu", "DE", "uveu"),
        Entity("nimbus", "AE", "nveu", frozenset({"AE", "IN"})),
        Entity("orbit", "IN", "none"),
    ]
    sites = [
        Site(f"{e.id}-{c}".lower(), e.id, c)
        for e in entities
        for c in draw(st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=4, unique=True))
    ]
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        site = draw(st.sampled_from(sites))
        installed = draw(days)
        removed = draw(st.none() | days.filter(lambda d, i=installed: d > i))
        lines.append(
            Line(
                site=site.id,
                count=draw(st.integers(1, 5000)),
                tpp_per_device=Fraction(draw(st.sampled_from([15832, 4992, 36000, 5864]))),
                eccn_class="3A090.a",
                installed=installed,
                removed=removed,
                basis=draw(st.sampled_from(["standard", "standard", "lpp"])),
            )
        )
    return Fleet(PACK.id, tuple(entities), tuple(sites), tuple(lines))


def by_scope(ev: Evaluation) -> dict[tuple[str, str], Fraction]:
    return {(c.rule, c.scope): c.headroom_tpp for c in ev.checks}


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_adding_a_device_never_raises_headroom(
    fleet: Fleet, as_of: date, data: st.DataObject
) -> None:
    site = data.draw(st.sampled_from(fleet.sites))
    added = Line(
        site.id,
        data.draw(st.integers(1, 100)),
        Fraction(data.draw(st.sampled_from([15832, 1]))),
        "3A090.a",
        data.draw(days),
        None,
        data.draw(st.sampled_from(["standard", "lpp"])),
    )
    before = evaluate(fleet, PACK, as_of)
    after = evaluate(replace(fleet, lines=(*fleet.lines, added)), PACK, as_of)
    after_headroom = by_scope(after)
    country = PACK.tiers.resolve(site.country)
    for c in before.checks:
        key = (c.rule, c.scope)
        if c.kind in CAP_KINDS:
            assert after_headroom[key] <= c.headroom_tpp, key
        if c.kind == "max_share" and c.scope == f"entity:{site.entity}/country:{country}":
            assert after_headroom[key] <= c.headroom_tpp, key


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_splitting_a_line_changes_nothing(fleet: Fleet, as_of: date, data: st.DataObject) -> None:
    candidates = [ln for ln in fleet.lines if ln.count > 1]
    if not candidates:
        return
    target = data.draw(st.sampled_from(candidates))
    first = data.draw(st.integers(1, target.count - 1))
    lines = list(fleet.lines)
    lines.remove(target)
    lines += [replace(target, count=first), replace(target, count=target.count - first)]
    whole = evaluate(fleet, PACK, as_of)
    split = evaluate(replace(fleet, lines=tuple(lines)), PACK, as_of)
    assert whole == split


@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), as_of=days, data=st.data())
def test_share_headroom_is_exact(fleet: Fleet, as_of: date, data: st.DataObject) -> None:
    """Adding exactly the reported headroom where it applies lands exactly on the limit."""
    ev = evaluate(fleet, PACK, as_of)
    shares = [c for c in ev.checks if c.kind in ("max_share", "min_share") and c.headroom_tpp > 0]
    if not shares:
        return
    c = data.draw(st.sampled_from(shares))
    entity = c.scope.split("/")[0].removeprefix("entity:")
    own = [s for s in fleet.sites if s.entity == entity]
    if c.kind == "max_share":
        country = c.scope.rsplit(":", 1)[1]
        site = next(s for s in own if PACK.tiers.resolve(s.country) == country)
        new_site = site
    else:  # add outside the region: a Tier 2 site of the entity, or a new one in SA
        region_us = c.rule == "uveu_us_share"
        outside = [
            s
            for s in own
            if (s.country != "US" if region_us else PACK.tiers.tier(s.country, as_of) != 1)
            and PACK.tiers.tier(s.country, as_of) == 2
        ]
        new_site = outside[0] if outside else Site(f"{entity}-new-sa", entity, "SA")
    sites = fleet.sites if new_site in fleet.sites else (*fleet.sites, new_site)
    added = Line(new_site.id, 1, c.headroom_tpp, "3A090.a", as_of)
    after = evaluate(replace(fleet, sites=sites, lines=(*fleet.lines, added)), PACK, as_of)
    landed = next(x for x in after.checks if (x.rule, x.scope) == (c.rule, c.scope))
    assert landed.share == c.limit_share
    assert landed.headroom_tpp == 0
    assert landed.status == "ok"
