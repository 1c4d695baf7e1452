"""The PromQL extraction the alert and dashboard tests rely on must itself be right."""

from __future__ import annotations

import pytest

from tests.deploy.deploy_testkit import check_balanced, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="gpucap-agent"} == 0 or gpucap_agent_up == 0', {"up", "gpucap_agent_up"}),
        (
            'sum by (job, instance) (rate(gpucap_reports_total{status="rejected"}[5m])) > 0',
            {"gpucap_reports_total"},
        ),
        (
            "max_over_time((sum by (job, instance) (gpucap_agent_devices))[6h:1m]) offset 5m",
            {"gpucap_agent_devices"},
        ),
        (
            "gpucap_agent_node_h100e * on (job, instance) group_left (site_id) gpucap_agent_info",
            {"gpucap_agent_node_h100e", "gpucap_agent_info"},
        ),
        ('sum(gpucap_site_tpp{site=~"$site"}) / 1e3 > bool 0.5', {"gpucap_site_tpp"}),
        (
            "time() - gpucap_agent_last_report_success_timestamp_seconds > 900",
            {"gpucap_agent_last_report_success_timestamp_seconds"},
        ),
        ('label_replace(gpucap_nodes, "x", "$1", "site", "(.*)")', {"gpucap_nodes"}),
    ],
)
def test_metric_names_are_extracted(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelt_metric_is_visible() -> None:
    assert metric_names("sum(gpucap_cap_headrom_tpp)") == {"gpucap_cap_headrom_tpp"}


@pytest.mark.parametrize("expr", ["sum(up", 'up{job="a"', "rate(up[5m)", "up)"])
def test_unbalanced_expressions_are_refused(expr: str) -> None:
    with pytest.raises(AssertionError):
        check_balanced(expr)
