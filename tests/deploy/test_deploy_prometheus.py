"""The shipped Prometheus configuration and alerting rules: promtool-clean, unit-tested, usable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpucap.core.errors import InputError
from gpucap.exporters.promconfig import render_prometheus_config
from tests.deploy.deploy_testkit import (
    DEPLOY,
    KNOWN_SERIES,
    check_balanced,
    metric_names,
    run,
)
from tests.promtest import promtool

PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))

REQUIRED_ALERTS = {
    "GpucapCapHeadroomLow",
    "GpucapCapBreached",
    "GpucapShareNearMaximum",
    "GpucapShareNearMinimum",
    "GpucapAgentDown",
    "GpucapAgentCollectionStale",
    "GpucapGpuLost",
    "GpucapDeviceCountDropped",
    "GpucapSpoolBacklog",
    "GpucapLedgerIngestErrors",
    "GpucapAuthRefusals",
    "GpucapUnknownAccelerator",
    "GpucapDuplicateUuid",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d)", text):
        total += int(number) * units[unit]
    return total


def test_promtool_check_rules() -> None:
    result = run(promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = run(promtool(), "test", "rules", *(p.name for p in RULE_TESTS), cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # The same tests against rules whose breach alert never fires must fail.
    broken = ALERTS.read_text().replace("expr: gpucap_cap_breached == 1", "expr: vector(0) > 1")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    caps = PROM / "tests" / "caps_test.yml"
    (tmp_path / "tests" / caps.name).write_text(caps.read_text())
    result = run(promtool(), "test", "rules", caps.name, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "GpucapCapBreached" in result.stdout + result.stderr


def test_every_required_alert_exists() -> None:
    assert set(_alerts()) >= REQUIRED_ALERTS


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_each_alert_is_documented_and_graded(name: str) -> None:
    rule = _alerts()[name]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    anchor = annotations["runbook_url"].removeprefix("deploy/README.md#")
    assert anchor == name.lower()
    readme = (DEPLOY / "README.md").read_text()
    assert re.search(rf"^### {name}$", readme, re.MULTILINE), f"no runbook section for {name}"


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_each_alert_has_a_firing_and_a_silent_unit_test(name: str) -> None:
    firing = silent = False
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] == name:
                    firing |= bool(check.get("exp_alerts"))
                    silent |= not check.get("exp_alerts")
    assert firing, f"{name}: no unit test expects it to fire"
    assert silent, f"{name}: no unit test expects it to stay silent"


@pytest.mark.parametrize("name", ["GpucapCapBreached", "GpucapAgentDown", "GpucapLedgerDown"])
def test_fast_alerts_fire_within_a_minute(name: str) -> None:
    assert _duration_seconds(_alerts()[name].get("for", "0s")) <= 60


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule.get("alert", rule.get("record")))
def test_alert_expressions_name_only_exported_series(rule: dict[str, Any]) -> None:
    check_balanced(rule["expr"])
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= KNOWN_SERIES, names - KNOWN_SERIES


def test_agent_and_ledger_jobs_match_the_rules() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"gpucap-agent", "gpucap-ledger"}
    assert config["rule_files"] == ["alerts.yml"]
    selected = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert selected <= jobs


def test_shipped_config_passes_promtool(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        (tmp_path / name).write_text((PROM / name).read_text())
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "fleet.yml").write_text('- targets: ["gpu-node-001:9470"]\n')
    (tmp_path / "ledger-metrics-token").write_text("metrics-0123456789abcdef\n")
    result = run(promtool(), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_rendered_config_points_the_jobs_at_loopback(tmp_path: Path) -> None:
    text = render_prometheus_config(
        (PROM / "prometheus.yml").read_text(),
        agent_targets=["127.0.0.1:19001", "127.0.0.1:19002"],
        ledger_targets=["127.0.0.1:18470"],
        rule_files=[str(ALERTS)],
        scrape_interval_seconds=0.5,
        ledger_token_file=str(tmp_path / "token"),
    )
    (tmp_path / "token").write_text("metrics-0123456789abcdef\n")
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "500ms"
    assert config["global"]["evaluation_interval"] == "500ms"
    assert config["rule_files"] == [str(ALERTS)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gpucap-agent"]["static_configs"] == [
        {"targets": ["127.0.0.1:19001", "127.0.0.1:19002"]}
    ]
    assert "file_sd_configs" not in jobs["gpucap-agent"]
    assert jobs["gpucap-ledger"]["static_configs"] == [{"targets": ["127.0.0.1:18470"]}]
    assert jobs["gpucap-ledger"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": str(tmp_path / "token"),
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = run(promtool(), "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("template", "interval", "message"),
    [
        ("scrape_configs: [", 1.0, "prometheus.yml: not valid YAML"),
        ("global: {}\n", 1.0, "prometheus.yml.scrape_configs: expected a list"),
        (
            "scrape_configs:\n  - job_name: gpucap-agent\n",
            1.0,
            "prometheus.yml.scrape_configs: no job named 'gpucap-ledger'",
        ),
        ((PROM / "prometheus.yml").read_text(), 0.0, "scrape_interval_seconds: expected a pos"),
    ],
)
def test_render_refuses_bad_templates(template: str, interval: float, message: str) -> None:
    with pytest.raises(InputError) as info:
        render_prometheus_config(
            template,
            agent_targets=["a:1"],
            ledger_targets=["b:2"],
            rule_files=[],
            scrape_interval_seconds=interval,
        )
    assert str(info.value).startswith(message)
