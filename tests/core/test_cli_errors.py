"""Invalid input: exit 2, one line on stderr naming the field path and the reason, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpucap.cli import main
from gpucap.core import yamlload

BASE = {
    "ruleset": "us-bis-ai-diffusion-2025",
    "as_of": "2026-06-30",
    "entities": [{"id": "acme", "headquarters": "US", "status": "uveu"}],
    "sites": [{"id": "s1", "entity": "acme", "country": "AE"}],
    "inventory": [
        {"site": "s1", "model": "h100-sxm5-80gb", "count": 10, "installed": "2025-06-01"}
    ],
}


def _with(path: str, value: object) -> dict[str, object]:
    """A copy of BASE with one field replaced, addressed like `inventory.0.count`."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    assert isinstance(doc, dict)
    return doc


CASES = [
    ("inventory.0.model", "h999", "inventory[0].model: unknown model 'h999'"),
    ("sites.0.country", "XX", "sites[0].country: not an ISO 3166-1 alpha-2 country code: 'XX'"),
    ("entities.0.headquarters", "AE", "entities[0].headquarters: UVEU status requires Tier 1"),
    ("sites.0.entity", "ghost", "sites[0].entity: no entity with id 'ghost'"),
    ("inventory.0.count", -5, "inventory[0].count: must be at least 1"),
    ("inventory.0.installed", "2025-13-01", "inventory[0].installed: not a valid date"),
    ("inventory.0.installed", "last tuesday", "inventory[0].installed: expected a date"),
    ("inventory.0.count", 1.5, "inventory[0].count:"),
    ("inventory.0.site", "nowhere", "inventory[0].site: no site with id 'nowhere'"),
    ("ruleset", "no-such-pack", "ruleset: unknown rule pack 'no-such-pack'"),
    ("entities.0.status", "vip", "entities[0].status:"),
    ("inventory.0.removed", "2025-05-01", "inventory[0].removed: must be after installed"),
    ("countries", {"ZZ": {"gov_agreement": True}}, "countries.ZZ: not an ISO 3166-1"),
    ("sites.0.colour", "red", "sites[0].colour: unknown field"),
    ("entities.0.id", "ac\x00me", "entities[0].id: contains a control character U+0000 at"),
    ("sites.0.id", "s\x1b[2J", "sites[0].id: contains a control character U+001B at position 1"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES)
def test_invalid_input_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, value: object, message: str
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(_with(path, value)))
    assert main(["evaluate", str(scenario)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


def test_valid_base_scenario_is_accepted(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(BASE))
    # 10 H100 in AE are 100% of acme's base, above the 7% Tier 2 share: a breach, not an error.
    assert main(["evaluate", str(scenario)]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ruleset: [unclosed", "not valid YAML at line 1"),
        ("- just\n- a list\n", "(top level): s.yaml must be a mapping"),
    ],
)
def test_unparseable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(content)
    assert main(["evaluate", str(scenario)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_bad_as_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(BASE))
    assert main(["evaluate", str(scenario), "--as-of", "30/06/2026"]) == 2
    assert "--as-of: expected a date" in capsys.readouterr().err


def test_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(_with("inventory.0.count", -1)))
    proc = subprocess.run(
        [sys.executable, "-m", "gpucap", "evaluate", str(scenario)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == "gpucap: error: inventory[0].count: must be at least 1\n"


RAW = """\
ruleset: us-bis-ai-diffusion-2025
as_of: 2026-06-30
countries: {{NO: {{gov_agreement: {agreement}}}}}
entities:
  - {{id: fjord, headquarters: NO, status: uveu}}
sites:
  - {{id: f1, entity: fjord, country: NO}}
inventory:
  - {{site: f1, model: h100-sxm5-80gb, count: 1, installed: {installed}}}
"""


def _libyaml_reads(text: str) -> str:
    """`text`, which the loader in use reads: libyaml's where PyYAML has it, not the fallback."""
    assert yamlload.uses_libyaml(text) is (yamlload.FastLoader is not None)
    return text


def test_unquoted_yaml_dates_and_norway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Written by hand, unquoted: `NO` is Norway (not false) and a date is read as a date."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text(_libyaml_reads(RAW.format(agreement="true", installed="2025-06-01")))
    assert main(["evaluate", str(scenario), "--format", "json"]) == 0
    assert '"country": "NO"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("agreement", "installed", "message"),
    [
        ("true", "2025-13-01", "inventory[0].installed: not a valid date: '2025-13-01'"),
        ("true", "2025-06-01T10:00:00", "inventory[0].installed: expected a date (YYYY-MM-DD)"),
        ("yes", "2025-06-01", "countries.NO.gov_agreement:"),
    ],
)
def test_unquoted_yaml_errors_name_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    agreement: str,
    installed: str,
    message: str,
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(_libyaml_reads(RAW.format(agreement=agreement, installed=installed)))
    assert main(["evaluate", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err


def test_a_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_bytes(b"ruleset: \xff\xfe\n")
    assert main(["evaluate", str(scenario)]) == 2
    assert "s.yaml: not UTF-8 text (byte 9)" in capsys.readouterr().err


def test_tab_and_newline_stay_allowed_in_free_text() -> None:
    from gpucap.core.text import first_control

    assert first_control({"note": "line one\n\tline two"}) is None
    assert first_control({"a": [{"b": "x\ry"}]}) == (
        "a[0].b",
        "contains a control character U+000D at position 1",
    )
    assert first_control({"bad\x00key": 1}) == (
        "bad\x00key",
        "the key contains a control character U+0000 at position 3",
    )
