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
