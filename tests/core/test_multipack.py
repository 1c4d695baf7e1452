"""Several rule packs evaluated together: one document, every check naming its pack, the verdict
over all of them, a table block per pack, and `--ruleset` (repeatable) on `gpucap evaluate`.

The second pack is the shipped Diffusion pack's YAML with another id and one changed figure,
parsed here; the CLI can name only shipped packs, so its tests use those.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpucap.cli import main
from gpucap.core.data import read_yaml, shipped
from gpucap.core.engine import Evaluation, evaluate
from gpucap.core.fleet import Fleet
from gpucap.core.report import check_to_dict, document, evaluation_to_dict, render_document
from gpucap.core.ruleset import RulePack, available_rulesets, country_codes, parse_ruleset
from gpucap.core.scenario import parse_scenario

DIFFUSION = "us-bis-ai-diffusion-2025"
DAY = date(2026, 6, 30)
ON = "2025-06-01"
# 1,000 H100 (15,832,000 TPP) in India, a Tier 2 country, for an entity without VEU status:
# under the Diffusion allocation of 790,000,000 TPP, over the copy's 1,000,000.
SCENARIO: dict[str, Any] = {
    "ruleset": DIFFUSION,
    "as_of": DAY.isoformat(),
    "entities": [{"id": "acme", "headquarters": "US"}],
    "sites": [
        {"id": "in-1", "entity": "acme", "country": "IN"},
        {"id": "us-1", "entity": "acme", "country": "US"},
    ],
    "inventory": [
        {"site": "in-1", "model": "h100-sxm5-80gb", "count": 1000, "installed": ON},
        # 3A090.b (TPP 2,400, density 4): not counted by the Diffusion pack
        {"site": "us-1", "tpp": 2400.0, "die_area_mm2": 600.0, "count": 10, "installed": ON},
    ],
}


def _pack(pack_id: str, allocation_tpp: int | None = None, **top: Any) -> RulePack:
    """The Diffusion pack's YAML as `pack_id`, with the country allocation's limit and any
    top-level entries replaced."""
    doc = copy.deepcopy(read_yaml(shipped("rulesets", f"{DIFFUSION}.yaml")))
    doc["id"] = pack_id
    if allocation_tpp is not None:
        (rule,) = [r for r in doc["rules"] if r["id"] == "country_allocation"]
        rule["limit_tpp"]["value"] = allocation_tpp
    doc.update(top)
    return parse_ruleset(doc, country_codes(), f"{pack_id}.yaml")


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return parse_scenario(SCENARIO)


@pytest.fixture(scope="module")
def shipped_pack() -> RulePack:
    return _pack(DIFFUSION)


@pytest.fixture(scope="module")
def strict_pack() -> RulePack:
    return _pack("diffusion-strict", allocation_tpp=1_000_000)


def _ev(fleet: Fleet, pack: RulePack) -> Evaluation:
    return evaluate(fleet, pack, DAY)


def test_the_document_holds_every_pack_in_order_and_every_check_names_its_pack(
    fleet: Fleet, shipped_pack: RulePack, strict_pack: RulePack
) -> None:
    a, b = _ev(fleet, shipped_pack), _ev(fleet, strict_pack)
    doc = document([a, b])
    assert [s["id"] for s in doc["rulesets"]] == [DIFFUSION, "diffusion-strict"]
    assert doc["ruleset"] == doc["rulesets"][0] == evaluation_to_dict(a)["ruleset"]
    assert doc["rulesets"][1] == evaluation_to_dict(b)["ruleset"]
    assert [s["h100e_tpp"] for s in doc["rulesets"]] == [15832, 15832]
    for ev in (a, b):
        mine = [c for c in doc["checks"] if c["ruleset"] == ev.ruleset.id]
        want = [check_to_dict(c, ev.h100e_tpp, ev.ruleset.id) for c in ev.checks]
        assert sorted(mine, key=json.dumps) == sorted(want, key=json.dumps)
        assert mine
    assert len(doc["checks"]) == len(a.checks) + len(b.checks)
    # Breaches first, whichever pack they are of.
    assert doc["checks"][0]["status"] == "breach"
    assert doc["checks"][0]["ruleset"] == "diffusion-strict"


@pytest.mark.parametrize("order", ["shipped first", "strict first"])
def test_a_breach_of_either_pack_is_the_verdict(
    fleet: Fleet, shipped_pack: RulePack, strict_pack: RulePack, order: str
) -> None:
    a, b = _ev(fleet, shipped_pack), _ev(fleet, strict_pack)
    assert (a.verdict, b.verdict) == ("ok", "breach")
    evs = [a, b] if order == "shipped first" else [b, a]
    doc = document(evs)
    assert doc["verdict"] == "breach"
    assert doc["ruleset"]["id"] == evs[0].ruleset.id
    lenient = _ev(fleet, _pack("diffusion-lenient", allocation_tpp=10**12))
    assert document([a, lenient])["verdict"] == "ok"


def test_a_single_pack_document_has_the_same_shape(fleet: Fleet, shipped_pack: RulePack) -> None:
    doc = evaluation_to_dict(_ev(fleet, shipped_pack))
    assert doc == document([_ev(fleet, shipped_pack)])
    assert doc["rulesets"] == [doc["ruleset"]]
    assert {c["ruleset"] for c in doc["checks"]} == {DIFFUSION}
    assert all("ruleset" not in s for s in doc["sites"])


def test_sites_are_one_list_when_every_pack_sees_them_alike(
    fleet: Fleet, shipped_pack: RulePack, strict_pack: RulePack
) -> None:
    a, b = _ev(fleet, shipped_pack), _ev(fleet, strict_pack)
    assert document([a, b])["sites"] == evaluation_to_dict(a)["sites"]
    # A pack counting 3A090.b too sees us-1's ten devices: one entry per pack and site.
    wide = _ev(fleet, _pack("diffusion-wide", counted_classes={"value": ["3A090.a", "3A090.b"]}))
    sites = document([a, wide])["sites"]
    assert [(s["ruleset"], s["id"]) for s in sites] == [
        (DIFFUSION, "in-1"),
        (DIFFUSION, "us-1"),
        ("diffusion-wide", "in-1"),
        ("diffusion-wide", "us-1"),
    ]
    us = {s["ruleset"]: s for s in sites if s["id"] == "us-1"}
    assert (us[DIFFUSION]["counted_devices"], us["diffusion-wide"]["counted_devices"]) == (0, 10)
    assert us["diffusion-wide"]["installed_tpp"] == 24_000


def test_each_pack_keeps_its_own_h100e_reference(fleet: Fleet, shipped_pack: RulePack) -> None:
    other = _pack(
        "diffusion-ref",
        reference_unit={"h100e_tpp": {"value": 20000, "source": "t", "confidence": "primary"}},
    )
    doc = document([_ev(fleet, shipped_pack), _ev(fleet, other)])
    assert [s["h100e_tpp"] for s in doc["rulesets"]] == [15832, 20000]
    assert doc["h100e_tpp"] == 15832
    ref = {c["ruleset"]: c for c in doc["checks"] if c["rule"] == "country_allocation"}
    assert ref[DIFFUSION]["used_h100e"] == 1000.0
    assert ref["diffusion-ref"]["used_h100e"] == 791.6  # 15,832,000 / 20,000
    assert "15,832,000 (791.60)" in render_document(doc).split("diffusion-ref (")[1]
    assert len(doc["sites"]) == 4  # the sites' H100e differ


def test_the_table_has_a_block_per_pack(
    fleet: Fleet, shipped_pack: RulePack, strict_pack: RulePack
) -> None:
    text = render_document(document([_ev(fleet, shipped_pack), _ev(fleet, strict_pack)]))
    assert text.split("\n", 1)[0] == "2 rule packs on 2026-06-30: verdict BREACH"
    first, second = text.split(f"\n{DIFFUSION} (")[1].split("\ndiffusion-strict (")
    assert first.startswith("not_enforced): verdict OK\n")
    assert second.startswith("not_enforced): verdict BREACH\n")
    assert "BREACH" not in first.split("\n", 1)[1]
    assert " BREACH   country_allocation   country:IN " in second
    for block in (first, second):
        assert block.count("warning: ") == 1  # the pack's status (not_enforced on the date)
        assert block.count("country_allocation") == 1


def test_one_pack_renders_as_before(fleet: Fleet, strict_pack: RulePack) -> None:
    text = render_document(evaluation_to_dict(_ev(fleet, strict_pack)))
    assert text.startswith("diffusion-strict on 2026-06-30 (not_enforced): verdict BREACH\n")
    assert "rule packs" not in text


# -- the CLI ------------------------------------------------------------------------------------
def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _other_shipped() -> str:
    others = [p for p in available_rulesets() if p != DIFFUSION]
    assert others, "a second shipped pack"
    return others[0]


def test_ruleset_flags_override_the_file_in_their_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file names a pack that does not exist: the flags replace it, so it is never loaded.
    path = _write(tmp_path, {**SCENARIO, "ruleset": "no-such-pack"})
    other = _other_shipped()
    code = main(["evaluate", str(path), "--ruleset", other, "--ruleset", DIFFUSION, "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in doc["rulesets"]] == [other, DIFFUSION]
    assert doc["ruleset"]["id"] == other
    assert {c["ruleset"] for c in doc["checks"]} <= {other, DIFFUSION}
    assert any(c["ruleset"] == DIFFUSION for c in doc["checks"])
    assert code == (1 if doc["verdict"] == "breach" else 0)
    assert main(["evaluate", str(path), "--ruleset", DIFFUSION]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{DIFFUSION} on 2026-06-30 (not_enforced): verdict OK\n")


def test_the_file_may_name_several_packs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _other_shipped()
    doc = {k: v for k, v in SCENARIO.items() if k != "ruleset"}
    path = _write(tmp_path, {**doc, "rulesets": [DIFFUSION, other]})
    main(["evaluate", str(path), "-o", "json"])
    got = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in got["rulesets"]] == [DIFFUSION, other]
    main(["evaluate", str(path)])
    assert capsys.readouterr().out.startswith("2 rule packs on 2026-06-30: verdict ")


@pytest.mark.parametrize(
    ("changes", "flags", "message"),
    [
        ({}, ["--ruleset", "no-such-pack"], "--ruleset: unknown rule pack 'no-such-pack' (known: "),
        ({}, ["--ruleset", DIFFUSION, "--ruleset", DIFFUSION], "--ruleset: rule pack"),
        (
            {"ruleset": None, "rulesets": [DIFFUSION, "no-such-pack"]},
            [],
            "rulesets[1]: unknown rule pack 'no-such-pack'",
        ),
        ({"rulesets": [DIFFUSION]}, [], "rulesets: give ruleset or rulesets, not both"),
    ],
)
def test_unknown_or_repeated_packs_exit_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    flags: list[str],
    message: str,
) -> None:
    doc = {k: v for k, v in {**SCENARIO, **changes}.items() if v is not None}
    assert main(["evaluate", str(_write(tmp_path, doc)), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert message in line
