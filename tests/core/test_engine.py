"""Table tests for every rule kind at and around its boundaries."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest

from gpucap.core.engine import Check, Evaluation, evaluate
from gpucap.core.errors import InputError
from gpucap.core.fleet import Fleet
from gpucap.core.ruleset import load_ruleset
from tests.core.fleets import H100, fleet, line

PACK = load_ruleset("us-bis-ai-diffusion-2025")
LIMIT = Fraction(790_000_000)
LPP = Fraction(26_900_000)
D = date


def run(f: Fleet, as_of: date) -> Evaluation:
    return evaluate(f, PACK, as_of)


def check(ev: Evaluation, rule: str, scope: str) -> Check:
    found = [c for c in ev.checks if c.rule == rule and c.scope == scope]
    assert len(found) == 1, [(c.rule, c.scope) for c in ev.checks]
    return found[0]


ORBIT = [("orbit", "IN", "none", ())]
ORBIT_IN = [("in1", "orbit", "IN")]


@pytest.mark.parametrize(
    ("installed", "counted"),
    [
        (D(2025, 1, 12), False),  # the day before the window opens
        (D(2025, 1, 13), True),  # first day of the window
        (D(2027, 12, 31), True),  # last day of the window
        (D(2028, 1, 1), False),  # after the window
    ],
)
def test_allocation_window_edges(installed: date, counted: bool) -> None:
    ev = run(fleet(ORBIT, ORBIT_IN, [line("in1", 10, installed)]), D(2028, 6, 30))
    c = check(ev, "country_allocation", "country:IN")
    assert c.used_tpp == (10 * H100 if counted else 0)
    assert c.note
    assert "window ended 2027-12-31" in c.note


def test_allocation_exactly_at_limit_is_ok_and_one_more_breaches() -> None:
    devices = int(LIMIT // H100)  # 49,899 H100 fit; remainder 8,632 TPP
    at = fleet(ORBIT, ORBIT_IN, [line("in1", devices, D(2025, 6, 1))])
    c = check(run(at, D(2026, 1, 1)), "country_allocation", "country:IN")
    assert (c.status, c.headroom_tpp) == ("ok", LIMIT - devices * H100)
    exact = fleet(ORBIT, ORBIT_IN, [line("in1", 1, D(2025, 6, 1), tpp=LIMIT)])
    assert check(run(exact, D(2026, 1, 1)), "country_allocation", "country:IN").status == "ok"
    over = fleet(ORBIT, ORBIT_IN, [line("in1", 1, D(2025, 6, 1), tpp=LIMIT + 1)])
    c = check(run(over, D(2026, 1, 1)), "country_allocation", "country:IN")
    assert (c.status, c.headroom_tpp) == ("breach", Fraction(-1))


def test_government_agreement_doubles_the_allocation() -> None:
    f = fleet(ORBIT, ORBIT_IN, [line("in1", 1, D(2025, 6, 1))], agreements=("IN",))
    c = check(run(f, D(2026, 1, 1)), "country_allocation", "country:IN")
    assert c.limit_tpp == 2 * LIMIT
    assert c.note == "limit x2 (government agreement)"


def test_removal_changes_installed_base_rules_but_not_the_allocation() -> None:
    entities = [("nimbus", "AE", "nveu", ("AE",)), ("orbit", "IN", "none", ())]
    sites = [("ae1", "nimbus", "AE"), ("in1", "orbit", "IN")]
    lines = [
        line("ae1", 100, D(2025, 6, 1), removed=D(2026, 1, 1)),
        line("in1", 100, D(2025, 6, 1), removed=D(2026, 1, 1)),
    ]
    before = run(fleet(entities, sites, lines), D(2025, 12, 31))
    after = run(fleet(entities, sites, lines), D(2026, 1, 1))  # removal day: gone
    nveu = "entity:nimbus/country:AE"
    assert check(before, "nveu_country_cap", nveu).used_tpp == 100 * H100
    assert check(after, "nveu_country_cap", nveu).used_tpp == 0
    for ev in (before, after):
        assert check(ev, "country_allocation", "country:IN").used_tpp == 100 * H100
        assert check(ev, "country_allocation", "country:AE").used_tpp == 0  # NVEU exempt


def test_removal_changes_uveu_shares() -> None:
    entities = [("acme", "US", "uveu", ())]
    sites = [("us1", "acme", "US"), ("ae1", "acme", "AE")]
    lines = [line("us1", 90, D(2025, 3, 1)), line("ae1", 10, D(2025, 3, 1), removed=D(2026, 3, 1))]
    f = fleet(entities, sites, lines)
    share = "entity:acme/country:AE"
    assert check(run(f, D(2026, 2, 28)), "uveu_tier2_country_share", share).status == "breach"
    after = check(run(f, D(2026, 3, 1)), "uveu_tier2_country_share", share)
    assert (after.status, after.share, after.used_tpp) == ("ok", 0, 0)


def test_lpp_calendar_rollover() -> None:
    lines = [
        line("in1", 1699, D(2025, 12, 31), basis="lpp"),
        line("in1", 1, D(2026, 1, 1), basis="lpp"),
    ]
    ev = run(fleet(ORBIT, ORBIT_IN, lines), D(2026, 6, 30))
    y25 = check(ev, "lpp_annual", "consignee:orbit/year:2025")
    y26 = check(ev, "lpp_annual", "consignee:orbit/year:2026")
    assert (y25.status, y25.headroom_tpp) == ("ok", LPP - 1699 * H100)
    assert (y26.used_tpp, y26.headroom_tpp) == (H100, LPP - H100)
    # LPP lines never count against the country allocation.
    assert check(ev, "country_allocation", "country:IN").used_tpp == 0
    # One more device in 2025 crosses the 26.9M TPP line.
    ev = run(
        fleet(ORBIT, ORBIT_IN, [*lines, line("in1", 1, D(2025, 7, 1), basis="lpp")]), D(2026, 6, 30)
    )
    assert check(ev, "lpp_annual", "consignee:orbit/year:2025").status == "breach"


def test_lpp_removal_does_not_give_it_back() -> None:
    lines = [line("in1", 1000, D(2025, 2, 1), removed=D(2025, 3, 1), basis="lpp")]
    ev = run(fleet(ORBIT, ORBIT_IN, lines), D(2025, 12, 31))
    assert check(ev, "lpp_annual", "consignee:orbit/year:2025").used_tpp == 1000 * H100


@pytest.mark.parametrize(
    ("country", "as_of", "tier3"),
    [
        ("HK", D(2026, 6, 30), "country:CN"),  # Hong Kong is treated as China
        ("MO", D(2026, 6, 30), "country:MO"),
        ("KH", D(2026, 2, 2), "country:KH"),  # Cambodia leaves D:5 on 2026-02-03
        ("KH", D(2026, 2, 3), None),
    ],
)
def test_tier3_prohibition(country: str, as_of: date, tier3: str | None) -> None:
    f = fleet(
        [("orbit", "SG", "none", ())], [("x", "orbit", country)], [line("x", 1, D(2025, 6, 1))]
    )
    ev = run(f, as_of)
    prohibitions = [c for c in ev.checks if c.rule == "tier3_prohibition"]
    if tier3 is None:
        assert prohibitions == []
        assert check(ev, "country_allocation", f"country:{country}").used_tpp == H100
    else:
        assert [(c.scope, c.status, c.headroom_tpp) for c in prohibitions] == [
            (tier3, "breach", -H100)
        ]


def test_tier3_applies_to_every_status_and_a_removed_device_clears_it() -> None:
    f = fleet(
        [("acme", "US", "uveu", ())],
        [("cn", "acme", "CN"), ("us", "acme", "US")],
        [line("us", 100, D(2025, 1, 20)), line("cn", 1, D(2025, 6, 1), removed=D(2025, 9, 1))],
    )
    assert check(run(f, D(2025, 8, 1)), "tier3_prohibition", "country:CN").status == "breach"
    assert check(run(f, D(2025, 9, 1)), "tier3_prohibition", "country:CN").status == "ok"


def test_uncontrolled_devices_count_nowhere() -> None:
    lines = [line("in1", 50_000, D(2025, 6, 1), tpp=Fraction(2368), eccn_class="not_controlled")]
    ev = run(fleet(ORBIT, ORBIT_IN, lines), D(2026, 1, 1))
    assert check(ev, "country_allocation", "country:IN").used_tpp == 0
    assert ev.sites[0].other_devices == 50_000


def test_tier1_non_uveu_sites_have_no_checks_but_appear_in_site_totals() -> None:
    f = fleet(
        [("corp", "DE", "none", ())], [("de1", "corp", "DE")], [line("de1", 5, D(2025, 6, 1))]
    )
    ev = run(f, D(2026, 1, 1))
    assert ev.checks == ()
    assert ev.sites[0].installed_tpp == 5 * H100
    assert ev.sites[0].tier == 1


@pytest.mark.parametrize(
    ("as_of", "anchor", "note"),
    [
        (D(2025, 3, 31), 1_583_200_000, "no figure is known for 2025Q1 or any earlier quarter"),
        (D(2025, 12, 31), 1_583_200_000, None),
        (
            D(2026, 4, 1),
            1_583_200_000,
            "no figure is known for 2026Q2; using the last known anchor (2025Q4)",
        ),
        (D(2026, 10, 1), 4_274_640_000, None),
        (D(2027, 6, 30), 4_274_640_000, "using the last known anchor (2026Q4)"),
        (D(2029, 1, 1), 5_066_240_000, "using the last known anchor (2027Q4)"),
    ],
)
def test_nveu_schedule_uses_anchors_and_says_so(as_of: date, anchor: int, note: str | None) -> None:
    f = fleet([("n", "AE", "nveu", ("AE",))], [("ae", "n", "AE")], [line("ae", 1, D(2025, 1, 20))])
    c = check(run(f, as_of), "nveu_country_cap", "entity:n/country:AE")
    assert c.limit_tpp == anchor
    assert c.provenance.confidence == "unconfirmed"
    if note is None:
        assert c.note is None
    else:
        assert c.note is not None
        assert note in c.note


def test_nveu_outside_its_countries_counts_against_the_allocation() -> None:
    f = fleet(
        [("n", "AE", "nveu", ("AE",))],
        [("ae", "n", "AE"), ("sa", "n", "SA")],
        [line("ae", 5, D(2025, 6, 1)), line("sa", 7, D(2025, 6, 1))],
    )
    ev = run(f, D(2026, 1, 1))
    assert check(ev, "country_allocation", "country:SA").used_tpp == 7 * H100
    assert check(ev, "country_allocation", "country:AE").used_tpp == 0
    assert [c.scope for c in ev.checks if c.rule == "nveu_country_cap"] == ["entity:n/country:AE"]


def test_uveu_share_boundaries() -> None:
    # 93 in US, 7 in AE: exactly 7% in AE is allowed, and headroom there is exactly 0.
    entities = [("acme", "US", "uveu", ())]
    sites = [("us", "acme", "US"), ("ae", "acme", "AE")]
    f = fleet(entities, sites, [line("us", 93, D(2025, 3, 1)), line("ae", 7, D(2025, 3, 1))])
    ev = run(f, D(2026, 1, 1))
    ae = check(ev, "uveu_tier2_country_share", "entity:acme/country:AE")
    assert (ae.status, ae.share, ae.headroom_tpp) == ("ok", Fraction(7, 100), 0)
    tier1 = check(ev, "uveu_tier1_share", "entity:acme")
    assert tier1.headroom_tpp == 93 * H100 / Fraction(3, 4) - 100 * H100
    # Exactly 75% in Tier 1 passes; a hair less breaches.
    f = fleet(
        [("eu", "DE", "uveu", ())],
        [
            ("de", "eu", "DE"),
            ("sa", "eu", "SA"),
            ("ae", "eu", "AE"),
            ("in", "eu", "IN"),
            ("id", "eu", "ID"),
        ],
        [line("de", 75, D(2025, 3, 1))]
        + [line(s, 6, D(2025, 3, 1)) for s in ("sa", "ae", "in")]
        + [line("id", 7, D(2025, 3, 1))],
    )
    c = check(run(f, D(2026, 1, 1)), "uveu_tier1_share", "entity:eu")
    assert (c.status, c.share, c.headroom_tpp) == ("ok", Fraction(3, 4), 0)
    # A non-US headquarters gets no US share check.
    assert not [c for c in run(f, D(2026, 1, 1)).checks if c.rule == "uveu_us_share"]


def test_uveu_with_empty_base_has_no_share_and_zero_headroom() -> None:
    f = fleet([("acme", "US", "uveu", ())], [("ae", "acme", "AE")], [])
    ev = run(f, D(2026, 1, 1))
    c = check(ev, "uveu_tier2_country_share", "entity:acme/country:AE")
    assert (c.status, c.share, c.headroom_tpp) == ("ok", None, 0)


def test_uveu_headquarters_must_be_tier1() -> None:
    f = fleet([("x", "AE", "uveu", ())], [("ae", "x", "AE")], [])
    with pytest.raises(
        InputError, match=r"entities\[0\]\.headquarters: UVEU status requires Tier 1"
    ):
        run(f, D(2026, 1, 1))


def test_ruleset_state_on_dates() -> None:
    f = fleet(ORBIT, ORBIT_IN, [])
    early = run(f, D(2025, 1, 1)).ruleset
    assert (early.status, early.in_force) == ("not_yet_effective", False)
    live = run(f, D(2025, 3, 1)).ruleset
    assert (live.status, live.in_force, live.warnings) == ("in_force", True, ())
    late = run(f, D(2025, 5, 13)).ruleset
    assert (late.status, late.in_force) == ("not_enforced", False)
    assert "not an enforced limit" in late.warnings[0]
