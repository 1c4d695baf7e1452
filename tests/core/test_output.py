"""The listing formats every command shares (`gpucap.core.output`), and the ones the core
commands print: `catalogue` and `evaluate` as table, csv, json and yaml, with and without the
header row; table figures rounded once, JSON figures exact."""

from __future__ import annotations

import argparse
import csv
import io
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpucap.cli import main
from gpucap.core import output
from gpucap.core.report import checks_table
from tests.conftest import unavailable

GOLDEN = Path(__file__).parent / "golden"
COLUMNS = (("name", "name"), ("count", "count"), ("where", "where"))
ROWS = [
    {"name": "[bold]a", "count": 3, "where": {"site": "s1"}, "extra": [1, 2]},
    {"name": "b,c", "count": None, "where": None, "extra": []},
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


# -- the shared renderer -----------------------------------------------------------------------
def test_yaml_is_the_json_document_with_its_keys_in_order() -> None:
    doc = {"z": 1, "a": [{"y": None, "b": "2025-09-01", "c": 0.1}], "on": "no", "t": True}
    as_json = json.loads(output.render(ROWS, COLUMNS, "json", doc))
    as_yaml = yaml.safe_load(output.render(ROWS, COLUMNS, "yaml", doc))
    assert as_yaml == as_json == doc
    assert list(as_yaml) == ["z", "a", "on", "t"]
    assert list(as_yaml["a"][0]) == ["y", "b", "c"]
    assert isinstance(as_yaml["a"][0]["b"], str)  # a date-like string stays a string
    # Without a document, both are the rows.
    assert yaml.safe_load(output.render(ROWS, COLUMNS, "yaml")) == ROWS


def test_yaml_uses_libyaml_when_pyyaml_has_it() -> None:
    if not yaml.__with_libyaml__:
        unavailable("PyYAML built without libyaml: the pure dumper is the only one")
    assert output._DUMPER is yaml.CSafeDumper


def test_csv_without_headers_drops_only_the_header_row() -> None:
    full = output.render(ROWS, COLUMNS, "csv").splitlines()
    bare = output.render(ROWS, COLUMNS, "csv", headers=False).splitlines()
    assert full[0] == "name,count,where"
    assert bare == full[1:]
    assert list(csv.reader(io.StringIO("\n".join(bare)))) == [
        ["[bold]a", "3", "site:s1"],
        ["b,c", "", ""],
    ]


def test_table_without_headers_drops_only_the_heading_and_its_rule() -> None:
    full = output.render(ROWS, COLUMNS, "table").splitlines()
    bare = output.render(ROWS, COLUMNS, "table", headers=False).splitlines()
    assert full[0].split() == ["name", "count", "where"]
    assert set(full[1].strip()) == {"─"}
    assert bare == full[2:]
    assert [line.split()[0] for line in bare] == ["[bold]a", "b,c"]  # never read as markup


def test_display_cells_replace_only_the_table_text() -> None:
    shown = [["A", "three", "here"], ["B", "-", "-"]]
    table = output.render(ROWS, COLUMNS, "table", display=shown)
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["A", "B"]
    assert output.render(ROWS, COLUMNS, "csv", display=shown) == output.render(ROWS, COLUMNS, "csv")


def test_cells_and_rounded_figures() -> None:
    assert [output.cell(v) for v in (None, {"a": 1, "b": "x"}, ["p", 2], 0)] == [
        "",
        "a:1 b:x",
        "p,2",
        "0",
    ]
    assert output.tpp_text(-510709.67741935485) == "-510,710"
    assert output.tpp_text(790_000_000) == "790,000,000"
    assert output.h100e_text(-32.258) == "-32.26"
    assert output.h100e_text(100) == "100.00"


def test_format_flags_give_a_short_alias_and_no_headers_only_with_rows() -> None:
    rows = argparse.ArgumentParser()
    output.add_format_flags(rows)
    args = rows.parse_args(["-o", "yaml", "--no-headers"])
    assert (args.format, args.headers) == ("yaml", False)
    assert rows.parse_args([]).headers is True
    doc = argparse.ArgumentParser()
    output.add_format_flags(doc, formats=output.DOCUMENT_FORMATS)
    with pytest.raises(SystemExit):
        doc.parse_args(["--no-headers"])
    with pytest.raises(SystemExit):
        doc.parse_args(["-o", "csv"])


# -- gpucap catalogue --------------------------------------------------------------------------
def test_catalogue_in_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    _, as_json = run(capsys, "catalogue", "--format", "json")
    _, as_yaml = run(capsys, "catalogue", "-o", "yaml")
    rows = json.loads(as_json)
    assert yaml.safe_load(as_yaml) == rows
    _, as_csv = run(capsys, "catalogue", "-o", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv)))
    assert [r["id"] for r in parsed] == [r["id"] for r in rows]
    h100 = next(r for r in parsed if r["id"] == "h100-sxm5-80gb")
    assert (h100["tpp"], h100["eccn_class"], h100["pci_device_ids"]) == (
        "15832",
        "3A090.a",
        "0x2330",
    )
    _, bare = run(capsys, "catalogue", "-o", "csv", "--no-headers")
    assert bare.splitlines() == as_csv.splitlines()[1:]

    _, table = run(capsys, "catalogue")
    _, bare_table = run(capsys, "catalogue", "--no-headers")
    assert bare_table.splitlines() == table.splitlines()[2:]
    h100_row = next(ln for ln in table.splitlines() if ln.split()[0] == "h100-pcie-80gb")
    assert "12,104" in h100_row.split()  # whole TPP
    assert "0.77" in h100_row.split()  # H100e to two decimals (the JSON keeps 0.765)
    assert next(r for r in rows if r["id"] == "h100-pcie-80gb")["h100e"] == 0.765


# -- gpucap evaluate ---------------------------------------------------------------------------
def test_evaluate_yaml_is_its_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = str(GOLDEN / "uveu-shares.yaml")
    code_json, as_json = run(capsys, "evaluate", scenario, "--format", "json")
    code_yaml, as_yaml = run(capsys, "evaluate", scenario, "-o", "yaml")
    assert code_json == code_yaml == 1
    assert yaml.safe_load(as_yaml) == json.loads(as_json)


def _checks(name: str) -> list[dict[str, Any]]:
    doc = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    checks: list[dict[str, Any]] = doc["checks"]
    return checks


@pytest.mark.parametrize("name", ["allocation-lpp-nveu", "tier3-hong-kong", "uveu-shares"])
def test_exact_companions_are_the_engine_figures_and_the_floats_their_nearest(name: str) -> None:
    for c in _checks(name):
        headroom = Fraction(c["headroom_tpp_exact"])
        assert float(headroom) == c["headroom_tpp"]
        assert c["headroom_tpp_exact"] == str(headroom)  # in lowest terms
        if c["kind"] in ("cap", "prohibition"):
            assert "share_exact" not in c
            assert headroom == Fraction(c["limit_tpp"]) - Fraction(c["used_tpp"])
            continue
        used, total = Fraction(c["used_tpp"]), Fraction(c["total_tpp"])
        limit = Fraction(c["limit_share_exact"])
        assert float(limit) == c["limit_share"]
        if total:
            assert Fraction(c["share_exact"]) == used / total
            assert float(Fraction(c["share_exact"])) == c["share"]
        if c["kind"] == "max_share":
            assert headroom == (limit * total - used) / (1 - limit)
            # Adding exactly the headroom in the scope lands on the limit.
            assert (used + headroom) / (total + headroom) == limit
        else:
            assert headroom == used / limit - total
            assert used / (total + headroom) == limit


def test_the_ae_share_headroom_is_the_hand_computed_fraction() -> None:
    ae = next(c for c in _checks("uveu-shares") if c["scope"] == "entity:acme/country:AE")
    # (0.07 x 15,832,000 - 1,583,200) / 0.93 = -474,960 / 0.93 = -15,832,000 / 31
    assert (ae["share_exact"], ae["limit_share_exact"]) == ("1/10", "7/100")
    assert ae["headroom_tpp_exact"] == "-15832000/31"


def test_the_table_rounds_h100e_once_from_the_exact_tpp() -> None:
    # 75 TPP is 0.00474 H100e: the JSON's 3 decimals say 0.005, which rounded again is 0.01.
    check = {
        "rule": "r", "kind": "cap", "scope": "country:XX", "status": "ok",
        "used_tpp": 75, "used_h100e": 0.005, "limit_tpp": 15832, "limit_h100e": 1.0,
        "headroom_tpp": 15757, "headroom_h100e": 0.995, "headroom_tpp_exact": "15757",
        "source": {"confidence": "secondary"}, "note": None,
    }  # fmt: skip
    row = next(ln for ln in checks_table([check], h100e_tpp=15832).splitlines() if "XX" in ln)
    assert "75 (0.00)" in row
    assert "15,757 (1.00)" in row
    assert "15,832 (1.00)" in row


def test_evaluate_table_shows_whole_tpp_and_two_decimal_h100e(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, table = run(capsys, "evaluate", str(GOLDEN / "uveu-shares.yaml"))
    ae = next(ln for ln in table.splitlines() if "entity:acme/country:AE" in ln)
    assert "1,583,200 (100.00)" in ae
    assert "-510,710 (-32.26)" in ae
