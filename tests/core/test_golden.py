"""Golden scenarios: `gpucap evaluate --format json` against hand-checked expected documents.

Each `golden/NAME.yaml` explains its arithmetic in its header comment; `NAME.expected.json` is
the reviewed output. The CLI runs in-process through `gpucap.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpucap.cli import main

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


@pytest.mark.parametrize("name", CASES)
def test_golden_scenario(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    code = main(["evaluate", str(GOLDEN / f"{name}.yaml"), "--format", "json"])
    got = json.loads(capsys.readouterr().out)
    assert got == expected
    assert code == (1 if expected["verdict"] == "breach" else 0)


def test_golden_numbers_are_the_hand_computed_ones() -> None:
    """The few figures the golden headers derive by hand, stated independently of the files."""
    doc = json.loads((GOLDEN / "uveu-shares.expected.json").read_text())
    by_scope = {(c["rule"], c["scope"]): c for c in doc["checks"]}
    ae = by_scope[("uveu_tier2_country_share", "entity:acme/country:AE")]
    assert ae["status"] == "breach"
    assert ae["headroom_tpp"] == pytest.approx((0.07 * 15_832_000 - 1_583_200) / 0.93)
    us = by_scope[("uveu_us_share", "entity:acme")]
    assert us["headroom_tpp"] == 3_166_400
    doc = json.loads((GOLDEN / "allocation-lpp-nveu.expected.json").read_text())
    by_scope = {(c["rule"], c["scope"]): c for c in doc["checks"]}
    assert by_scope[("lpp_annual", "consignee:orbit/year:2025")]["headroom_tpp"] == -14_400
    assert by_scope[("country_allocation", "country:IN")]["used_tpp"] == 2000 * 15_832


def test_table_format_lists_breaches_first(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(GOLDEN / "uveu-shares.yaml")])
    out = capsys.readouterr().out
    assert code == 1
    rows = [ln for ln in out.splitlines() if ln.strip().startswith(("BREACH", "ok"))]
    assert rows[0].strip().startswith("BREACH")
    assert "1,583,200 (100.00)" in rows[0]  # thousands separators, H100e to two decimals
    assert "warning: us-bis-ai-diffusion-2025 is not_enforced" in out


def test_as_of_flag_overrides_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    # Before any device was installed nothing is counted, so nothing is breached.
    code = main(["evaluate", str(GOLDEN / "uveu-shares.yaml"), "--as-of", "2025-01-01"])
    assert code == 0
    assert "verdict OK" in capsys.readouterr().out


# Scenarios of one pack (`ruleset:`); those naming `rulesets:` make multi-pack documents.
SINGLE = [n for n in CASES if "rulesets" not in yaml.safe_load((GOLDEN / f"{n}.yaml").read_text())]


@pytest.mark.parametrize("name", SINGLE)
def test_golden_documents_name_their_pack_everywhere(name: str) -> None:
    """One pack: `rulesets` is `[ruleset]`, every check names it, sites carry no pack."""
    doc = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    assert doc["rulesets"] == [doc["ruleset"]]
    assert doc["ruleset"]["h100e_tpp"] == doc["h100e_tpp"]
    assert doc["checks"]
    assert {c["ruleset"] for c in doc["checks"]} == {doc["ruleset"]["id"]}
    assert all("ruleset" not in s for s in doc["sites"])
