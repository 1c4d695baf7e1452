"""Rule pack loading: dates, tiers, and clear errors for a bad pack."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpucap.core.data import shipped
from gpucap.core.errors import DataError, InputError
from gpucap.core.ruleset import available_rulesets, load_ruleset, load_ruleset_file

PACK_FILE = shipped("rulesets", "us-bis-ai-diffusion-2025.yaml")


def test_shipped_pack_loads_with_every_rule_kind() -> None:
    pack = load_ruleset("us-bis-ai-diffusion-2025")
    assert "us-bis-ai-diffusion-2025" in available_rulesets()
    assert [r.id for r in pack.rules] == [
        "country_allocation",
        "lpp_annual",
        "nveu_country_cap",
        "uveu_tier2_country_share",
        "uveu_tier1_share",
        "uveu_us_share",
        "tier3_prohibition",
    ]
    assert pack.h100e_tpp == 15832
    assert len(pack.tiers.tier1) == 19


@pytest.mark.parametrize(
    ("code", "when", "tier"),
    [
        ("US", date(2025, 6, 1), 1),
        ("TW", date(2025, 6, 1), 1),
        ("AE", date(2025, 6, 1), 2),
        ("HK", date(2025, 6, 1), 3),
        ("KH", date(2026, 2, 2), 3),
        ("KH", date(2026, 2, 3), 2),
    ],
)
def test_tiers_are_dated(code: str, when: date, tier: int) -> None:
    assert load_ruleset("us-bis-ai-diffusion-2025").tiers.tier(code, when) == tier


def test_unknown_pack_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown rule pack 'nope'"):
        load_ruleset("nope")


def _mutated(tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    doc = yaml.safe_load(PACK_FILE.read_text())
    edit(doc)
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["rules"][0].update(kind="magic"), r"rules\[0\]\.kind: unknown rule kind"),
        (
            lambda d: d["rules"][0]["limit_tpp"].update(value="many"),
            r"limit_tpp\.value: expected a number",
        ),
        (
            lambda d: d["tiers"]["tier1"]["countries"].append("QQ"),
            r"tier1\.countries\[19\]: not an ISO",
        ),
        (lambda d: d["tiers"]["tier1"]["countries"].append("CN"), "both tier 1 and tier 3"),
        (lambda d: d["tiers"]["tier3"]["groups"].append("D:9"), r"tier3\.groups\[2\]: no country"),
        (lambda d: d["tiers"]["tier3"].update(groups=[]), r"tier3\.groups: expected at least"),
        (
            lambda d: d["tiers"]["tier3"].update(countries=["CN"]),
            r"tier3: give groups, or countries with changes, not both",
        ),
        (lambda d: d["rules"][2]["schedule"][0].update(quarter="Q4-2025"), "expected a quarter"),
        (lambda d: d["rules"][1].pop("limit_tpp"), r"rules\[1\]\.limit_tpp: expected a mapping"),
    ],
)
def test_bad_pack_names_the_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load_ruleset_file(_mutated(tmp_path, edit))


def test_every_number_in_the_pack_has_source_and_confidence() -> None:
    """Walk the pack: any mapping holding a number (other than a date) names its provenance.

    `tier` keys only select which tier a rule applies to (structure, not a figure).
    """
    doc = yaml.safe_load(PACK_FILE.read_text())
    missing: list[str] = []

    def walk(node: object, path: str, inherited: bool) -> None:
        if isinstance(node, dict):
            has = "source" in node and "confidence" in node
            numbers = [
                k
                for k, v in node.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "tier"
            ]
            if numbers and not (has or inherited):
                missing.append(f"{path}: {numbers}")
            for k, v in node.items():
                walk(v, f"{path}.{k}", has or inherited)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", inherited)

    for key, value in doc.items():
        walk(value, key, False)
    assert missing == []
