"""The us-ear-2026 pack: its rules at and around their boundaries (group changes, licence
validity, the tolerance date), its parser's checks, and explanations that add up."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpucap.core.data import shipped
from gpucap.core.engine import Check, Evaluation, evaluate
from gpucap.core.errors import DataError, InputError
from gpucap.core.explain import Piece, explain
from gpucap.core.fleet import Entity, Fleet, Licence, Line, Site
from gpucap.core.groups import CountryGroups, Membership
from gpucap.core.ruleset import (
    DestinationLicence,
    country_codes,
    load_ruleset,
    load_ruleset_file,
    parse_ruleset,
)
from gpucap.core.siteparts import needs_destination_licence

PACK = load_ruleset("us-ear-2026")
PACK_FILE = shipped("rulesets", "us-ear-2026.yaml")
H100 = Fraction(15832)
AS_OF = date(2026, 12, 1)
UAE_A5 = date(2026, 7, 10)  # UAE leaves D:3/D:4 and joins A:5 (country-groups.yaml)
CAMBODIA_OFF_D5 = date(2026, 2, 3)
TOLERANCE = date(2026, 5, 31)
DAY = timedelta(days=1)


def ln(
    site: str,
    count: int,
    installed: date,
    removed: date | None = None,
    *,
    licence: str | None = None,
    cls: str = "3A090.a",
    tpp: Fraction = H100,
    model: str | None = None,
) -> Line:
    return Line(site, count, tpp, cls, installed, removed, "standard", model, licence)


def make(
    entities: list[Entity],
    sites: list[tuple[str, str, str]],
    lines: list[Line],
    licences: tuple[Licence, ...] = (),
) -> Fleet:
    return Fleet(
        "us-ear-2026",
        tuple(entities),
        tuple(Site(*s) for s in sites),
        tuple(lines),
        licences=licences,
    )


def lic(
    lid: str,
    licensee: str,
    *,
    sites: tuple[str, ...] = (),
    countries: tuple[str, ...] = (),
    start: date = date(2026, 1, 1),
    until: date | None = None,
    limit_tpp: int | None = None,
    units: int | None = None,
    classes: frozenset[str] | None = None,
    conditions: str | None = None,
) -> Licence:
    return Licence(
        lid,
        licensee,
        frozenset(sites),
        frozenset(countries),
        start,
        until,
        None if limit_tpp is None else Fraction(limit_tpp),
        units,
        None if units is None else "h100-sxm5-80gb",
        None if units is None else H100,
        classes,
        conditions,
    )


def checks(ev: Evaluation, rule: str) -> dict[str, Check]:
    return {c.scope: c for c in ev.checks if c.rule == rule}


def note(check: Check) -> str:
    assert check.note is not None
    return check.note


def run(fleet: Fleet, as_of: date = AS_OF) -> Evaluation:
    return evaluate(fleet, PACK, as_of)


# --- the pack --------------------------------------------------------------------------------


def test_pack_loads_in_force_with_its_rules() -> None:
    assert [r.id for r in PACK.rules] == [
        "destination_licence",
        "headquarters_control",
        "licence_quantity",
        "prc_advanced_ics",
    ]
    diffusion = load_ruleset("us-bis-ai-diffusion-2025")
    assert PACK.h100e_tpp == diffusion.h100e_tpp
    period = PACK.status_on(AS_OF)
    assert period is not None
    assert period.value == "in_force"
    ev = run(make([], [], []))
    assert ev.ruleset.in_force
    assert ev.ruleset.status == "in_force"
    assert PACK.status_on(PACK.status[0].start - DAY) is None
    assert PACK.groups is not None
    assert PACK.tiers.tier("CN", AS_OF) == 0


def _mutated(tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    doc = yaml.safe_load(PACK_FILE.read_text())
    edit(doc)
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["rules"][3]["models"]["value"].append("ascend-999"),
            r"rules\[3\]\.models\.value\[3\]: no catalogue model 'ascend-999'",
        ),
        (
            lambda d: d["rules"][3]["models"]["value"].append("a10-24gb"),
            r"models\.value\[3\]: a10-24gb is not_controlled, not a counted class",
        ),
        (
            lambda d: d["rules"][0]["destinations"]["any_of"].append("D:9"),
            r"rules\[0\]\.destinations\.any_of\[3\]: no country group 'D:9'",
        ),
        (
            lambda d: d["rules"][1]["headquarters"].update(groups=[]),
            r"headquarters\.groups: expected at least one country group",
        ),
        (
            lambda d: d["rules"][1]["classes"]["value"].append("3A090.c"),
            r"rules\[1\]\.classes\.value\[2\]: '3A090.c' is not a counted class",
        ),
        (lambda d: d.pop("licences"), r"licences: a pack with licence_quantity gives"),
        (
            lambda d: d["rules"][1]["tolerance"].update(installed_before="soon"),
            r"tolerance\.installed_before",
        ),
        (lambda d: d["rules"][2]["unit_conversion"].pop("confidence"), r"confidence"),
    ],
)
def test_bad_pack_names_the_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load_ruleset_file(_mutated(tmp_path, edit))


def test_every_figure_and_date_of_the_pack_has_source_and_confidence() -> None:
    doc = yaml.safe_load(PACK_FILE.read_text())
    missing: list[str] = []

    def walk(node: object, path: str, inherited: bool) -> None:
        if isinstance(node, dict):
            has = "source" in node and "confidence" in node
            figures = [
                k
                for k, v in node.items()
                if isinstance(v, int | float | date) and not isinstance(v, bool)
            ]
            if figures and not (has or inherited):
                missing.append(f"{path}: {figures}")
            for k, v in node.items():
                walk(v, f"{path}.{k}", has or inherited)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", inherited)

    for key, value in doc.items():
        walk(value, key, False)
    assert missing == []


# --- destination_licence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "needs"), [(UAE_A5 - DAY, True), (UAE_A5, False), (UAE_A5 + DAY, False)]
)
def test_uae_devices_need_a_licence_only_when_installed_before_a5(
    installed: date, needs: bool
) -> None:
    fleet = make([Entity("g42", "AE")], [("ae-1", "g42", "AE")], [ln("ae-1", 10, installed)])
    got = checks(run(fleet), "destination_licence")
    if needs:
        check = got["site:ae-1"]
        assert (check.status, check.used_tpp, check.headroom_tpp) == (
            "breach",
            10 * H100,
            -10 * H100,
        )
        assert "needs no destination licence on 2026-12-01" in note(check)
    else:
        assert got == {}  # AE needs no licence on the date and holds no device that did


@pytest.mark.parametrize(("as_of", "has_check"), [(UAE_A5 - DAY, True), (UAE_A5, False)])
def test_a_site_in_a_licence_country_has_a_check_even_when_empty(
    as_of: date, has_check: bool
) -> None:
    fleet = make([Entity("g42", "AE")], [("ae-1", "g42", "AE")], [])
    got = checks(run(fleet, as_of), "destination_licence")
    assert ("site:ae-1" in got) is has_check
    if has_check:
        assert (got["site:ae-1"].status, got["site:ae-1"].used_tpp) == ("ok", 0)


@pytest.mark.parametrize("installed", [CAMBODIA_OFF_D5 - DAY, CAMBODIA_OFF_D5])
def test_cambodia_keeps_needing_a_licence_through_d1(installed: date) -> None:
    fleet = make([Entity("k", "KH")], [("kh-1", "k", "KH")], [ln("kh-1", 2, installed)])
    check = checks(run(fleet), "destination_licence")["site:kh-1"]
    assert check.used_tpp == 2 * H100
    assert "KH is in D:1 on 2026-12-01" in note(check)


@pytest.mark.parametrize(
    ("country", "needs"),
    [("CN", True), ("HK", True), ("MO", True), ("CY", False), ("SG", False), ("DE", False)],
)
def test_destination_groups(country: str, needs: bool) -> None:
    # CY is in D:5 but also in A:6, so it needs none; HK is treated as China.
    fleet = make([Entity("e", "US")], [("s", "e", country)], [ln("s", 1, date(2026, 1, 1))])
    got = checks(run(fleet), "destination_licence")
    assert (got["site:s"].used_tpp == H100) if needs else (got == {})


def test_macau_needs_a_licence_even_if_a_group_would_exempt_it() -> None:
    """`also` wins over `none_of`: checked on made-up groups, as no shipped country is in both."""
    rule = next(r for r in PACK.rules if isinstance(r, DestinationLicence))

    def member(code: str, group: str) -> Membership:
        return Membership(code, group, None, None, "test", "primary")

    names = frozenset({"D:1", "D:4", "D:5", "A:5", "A:6", "Macau"})
    groups = CountryGroups(
        names,
        (member("MO", "Macau"), member("MO", "A:5"), member("XX", "D:1"), member("XX", "A:5")),
        (),
    )
    assert needs_destination_licence(rule, groups, "MO", AS_OF)
    assert not needs_destination_licence(rule, groups, "XX", AS_OF)


def test_covered_removed_uncounted_and_later_devices_do_not_count() -> None:
    before = UAE_A5 - timedelta(days=30)
    fleet = make(
        [Entity("g42", "AE"), Entity("other", "AE")],
        [("ae-1", "g42", "AE"), ("ae-2", "other", "AE")],
        [
            ln("ae-1", 1, before, licence="L"),  # covered
            ln("ae-1", 2, before, before + DAY),  # removed
            ln("ae-1", 4, before, cls="not_controlled"),  # not a licensable class
            ln("ae-1", 8, before, cls="3A090.b"),  # counted: destination covers .b
            ln("ae-2", 16, before, licence="L"),  # the licence is g42's, not other's
            ln("ae-1", 32, AS_OF + DAY),  # after the date
        ],
        (lic("L", "g42", countries=("AE",), limit_tpp=10**9),),
    )
    got = checks(run(fleet), "destination_licence")
    assert got["site:ae-1"].used_tpp == 8 * H100
    assert got["site:ae-2"].used_tpp == 16 * H100


def test_site_with_only_covered_devices_keeps_its_check_at_zero() -> None:
    fleet = make(
        [Entity("g42", "AE")],
        [("ae-1", "g42", "AE")],
        [ln("ae-1", 5, date(2026, 3, 1), licence="L")],
        (lic("L", "g42", sites=("ae-1",), limit_tpp=10**9),),
    )
    check = checks(run(fleet), "destination_licence")["site:ae-1"]
    assert (check.status, check.used_tpp) == ("ok", 0)


def test_destination_confidence_carries_the_group_memberships() -> None:
    # D:1/D:4/D:5 lists are unconfirmed in country-groups.yaml: China's check is unconfirmed
    # and warned about; the UAE's memberships are secondary.
    cn = make([Entity("e", "US")], [("s", "e", "CN")], [ln("s", 1, date(2026, 1, 1))])
    ev = run(cn)
    check = checks(ev, "destination_licence")["site:s"]
    assert check.provenance.confidence == "unconfirmed"
    assert any(
        w.startswith("destination_licence rests on unconfirmed") for w in ev.ruleset.warnings
    )
    ae = make([Entity("e", "US")], [("s", "e", "AE")], [ln("s", 1, date(2026, 1, 1))])
    ev = run(ae)
    assert checks(ev, "destination_licence")["site:s"].provenance.confidence == "secondary"
    assert "S63" in checks(ev, "destination_licence")["site:s"].provenance.source
    assert ev.ruleset.warnings == ()


# --- headquarters_control --------------------------------------------------------------------


def test_a_chain_of_three_parents_reaches_d5() -> None:
    entities = [
        Entity("sg-op", "SG", parent="my-hold"),
        Entity("my-hold", "MY", parent="sg-hold"),
        Entity("sg-hold", "SG", parent="cn-top"),
        Entity("cn-top", "CN"),
    ]
    fleet = make(entities, [("sg-1", "sg-op", "SG")], [ln("sg-1", 3, date(2026, 6, 1))])
    got = checks(run(fleet), "headquarters_control")
    assert list(got) == ["entity:sg-op"]  # the holdings have no sites
    check = got["entity:sg-op"]
    assert (check.status, check.used_tpp, check.tolerated_tpp) == ("breach", 3 * H100, 0)
    assert check.note is not None
    assert "sg-op (SG) -> my-hold (MY) -> sg-hold (SG) -> cn-top (CN); CN is in D:5" in check.note


def test_without_a_d5_parent_or_with_a_cycle_there_is_no_check() -> None:
    entities = [Entity("a", "SG", parent="b"), Entity("b", "MY", parent="a")]
    fleet = make(entities, [("sg-1", "a", "SG")], [ln("sg-1", 3, date(2026, 6, 1))])
    assert checks(run(fleet), "headquarters_control") == {}


def test_hong_kong_and_macau_headquarters() -> None:
    entities = [Entity("hk", "HK"), Entity("mo", "MO")]
    sites = [("hk-sg", "hk", "SG"), ("mo-sg", "mo", "SG")]
    lines = [ln("hk-sg", 1, date(2026, 6, 1)), ln("mo-sg", 2, date(2026, 6, 1))]
    got = checks(run(make(entities, sites, lines)), "headquarters_control")
    assert "HK (treated as CN) is in D:5" in note(got["entity:hk"])
    assert got["entity:mo"].used_tpp == 2 * H100
    assert "MO is in Macau" in note(got["entity:mo"])


@pytest.mark.parametrize(
    ("as_of", "has_check"), [(CAMBODIA_OFF_D5 - DAY, True), (CAMBODIA_OFF_D5, False)]
)
def test_cambodian_headquarters_on_either_side_of_leaving_d5(as_of: date, has_check: bool) -> None:
    fleet = make([Entity("k", "KH")], [("k-sg", "k", "SG")], [ln("k-sg", 1, date(2025, 6, 1))])
    assert ("entity:k" in checks(run(fleet, as_of), "headquarters_control")) is has_check


def test_only_sites_outside_the_us_count_and_us_only_entities_have_no_check() -> None:
    entities = [Entity("cn", "CN"), Entity("cn-us", "CN")]
    sites = [("cn-us-1", "cn", "US"), ("cn-sg-1", "cn", "SG"), ("only-us", "cn-us", "US")]
    lines = [
        ln("cn-us-1", 100, date(2026, 6, 1)),
        ln("cn-sg-1", 1, date(2026, 6, 1)),
        ln("only-us", 5, date(2026, 6, 1)),
    ]
    got = checks(run(make(entities, sites, lines)), "headquarters_control")
    assert list(got) == ["entity:cn"]
    assert got["entity:cn"].used_tpp == H100


@pytest.mark.parametrize(
    ("installed", "counted", "tolerated"),
    [(TOLERANCE - DAY, 0, 4 * H100), (TOLERANCE, 4 * H100, 0), (TOLERANCE + DAY, 4 * H100, 0)],
)
def test_tolerance_date(installed: date, counted: Fraction, tolerated: Fraction) -> None:
    fleet = make([Entity("mo", "MO")], [("sg", "mo", "SG")], [ln("sg", 4, installed)])
    check = checks(run(fleet), "headquarters_control")["entity:mo"]
    assert (check.used_tpp, check.tolerated_tpp) == (counted, tolerated)
    assert check.status == ("breach" if counted else "ok")
    assert check.note is not None
    assert ("tolerated and not counted" in check.note) is bool(tolerated)
    # The tolerance rests on our reading of the guidance (derived), which then shows.
    assert check.provenance.confidence == ("derived" if tolerated else "secondary")


def test_licensed_removed_and_class_b_devices() -> None:
    fleet = make(
        [Entity("mo", "MO")],
        [("sg", "mo", "SG")],
        [
            ln("sg", 1, date(2026, 6, 1), licence="L"),  # covered
            ln("sg", 2, date(2026, 6, 1), date(2026, 7, 1)),  # removed
            ln("sg", 4, date(2026, 6, 1), cls="3A090.b"),  # 3A090.b is licensable here
            ln("sg", 8, date(2026, 6, 1), licence="L", tpp=Fraction(1)),  # covered too
        ],
        (lic("L", "mo", countries=("SG",), limit_tpp=10**9),),
    )
    check = checks(run(fleet), "headquarters_control")["entity:mo"]
    assert check.used_tpp == 4 * H100


# --- licence_quantity ------------------------------------------------------------------------


def _one_site(lines: list[Line], *licences: Licence) -> Fleet:
    return make(
        [Entity("g42", "AE"), Entity("acme", "US")],
        [("ae-1", "g42", "AE"), ("ae-2", "g42", "AE"), ("ae-3", "acme", "AE")],
        lines,
        licences,
    )


def test_tpp_limit_at_and_over() -> None:
    at = _one_site(
        [ln("ae-1", 10, date(2026, 3, 1), licence="L")],
        lic("L", "g42", sites=("ae-1",), limit_tpp=10 * 15832),
    )
    check = checks(run(at), "licence_quantity")["licence:L"]
    assert (check.kind, check.status, check.used_tpp, check.headroom_tpp) == (
        "cap",
        "ok",
        10 * H100,
        0,
    )
    over = replace(
        at, lines=(*at.lines, ln("ae-1", 1, date(2026, 3, 2), licence="L", tpp=Fraction(1)))
    )
    check = checks(run(over), "licence_quantity")["licence:L"]
    assert (check.status, check.headroom_tpp) == ("breach", -1)


def test_units_limit_converts_at_the_unit_models_tpp_and_says_so() -> None:
    fleet = _one_site(
        [ln("ae-1", 7, date(2026, 3, 1), licence="L")], lic("L", "g42", sites=("ae-1",), units=5)
    )
    check = checks(run(fleet), "licence_quantity")["licence:L"]
    assert (check.limit_tpp, check.used_tpp, check.status) == (5 * H100, 7 * H100, "breach")
    assert check.provenance.confidence == "derived"
    assert "limit 5 x h100-sxm5-80gb at 15,832 TPP each" in note(check)
    assert "not published" in check.note


def test_a_licence_without_a_quantity_is_an_input_error() -> None:
    fleet = _one_site([], Licence("L", "g42", frozenset({"ae-1"}), frozenset(), date(2026, 1, 1)))
    with pytest.raises(InputError, match=r"licences\[0\]"):
        run(fleet)


def test_by_site_and_by_country() -> None:
    lines = [
        ln("ae-1", 1, date(2026, 3, 1), licence="SITE"),
        ln("ae-2", 2, date(2026, 3, 1), licence="SITE"),  # not named: listed
        ln("ae-1", 4, date(2026, 3, 1), licence="COUNTRY"),
        ln("ae-2", 8, date(2026, 3, 1), licence="COUNTRY"),
        ln("ae-3", 16, date(2026, 3, 1), licence="COUNTRY"),  # acme's site: listed
    ]
    fleet = _one_site(
        lines,
        lic("SITE", "g42", sites=("ae-1",), limit_tpp=10**9),
        lic("COUNTRY", "g42", countries=("AE",), limit_tpp=10**9),
    )
    got = checks(run(fleet), "licence_quantity")
    assert got["licence:SITE"].used_tpp == H100
    assert got["licence:COUNTRY"].used_tpp == 12 * H100
    site_note = got["licence:SITE"].note or ""
    assert (
        "site ae-2: 2 devices, 31,664 TPP (site ae-2 (AE) is not named by the licence)" in site_note
    )
    country_note = got["licence:COUNTRY"].note or ""
    # acme's site is not named: its devices are summed as another entity's.
    assert "ae-3" not in country_note
    assert "acme" not in country_note
    assert "16 devices, 253,312 TPP at 1 site(s) of other entities" in country_note


@pytest.mark.parametrize(
    ("installed", "covered"),
    [
        (date(2026, 2, 28), False),
        (date(2026, 3, 1), True),
        (date(2026, 9, 30), True),
        (date(2026, 10, 1), False),
    ],
)
def test_validity_edges(installed: date, covered: bool) -> None:
    licence = lic(
        "L",
        "g42",
        sites=("ae-1",),
        start=date(2026, 3, 1),
        until=date(2026, 9, 30),
        limit_tpp=10**9,
    )
    fleet = _one_site([ln("ae-1", 3, installed, licence="L")], licence)
    ev = run(fleet, date(2026, 12, 1))
    check = checks(ev, "licence_quantity")["licence:L"]
    assert check.used_tpp == (3 * H100 if covered else 0)
    note = check.note or ""
    assert ("outside the licence's validity (2026-03-01 to 2026-09-30)" in note) is not covered
    assert "validity ended 2026-09-30" in note
    # An uncovered device installed before A:5 also breaches the destination rule.
    dest = checks(ev, "destination_licence").get("site:ae-1")
    needs = installed < UAE_A5 and not covered
    assert (dest is not None and dest.used_tpp == 3 * H100) is needs


def test_removal_does_not_give_the_licence_back() -> None:
    licence = lic("L", "g42", sites=("ae-1",), limit_tpp=3 * 15832)
    present = _one_site([ln("ae-1", 3, date(2026, 3, 1), licence="L")], licence)
    removed = _one_site([ln("ae-1", 3, date(2026, 3, 1), date(2026, 4, 1), licence="L")], licence)
    for fleet in (present, removed):
        assert checks(run(fleet), "licence_quantity")["licence:L"].used_tpp == 3 * H100
    more = replace(removed, lines=(*removed.lines, ln("ae-1", 1, date(2026, 5, 1), licence="L")))
    assert checks(run(more), "licence_quantity")["licence:L"].status == "breach"
    # ... and a line installed after the date does not count yet.
    assert checks(run(more, date(2026, 4, 30)), "licence_quantity")["licence:L"].status == "ok"


def test_licence_classes_and_conditions() -> None:
    licence = lic(
        "L",
        "g42",
        sites=("ae-1",),
        limit_tpp=10**9,
        classes=frozenset({"3A090.a"}),
        conditions="US operator",
    )
    fleet = _one_site(
        [
            ln("ae-1", 1, date(2026, 3, 1), licence="L"),
            ln("ae-1", 2, date(2026, 3, 1), licence="L", cls="3A090.b"),
        ],
        licence,
    )
    check = checks(run(fleet), "licence_quantity")["licence:L"]
    assert check.used_tpp == H100
    assert check.note is not None
    assert "class 3A090.b is not among the licence's classes" in check.note
    assert check.note.endswith("conditions (not evaluated): US operator")


# --- prc_advanced_ics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "removed", "installed", "breach"),
    [
        ("ascend-910b", None, date(2026, 1, 1), True),
        ("ascend-910d", None, date(2026, 1, 1), True),
        ("ascend-910c", date(2026, 11, 30), date(2026, 1, 1), False),
        ("ascend-910c", None, AS_OF + DAY, False),
        ("h100-sxm5-80gb", None, date(2026, 1, 1), False),
    ],
)
def test_prc_ics(model: str, removed: date | None, installed: date, breach: bool) -> None:
    fleet = make(
        [Entity("e", "US")],
        [("us-1", "e", "US")],
        [ln("us-1", 2, installed, removed, model=model, tpp=Fraction(5120))],
    )
    got = checks(run(fleet), "prc_advanced_ics")
    if breach:
        check = got["site:us-1"]
        assert (check.kind, check.status, check.used_tpp) == ("prohibition", "breach", 10240)
        assert "General Prohibition 10" in note(check)
    else:
        assert got == {}


# --- explanations ----------------------------------------------------------------------------


def _mixed() -> Fleet:
    entities = [Entity("g42", "AE"), Entity("op", "SG", parent="top"), Entity("top", "HK")]
    sites = [("ae-1", "g42", "AE"), ("sg-1", "op", "SG"), ("cn-1", "top", "CN")]
    lines = [
        ln("ae-1", 10, date(2026, 3, 1), licence="L"),
        ln("ae-1", 3, date(2026, 3, 1), date(2026, 6, 1), licence="L"),
        ln("ae-1", 5, date(2026, 3, 1)),
        ln("ae-1", 7, date(2026, 8, 1), licence="OTHER"),
        ln("sg-1", 2, TOLERANCE - DAY),
        ln("sg-1", 6, TOLERANCE),
        ln("cn-1", 4, date(2026, 1, 1), model="ascend-910c", tpp=Fraction(12800)),
    ]
    licences = (
        lic("L", "g42", sites=("ae-1",), units=20),
        lic("OTHER", "g42", sites=("ae-9",), limit_tpp=1),
    )
    return make(entities, sites, lines, licences)


def test_every_check_is_explained_by_its_lines() -> None:
    fleet = _mixed()
    ev = run(fleet)
    assert {c.rule for c in ev.checks} == {r.id for r in PACK.rules}
    by_site: dict[str, list[Piece]] = {}
    for i, line in enumerate(fleet.lines):
        # Split each line into single devices: the pieces still add up.
        for k in range(line.count):
            by_site.setdefault(line.site, []).append(Piece(replace(line, count=1), (i, k)))
    for check in ev.checks:
        made = explain(fleet, PACK, AS_OF, check.rule, check.scope, lambda s: by_site.get(s, []))
        assert made.total("used_tpp") == check.used_tpp
        if check.tolerated_tpp is not None:
            assert made.total("tolerated_tpp") == check.tolerated_tpp
    licence = explain(
        fleet, PACK, AS_OF, "licence_quantity", "licence:L", lambda s: by_site.get(s, [])
    )
    assert {c.piece.tag[0] for c in licence.contributions} == {0, 1}  # removed ones count too
    hq = explain(
        fleet, PACK, AS_OF, "headquarters_control", "entity:op", lambda s: by_site.get(s, [])
    )
    assert {(c.piece.tag[0], c.figure) for c in hq.contributions} == {
        (4, "tolerated_tpp"),
        (5, "used_tpp"),
    }


def test_pieces_that_miss_a_line_do_not_explain_the_check() -> None:
    fleet = _mixed()
    pieces = {"ae-1": [Piece(fleet.lines[0], 0)]}
    with pytest.raises(ValueError, match="add up"):
        explain(fleet, PACK, AS_OF, "destination_licence", "site:ae-1", lambda s: pieces.get(s, []))


def test_parse_ruleset_takes_its_groups_and_catalogue() -> None:
    doc = yaml.safe_load(PACK_FILE.read_text())
    empty = CountryGroups(frozenset({"D:5"}), (), ())
    with pytest.raises(DataError, match=r"destinations\.any_of\[0\]: no country group 'D:1'"):
        parse_ruleset(doc, country_codes(), "p", groups=empty)


# --- the golden scenarios' hand-computed figures ---------------------------------------------

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["us-ear-2026", "us-ear-2026-with-diffusion"])
def test_golden_numbers_are_the_hand_computed_ones(name: str) -> None:
    """The figures the golden headers derive by hand, stated independently of the files."""
    doc = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    got = {
        (c["rule"], c["scope"]): (c["status"], c["used_tpp"], c["headroom_tpp"])
        for c in doc["checks"]
        if c.get("ruleset", "us-ear-2026") == "us-ear-2026"
    }
    h100 = 15832
    assert got == {
        ("destination_licence", "site:acme-hk-1"): ("breach", 10 * h100 + 4 * 12800, -209_520),
        ("destination_licence", "site:falcon-auh-1"): ("ok", 0, 0),
        ("destination_licence", "site:falcon-auh-2"): ("breach", 170 * h100, -2_691_440),
        ("headquarters_control", "entity:kite"): ("breach", 20 * h100, -316_640),
        ("headquarters_control", "entity:perch"): ("breach", 10 * 36000 + 100 * 2897, -649_700),
        ("licence_quantity", "licence:FAL-1"): ("breach", 1100 * h100, -100 * h100),
        ("licence_quantity", "licence:FAL-2"): ("ok", 100 * h100, 100 * h100),
        ("licence_quantity", "licence:KITE-1"): ("ok", 50 * h100, 50 * h100),
        ("prc_advanced_ics", "site:acme-hk-1"): ("breach", 4 * 12800, -51_200),
    }
    tolerated = {c["scope"]: c["tolerated_tpp"] for c in doc["checks"] if "tolerated_tpp" in c}
    assert tolerated == {"entity:kite": 100 * h100, "entity:perch": 0}
    if name.endswith("diffusion"):
        diffusion = {
            (c["rule"], c["scope"]): (c["used_tpp"], c["headroom_tpp"])
            for c in doc["checks"]
            if c["ruleset"] == "us-bis-ai-diffusion-2025"
        }
        assert diffusion == {
            ("tier3_prohibition", "country:CN"): (209_520, -209_520),
            ("country_allocation", "country:AE"): (1770 * h100, 790_000_000 - 1770 * h100),
            ("country_allocation", "country:MY"): (360_000, 789_640_000),
            ("country_allocation", "country:SG"): (170 * h100, 787_308_560),
        }
