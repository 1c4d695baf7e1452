"""The README stays true: it documents every metric and every GPUCAP_* variable the code has."""

from __future__ import annotations

from pathlib import Path

from gpucap.exporters.agent import AGENT_METRICS
from gpucap.exporters.ledger import LEDGER_METRICS
from tests.deploy.test_deploy_systemd import _code_variables

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_metric_is_in_the_readme() -> None:
    names = [spec.name for spec in (*AGENT_METRICS, *LEDGER_METRICS)]
    assert names
    assert [n for n in names if f"`{n}`" not in README] == []


def test_every_environment_variable_is_in_the_readme() -> None:
    variables = _code_variables()
    assert variables
    assert sorted(v for v in variables if f"`{v}`" not in README) == []


def test_quick_start_is_the_two_make_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [ln.split("#")[0].strip() for ln in quick.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
