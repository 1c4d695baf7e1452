"""The Grafana dashboard: well-formed, and every PromQL expression names exported series."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_testkit import (
    DEPLOY,
    KNOWN_SERIES,
    check_balanced,
    metric_names,
    run,
)
from tests.promtest import promtool

DASHBOARD = DEPLOY / "grafana" / "gpucap.json"
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>[^,()]+),\s*)?(?P<label>\w+)\)$")
# Grafana variables replaced by what Grafana would substitute, for a PromQL syntax check.
_SUBSTITUTIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$rule": ".*", "$site": ".*"}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels()
        for target in panel.get("targets", [])
    ]


def test_dashboard_identity_and_variables() -> None:
    dash = _dashboard()
    assert dash["uid"] == "gpucap-fleet"
    assert dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("rule", "site"):
        query = variables[name]["query"]["query"]
        match = _LABEL_VALUES.match(query)
        assert match, query
        assert match["metric"] in KNOWN_SERIES


def test_panels_are_unique_placed_and_use_the_datasource_variable() -> None:
    panels = _panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels():
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(f"{title} {expr}" for title, expr in _exprs()).lower()
    for needle in (
        "headroom",
        "gpucap_cap_breached",
        "h100e by site",
        "h100e by model",
        "gpucap_nodes",
        "agent health",
        'up{job="gpucap-agent"}',
    ):
        assert needle in text, needle


def test_headroom_covers_share_rules_against_their_limit_share() -> None:
    panels = {panel["title"]: panel for panel in _panels()}
    headroom = " ".join(t["expr"] for t in panels["Headroom share of limit"]["targets"])
    for needle in ("gpucap_cap_limit_tpp", 'kind="max_share"', 'kind="min_share"'):
        assert needle in headroom, needle
    shares = [
        panel
        for panel in _panels()
        if {"gpucap_cap_share", "gpucap_cap_limit_share"}
        <= {name for t in panel.get("targets", []) for name in metric_names(t["expr"])}
    ]
    assert len(shares) >= 2  # the headroom bars and the share table (and its history)
    for panel in shares:
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit", panel["title"]


def test_tpp_panels_carry_a_unit() -> None:
    tpp = [
        panel
        for panel in _panels()
        if panel["type"] != "row"
        and any(
            name.endswith("_tpp") and name != "gpucap_cap_limit_tpp"
            for t in panel["targets"]
            for name in metric_names(t["expr"])
        )
        and panel["title"] != "Headroom share of limit"  # a ratio of two TPP figures
        and "H100e" not in panel["title"]  # converted to H100-equivalents
    ]
    assert tpp
    for panel in tpp:
        assert panel["fieldConfig"]["defaults"]["unit"] == "suffix: TPP", panel["title"]


def test_the_rule_pack_status_is_a_banner_on_top() -> None:
    panels = _panels()
    banner = next(p for p in panels if p["type"] in {"stat", "text"} and p["gridPos"]["y"] == 1)
    assert [t["expr"] for t in banner["targets"]] == ["gpucap_ruleset_info"]
    assert banner["gridPos"]["w"] == 24
    assert "{{status}}" in banner["targets"][0]["legendFormat"]


@pytest.mark.parametrize(("title", "expr"), _exprs(), ids=[title for title, _ in _exprs()])
def test_every_expression_names_exported_series(title: str, expr: str) -> None:
    check_balanced(expr)
    names = metric_names(expr)
    assert names, f"{title}: no metric in {expr!r}"
    assert names <= KNOWN_SERIES, f"{title}: unknown {sorted(names - KNOWN_SERIES)}"


def test_every_expression_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses each rule's PromQL; recording rules let it check the dashboard's queries.
    rules = []
    for index, (_, expr) in enumerate(_exprs()):
        for variable, value in _SUBSTITUTIONS.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"gpucap:dashboard_check:{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_syntax_check_can_fail(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    bad = {"record": "gpucap:bad", "expr": "sum by (site (gpucap_nodes)"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [bad]}]}))
    assert run(promtool(), "check", "rules", str(path)).returncode != 0
