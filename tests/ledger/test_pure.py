"""Pure parts: tokens, settings, scope visibility, what-if fleets, folds."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpucap.core.catalogue import default_catalogue
from gpucap.core.errors import InputError
from gpucap.core.ruleset import load_ruleset
from gpucap.core.scenario import parse_scenario
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.fold import DeviceFacts, fold_decommission, fold_report
from gpucap.ledger.models import WhatIf
from gpucap.ledger.settings import Settings
from gpucap.ledger.tokens import Principal, sign, verify
from gpucap.ledger.views import (
    FleetIndex,
    can_see,
    matches,
    parse_request_scope,
    require_visible,
    whatif_fleet,
)
from tests.ledger.support import HK_REGISTRY, REGISTRY

KEY = b"k" * 32


def test_token_round_trip_and_forgeries() -> None:
    p = Principal("abc", "node", node_id="n1", site_id="s1")
    token = sign(p, KEY)
    assert verify(token, KEY) == p
    with pytest.raises(AuthError, match="bad_signature"):
        verify(token, b"x" * 32)
    head, claims, mac = token.split(".")
    forged = sign(Principal("abc", "node", node_id="n2", site_id="s1"), KEY).split(".")[1]
    with pytest.raises(AuthError, match="bad_signature"):
        verify(f"{head}.{forged}.{mac}", KEY)
    for bad in ("", "gpc1", "gpc2.a.b", "gpc1.!!.??", f"{head}.{claims}"):
        with pytest.raises(AuthError) as info:
            verify(bad, KEY)
        assert info.value.status_code == 401


@given(st.text(min_size=1, max_size=40), st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_any_operator_claims_round_trip(name: str, entity: str | None) -> None:
    p = Principal("id1", "operator", operator=name, entity=entity)
    assert verify(sign(p, KEY), KEY) == p


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {"GPUCAP_DB": "sqlite:///x.db", "GPUCAP_STALE_INTERVALS": "5", "GPUCAP_LEDGER_PORT": "9"},
        port=None,
        host="10.0.0.1",
    )
    assert (s.db_url, s.stale_intervals, s.port, s.host) == ("sqlite:///x.db", 5.0, 9, "10.0.0.1")
    assert s.stale_after_s == 5 * 60.0  # five intervals of the default 60 s
    with pytest.raises(InputError, match="GPUCAP_STALE_INTERVALS"):
        Settings.from_env({"GPUCAP_STALE_INTERVALS": "soon"})
    with pytest.raises(InputError, match="GPUCAP_SQLITE_SYNCHRONOUS"):
        Settings.from_env({"GPUCAP_SQLITE_SYNCHRONOUS": "maybe"})
    assert (Settings.from_env({}).workers, Settings.from_env({}).access_log) == (1, False)
    s = Settings.from_env({"GPUCAP_LEDGER_WORKERS": "3", "GPUCAP_LEDGER_ACCESS_LOG": "1"})
    assert (s.workers, s.access_log) == (3, True)
    assert Settings.from_env({"GPUCAP_LEDGER_WORKERS": "3"}, workers=2).workers == 2
    with pytest.raises(InputError, match="--workers"):
        Settings.from_env({"GPUCAP_LEDGER_WORKERS": "0"})
    with pytest.raises(InputError, match="GPUCAP_LEDGER_ACCESS_LOG"):
        Settings.from_env({"GPUCAP_LEDGER_ACCESS_LOG": "loud"})


def _fleet(text: str = REGISTRY):  # type: ignore[no-untyped-def]
    import yaml

    return parse_scenario(yaml.safe_load(text), default_catalogue())


def _index(text: str = REGISTRY) -> FleetIndex:
    fleet = _fleet(text)
    return FleetIndex.of(fleet, load_ruleset(fleet.ruleset).tiers.resolve)


def test_visibility_of_scopes_for_an_entity_operator() -> None:
    index = _index()
    assert can_see("entity:nimbus/country:AE", "nimbus", index)
    assert can_see("country:AE", "nimbus", index)
    assert not can_see("country:US", "nimbus", index)
    assert not can_see("entity:acme", "nimbus", index)
    assert not can_see("consignee:acme/year:2025", "nimbus", index)
    assert can_see("anything:else", None, index)
    with pytest.raises(AuthError, match="scope_forbidden"):
        require_visible(("site", "acme-us-1"), "nimbus", index)
    require_visible(("country", "AE"), "nimbus", index)


def test_site_scope_is_the_checks_that_bind_a_placement_there() -> None:
    index = _index()
    site = ("site", "acme-ae-1")
    assert matches("country:AE", site, index)
    assert matches("entity:acme", site, index)
    assert matches("entity:acme/country:AE", site, index)
    assert not matches("entity:acme/country:US", site, index)
    assert not matches("entity:nimbus/country:AE", site, index)


@pytest.mark.parametrize(
    ("scope", "entity", "visible"),
    [
        ("country:CN", "harbour", True),  # the checks of its HK site are China's
        ("entity:harbour/country:CN", "harbour", True),
        ("country:SG", "harbour", True),
        ("country:HK", "harbour", True),  # the raw code is indexed too
        ("country:CN", "acme", False),
        ("country:US", "harbour", False),
        ("country:CN", None, True),
    ],
)
def test_territories_are_visible_as_the_country_they_are_treated_as(
    scope: str, entity: str | None, visible: bool
) -> None:
    assert can_see(scope, entity, _index(HK_REGISTRY)) is visible


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [("country:HK", ("country", "CN")), ("country:CN", ("country", "CN"))],
)
def test_a_territory_scope_means_the_country_it_is_treated_as(
    requested: str, resolved: tuple[str, str]
) -> None:
    index = _index(HK_REGISTRY)
    assert parse_request_scope(requested, index) == resolved
    require_visible(resolved, "harbour", index)
    with pytest.raises(AuthError, match="scope_forbidden"):
        require_visible(resolved, "acme", index)
    with pytest.raises(RejectedError, match="scope"):
        parse_request_scope("country:MO", index)  # no site there


@pytest.mark.parametrize(
    ("scope", "bound"),
    [
        ("country:CN", True),
        ("entity:harbour/country:CN", True),
        ("entity:harbour", True),
        ("country:HK", False),  # the engine never names a check by the territory
        ("country:SG", False),
        ("entity:harbour/country:SG", False),
        ("entity:acme", False),
    ],
)
def test_site_scope_in_a_territory_binds_the_resolved_country(scope: str, bound: bool) -> None:
    assert matches(scope, ("site", "harbour-hk-1"), _index(HK_REGISTRY)) is bound


def test_whatif_removal_splits_lines_and_refuses_too_many() -> None:
    fleet = _fleet()
    req = WhatIf.model_validate_json(
        '{"remove": [{"site": "acme-us-1", "model": "h100-sxm5-80gb", "count": 400}]}'
    )
    day = date(2026, 1, 1)
    after = whatif_fleet(fleet, req, day, default_catalogue())
    counts = sorted((ln.count, ln.removed) for ln in after.lines)
    assert counts == [(400, day), (600, None)]
    assert sum(ln.tpp for ln in after.lines) == sum(ln.tpp for ln in fleet.lines)
    too_many = WhatIf.model_validate_json(
        '{"remove": [{"site": "acme-us-1", "model": "h100-sxm5-80gb", "count": 1001}]}'
    )
    with pytest.raises(RejectedError, match="only 1000"):
        whatif_fleet(fleet, too_many, day, default_catalogue())
    both = WhatIf.model_validate_json('{"add": [{"site": "acme-us-1", "count": 1}]}')
    with pytest.raises(RejectedError, match="exactly one"):
        both.check_consistent()


def facts(uuid: str, tpp: int | None = 15832) -> DeviceFacts:
    model = "h100-sxm5-80gb" if tpp else None
    return DeviceFacts(
        uuid, "0x2330", "H100", "ok", model, tpp, "3A090.a" if tpp else None, None, False
    )


@given(st.sets(st.integers(0, 30), max_size=12), st.sets(st.integers(0, 30), max_size=12))
def test_fold_keeps_line_counts_equal_to_present_devices(first: set[int], second: set[int]) -> None:
    one = fold_report("n", "s", {}, [facts(f"G{i}") for i in sorted(first)], "2026-01-01")
    rows = {r.facts.uuid: r for r in one.rows}
    two = fold_report("n", "s", rows, [facts(f"G{i}") for i in sorted(second)], "2026-01-02")
    lines: dict[object, int] = {}
    for change in (one, two):
        for spec, delta in change.line_deltas.items():
            lines[spec] = lines.get(spec, 0) + delta
    present = sum(n for spec, n in lines.items() if not spec.removed)  # type: ignore[attr-defined]
    gone = sum(n for spec, n in lines.items() if spec.removed)  # type: ignore[attr-defined]
    assert present == len(second)
    assert gone == len(first - second)
    assert all(n >= 0 for n in lines.values())
    rows.update({r.facts.uuid: r for r in two.rows})
    closed = fold_decommission(rows, "2026-01-03")
    assert len(closed.rows) == len(second)
    assert sum(closed.line_deltas.values()) == 0


def test_unknown_devices_make_no_line() -> None:
    change = fold_report("n", "s", {}, [facts("G1", tpp=None)], "2026-01-01")
    assert len(change.rows) == 1
    assert not change.line_deltas
    assert Fraction(0) == sum(change.line_deltas.values())


def test_whatif_binding_is_the_check_that_blocks_not_merely_the_lowest() -> None:
    from dataclasses import replace as change

    from gpucap.core.engine import Check, Evaluation
    from gpucap.core.ruleset import Provenance
    from gpucap.ledger.views import whatif_answer

    prov = Provenance("p", "s", "primary")

    def chk(rule: str, headroom: int) -> Check:
        status = "breach" if headroom < 0 else "ok"
        return Check(rule, "cap", f"country:{rule}", status, Fraction(0), Fraction(headroom), prov)

    # A removal eases a deep breach elsewhere (-1000 -> -900) while the addition newly breaches
    # a cap (10 -> -5): only the second blocks, and it is the binding one.
    before = (chk("X", -1000), chk("Y", 10))
    after = (chk("X", -900), chk("Y", -5))
    ev = Evaluation(None, date(2026, 1, 1), Fraction(1), before, ())  # type: ignore[arg-type]
    answer = whatif_answer(ev, change(ev, checks=after), lambda c: True, lambda c: {})
    assert answer["allowed"] is False
    assert (answer["binding"]["rule"], answer["binding"]["headroom_tpp"]) == ("Y", -5)
