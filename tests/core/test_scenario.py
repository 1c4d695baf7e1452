"""Scenario validation of large inventories: each model, inline TPP and date text is resolved
once, and every line (and every error's field path) is what it would be on its own."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.errors import InputError
from gpucap.core.scenario import parse_scenario


def _doc(*inventory: dict[str, Any]) -> dict[str, Any]:
    return {
        "ruleset": "us-bis-ai-diffusion-2025",
        "entities": [{"id": "acme", "headquarters": "US"}],
        "sites": [{"id": "s1", "entity": "acme", "country": "DE"}],
        "inventory": list(inventory),
    }


def _item(**fields: Any) -> dict[str, Any]:
    return {"site": "s1", "count": 8, "installed": "2025-06-01", **fields}


H100 = _item(model="h100-sxm5-80gb")
DENSE = _item(tpp=2400.0, die_area_mm2=300.0)  # density 8 decides: 3A090.a.2
NO_AREA = _item(tpp=2400.0)  # density would decide, the area is unknown


def test_repeated_models_and_inline_figures_resolve_alike() -> None:
    wide = _item(tpp=2400.0, die_area_mm2=600.0)  # density 4: 3A090.b.1
    lines = parse_scenario(_doc(H100, DENSE, H100, DENSE, wide)).lines
    assert [ln.eccn_class for ln in lines] == ["3A090.a"] * 4 + ["3A090.b"]
    assert [ln.tpp_per_device for ln in lines] == [15832, 2400, 15832, 2400, 2400]
    assert lines[0] == lines[2]
    assert lines[1] == lines[3]


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        ((H100, _item(model="h999"), _item(model="h999")), "inventory[1].model: unknown model"),
        ((DENSE, NO_AREA, NO_AREA), "inventory[1].die_area_mm2: needed to classify TPP 2400"),
        ((NO_AREA, DENSE), "inventory[0].die_area_mm2: needed to classify TPP 2400"),
        (
            (H100, _item(model="h100-sxm5-80gb", tpp=1.0)),
            "inventory[1]: give either model or tpp/die_area_mm2/datacenter, not both",
        ),
        (
            (H100, _item(model="h100-sxm5-80gb", installed="2025-02-30")),
            "inventory[1].installed: not a valid date: '2025-02-30'",
        ),
        (
            (H100, _item(model="h100-sxm5-80gb", removed="2025-06-01")),
            "inventory[1].removed: must be after installed",
        ),
    ],
)
def test_an_error_names_the_first_line_that_has_it(
    inventory: tuple[dict[str, Any], ...], message: str
) -> None:
    with pytest.raises(InputError) as caught:
        parse_scenario(_doc(*inventory))
    assert str(caught.value).startswith(message)


def test_a_bad_date_text_is_an_error_every_time() -> None:
    for _ in range(2):
        with pytest.raises(InputError, match=r"^inventory\[0\]\.installed: not a valid date"):
            parse_scenario(_doc(_item(model="h100-sxm5-80gb", installed="2025-13-01")))


pool = st.sampled_from(
    [
        H100,
        _item(model="b200-sxm-180gb", installed="2026-01-15", basis="lpp"),
        _item(model="h20-96gb", removed="2026-03-01"),
        DENSE,
        _item(tpp=4800, die_area_mm2=814.0, datacenter=False),
        _item(tpp=2400.0, die_area_mm2=300.0, datacenter=False),
        _item(tpp=640.5),
        _item(model="l40s-48gb", installed=date(2025, 6, 1)),
    ]
)


@settings(max_examples=100, deadline=None)
@given(st.lists(pool, min_size=1, max_size=12))
def test_each_line_is_what_it_would_be_alone(inventory: list[dict[str, Any]]) -> None:
    together = parse_scenario(_doc(*inventory)).lines
    alone = [parse_scenario(_doc(item)).lines[0] for item in inventory]
    assert list(together) == alone


# -- entity parents, licences, shipments, several packs ----------------------------------------
def _full(**changes: Any) -> dict[str, Any]:
    """A valid document using every new section; `changes` replace top-level sections."""
    doc: dict[str, Any] = {
        "rulesets": ["us-bis-ai-diffusion-2025"],
        "entities": [
            {"id": "dragon", "headquarters": "CN"},
            {"id": "kite", "headquarters": "SG", "parent": "dragon"},
        ],
        "sites": [{"id": "sin-1", "entity": "kite", "country": "SG"}],
        "licences": [
            {
                "id": "D123456",
                "licensee": "kite",
                "sites": ["sin-1"],
                "limit_tpp": 554120000,
                "valid_from": "2026-07-15",
                "valid_until": "2028-07-14",
                "classes": ["3A090.a"],
                "conditions": "US-operated site;\n\tsemi-annual reports",
            },
            {
                "id": "D2",
                "licensee": "dragon",
                "countries": ["HK", "SG"],
                "limit_units": 35000,
                "unit_model": "h100-sxm5-80gb",
                "valid_from": date(2026, 1, 1),
            },
        ],
        "inventory": [_item(site="sin-1", model="h100-sxm5-80gb", licence="D123456")],
        "shipments": [
            {
                "id": "S-1",
                "licence": "D123456",
                "site": "sin-1",
                "shipped": "2026-07-20",
                "model": "h100-sxm5-80gb",
                "serials": ["1652000000001", "1652000000002"],
            }
        ],
    }
    return {**doc, **changes}


def _licence(i: int = 0, **fields: Any) -> list[dict[str, Any]]:
    """The licences of `_full` with licence `i` changed (a None value drops the field)."""
    out = [dict(x) for x in _full()["licences"]]
    out[i].update(fields)
    out[i] = {k: v for k, v in out[i].items() if v is not None}
    return out


def _shipment(**fields: Any) -> list[dict[str, Any]]:
    return [{**_full()["shipments"][0], **fields}]


def test_the_new_sections_are_resolved() -> None:
    fleet = parse_scenario(_full())
    assert fleet.packs == ("us-bis-ai-diffusion-2025",)
    assert fleet.ruleset == "us-bis-ai-diffusion-2025"
    assert [e.parent for e in fleet.entities] == [None, "dragon"]
    by_tpp, by_units = fleet.licences
    assert (by_tpp.limit_tpp, by_tpp.limit_units) == (554120000, None)
    assert (by_tpp.unit_model, by_tpp.unit_tpp) == (None, None)
    assert (by_tpp.sites, by_tpp.countries) == ({"sin-1"}, frozenset())
    assert (by_tpp.valid_from, by_tpp.valid_until) == (date(2026, 7, 15), date(2028, 7, 14))
    assert by_tpp.classes == {"3A090.a"}
    assert by_tpp.conditions == "US-operated site;\n\tsemi-annual reports"
    # A limit in units takes the catalogue TPP of its model: the H100 SXM's 15,832.
    assert (by_units.limit_units, by_units.unit_tpp) == (35000, 15832)
    assert (by_units.limit_tpp, by_units.classes) == (None, None)
    assert (by_units.countries, by_units.valid_until) == ({"HK", "SG"}, None)
    assert (fleet.lines[0].licence, fleet.lines[0].observed) == ("D123456", False)
    (shipment,) = fleet.shipments
    assert shipment.serials == ("1652000000001", "1652000000002")
    assert shipment.shipped == date(2026, 7, 20)


def test_several_packs_and_one_pack() -> None:
    two = parse_scenario(_full(rulesets=["us-bis-ai-diffusion-2025", "other-pack"]))
    assert two.packs == ("us-bis-ai-diffusion-2025", "other-pack")
    assert two.ruleset == "us-bis-ai-diffusion-2025"
    one = parse_scenario(_doc(H100))
    assert (one.rulesets, one.packs) == ((), ("us-bis-ai-diffusion-2025",))


def test_a_licence_may_name_a_site_of_another_entity() -> None:
    """Not an input error: the licence rule reports the site as not covered."""
    fleet = parse_scenario(_full(licences=_licence(0, licensee="dragon")))
    assert fleet.licences[0].licensee == "dragon"


NONE: dict[str, Any] = {"sites": [], "licences": [], "inventory": [], "shipments": []}


def test_a_long_parent_chain_is_accepted() -> None:
    n = 5000
    chain = [{"id": f"e{k}", "headquarters": "SG", "parent": f"e{k + 1}"} for k in range(n)]
    chain.append({"id": f"e{n}", "headquarters": "CN"})
    entities = parse_scenario(_full(entities=chain, **NONE)).entities
    assert len(entities) == n + 1
    assert (entities[0].parent, entities[-1].parent) == ("e1", None)


def _cycle(*parents: str | None) -> list[dict[str, Any]]:
    return [
        {"id": f"e{k}", "headquarters": "SG", **({"parent": p} if p else {})}
        for k, p in enumerate(parents)
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # the packs
        ({"ruleset": "us-bis-ai-diffusion-2025"}, "rulesets: give ruleset or rulesets, not both"),
        ({"rulesets": []}, "rulesets: must list at least one rule pack"),
        (
            {"rulesets": ["us-bis-ai-diffusion-2025", "x", "us-bis-ai-diffusion-2025"]},
            "rulesets[2]: rule pack 'us-bis-ai-diffusion-2025' is listed twice",
        ),
        ({"rulesets": ["Bad id!"]}, "rulesets[0]: string should match pattern"),
        ({"rulesets": None}, "ruleset: required field is missing"),
        # entity parents
        ({"entities": _cycle(None, "ghost"), **NONE}, "entities[1].parent: no entity with id"),
        ({"entities": _cycle("e0"), **NONE}, "entities[0].parent: parent cycle: e0 -> e0"),
        (
            {"entities": _cycle(None, "e2", "e3", "e1"), **NONE},
            "entities[1].parent: parent cycle: e1 -> e2 -> e3 -> e1",
        ),
        (
            {"entities": _cycle("e1", "e2", "e3", "e2"), **NONE},
            "entities[2].parent: parent cycle: e2 -> e3 -> e2",
        ),
        # licences
        ({"licences": _licence(1, id="D123456")}, "licences[1].id: duplicate licence id"),
        ({"licences": _licence(0, licensee="ghost")}, "licences[0].licensee: no entity with id"),
        ({"licences": _licence(0, sites=["sin-1", "nowhere"])}, "licences[0].sites[1]: no site"),
        (
            {"licences": _licence(0, sites=["sin-1", "sin-1"])},
            "licences[0].sites[1]: site 'sin-1' is listed twice",
        ),
        (
            {"licences": _licence(1, countries=["SG", "XX"])},
            "licences[1].countries[1]: not an ISO 3166-1",
        ),
        ({"licences": _licence(0, sites=None)}, "licences[0]: give sites or countries"),
        ({"licences": _licence(0, sites=[])}, "licences[0]: give sites or countries"),
        (
            {"licences": _licence(0, limit_units=10, unit_model="h100-sxm5-80gb")},
            "licences[0]: give either limit_tpp or limit_units, not both",
        ),
        ({"licences": _licence(0, limit_tpp=None)}, "licences[0]: give limit_tpp or limit_units"),
        (
            {"licences": _licence(1, unit_model=None)},
            "licences[1].unit_model: required with limit_units",
        ),
        (
            {"licences": _licence(0, unit_model="h100-sxm5-80gb")},
            "licences[0].unit_model: only with limit_units",
        ),
        (
            {"licences": _licence(1, unit_model="h999")},
            "licences[1].unit_model: unknown model 'h999'",
        ),
        ({"licences": _licence(0, limit_tpp=0)}, "licences[0].limit_tpp: must be greater than 0"),
        ({"licences": _licence(1, limit_units=0)}, "licences[1].limit_units: must be at least 1"),
        (
            {"licences": _licence(0, valid_until="2026-07-14")},
            "licences[0].valid_until: must not be before valid_from",
        ),
        ({"licences": _licence(0, valid_from=None)}, "licences[0].valid_from: required field"),
        (
            {"licences": _licence(0, classes=["3A090.z"])},
            "licences[0].classes[0]: not an ECCN class: '3A090.z' (known: 3A090.a, 3A090.b)",
        ),
        (
            {"licences": _licence(0, classes=["3A090.a", "3A090.a"])},
            "licences[0].classes[1]: class '3A090.a' is listed twice",
        ),
        ({"licences": _licence(0, classes=[])}, "licences[0].classes: must list at least 1"),
        (
            {"licences": _licence(0, conditions="a\x07b")},
            "licences[0].conditions: contains a control character U+0007 at position 1",
        ),
        ({"licences": _licence(0, holder="x")}, "licences[0].holder: unknown field"),
        # inventory
        (
            {"inventory": [_item(site="sin-1", model="h100-sxm5-80gb", licence="D9")]},
            "inventory[0].licence: no licence with id 'D9'",
        ),
        # shipments
        ({"shipments": _shipment() * 2}, "shipments[1].id: duplicate shipment id 'S-1'"),
        ({"shipments": _shipment(licence="D9")}, "shipments[0].licence: no licence with id 'D9'"),
        ({"shipments": _shipment(site="nowhere")}, "shipments[0].site: no site with id"),
        ({"shipments": _shipment(model="h999")}, "shipments[0].model: unknown model 'h999'"),
        ({"shipments": _shipment(serials=[])}, "shipments[0].serials: must list at least 1"),
        (
            {"shipments": _shipment(serials=["1", "2", "1"])},
            "shipments[0].serials[2]: serial '1' is listed twice (first at "
            "shipments[0].serials[0])",
        ),
        (
            {"shipments": [*_shipment(), *_shipment(id="S-2", serials=["9", "1652000000002"])]},
            "shipments[1].serials[1]: serial '1652000000002' is listed twice (first at "
            "shipments[0].serials[1])",
        ),
        (
            {"shipments": _shipment(serials=["16\x0052"])},
            "shipments[0].serials[0]: contains a control character U+0000 at position 2",
        ),
        (
            {"shipments": _shipment(serials=["16\t52"])},
            "shipments[0].serials[0]: contains a control character U+0009",
        ),
        (
            {"shipments": _shipment(serials=[" 1652"])},
            "shipments[0].serials[0]: must not begin or end with whitespace",
        ),
        (
            {"shipments": _shipment(serials=[1652])},
            "shipments[0].serials[0]: expected text, got the number 1652 (quote it)",
        ),
        ({"shipments": _shipment(shipped="2026-02-30")}, "shipments[0].shipped: not a valid date"),
    ],
)
def test_an_invalid_new_section_names_its_field(changes: dict[str, Any], message: str) -> None:
    doc = {k: v for k, v in _full(**changes).items() if v is not None}
    with pytest.raises(InputError) as caught:
        parse_scenario(doc)
    assert str(caught.value).startswith(message), str(caught.value)


def test_unknown_packs_name_their_field() -> None:
    from gpucap.core.scenario import fleet_packs, load_packs

    fleet = parse_scenario(_full(rulesets=["us-bis-ai-diffusion-2025", "no-such-pack"]))
    with pytest.raises(InputError, match=r"^rulesets\[1\]: unknown rule pack 'no-such-pack'"):
        fleet_packs(fleet)
    with pytest.raises(InputError, match=r"^ruleset: unknown rule pack 'nope' \(known: "):
        fleet_packs(parse_scenario({**_doc(H100), "ruleset": "nope"}))
    twice = ["us-bis-ai-diffusion-2025"] * 2
    with pytest.raises(InputError, match=r"^--ruleset: rule pack 'us-bis-ai-diffusion-2025' is gi"):
        load_packs(twice, "--ruleset", indexed=False)
    (pack,) = fleet_packs(parse_scenario(_full()))
    assert pack.id == "us-bis-ai-diffusion-2025"
