"""A real Prometheus scrapes both exporters with the shipped configuration and rules on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from gpucap.exporters.agent import start_agent_metrics_server
from gpucap.exporters.ledger import LedgerCollector
from gpucap.exporters.server import serve_registry
from gpucap.exporters.snapshots import AgentSnapshot, CapSample, DeviceSample, LedgerSnapshot
from tests.promtest import PrometheusServer, prometheus_binary, running_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

AGENT = AgentSnapshot(
    "node-a",
    "site-1",
    "0.1.0",
    True,
    devices=(
        DeviceSample("GPU-ok", "h100", "0x2330", "NVIDIA H100", "550", "ok", 15832.0, "3A090.a"),
        DeviceSample("GPU-lost", "h100", "0x2330", "NVIDIA H100", "550", "lost", 15832.0, None),
    ),
    node_tpp=31664.0,
    node_h100e=2.0,
    last_report_success_timestamp_seconds=time.time(),
)
LEDGER = LedgerSnapshot(
    "us-bis-ai-diffusion-2025",
    "active",
    caps=(
        CapSample("tier2_country_cap", "AE", 1_100_000.0, -100_000.0, True, 1_000_000.0),
        CapSample("tier2_country_cap", "IN", 500_000.0, 500_000.0, False, 1_000_000.0),
    ),
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    prometheus_binary()  # skip (or fail under CI=true) before starting anything
    agent = start_agent_metrics_server(0, "127.0.0.1", lambda: AGENT)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LedgerCollector(lambda: LEDGER))
    ledger = serve_registry(registry, host="127.0.0.1", port=0)
    try:
        with running_prometheus(
            tmp_path,
            agent_targets=[f"127.0.0.1:{agent.port}"],
            ledger_targets=[f"127.0.0.1:{ledger.port}"],
            interval_s=1.0,
        ) as server:
            yield server
    finally:
        agent.close()
        ledger.close()


def test_shipped_config_and_rules_work_with_a_real_prometheus(prometheus: PrometheusServer) -> None:
    prometheus.wait_for('up{job="gpucap-agent"} == 1')
    prometheus.wait_for('up{job="gpucap-ledger"} == 1')
    headroom = prometheus.wait_for("gpucap_cap_headroom_tpp")
    assert {s["metric"]["scope"]: float(s["value"][1]) for s in headroom} == {
        "AE": -100_000.0,
        "IN": 500_000.0,
    }
    rules = prometheus.get("/api/v1/rules")["data"]["groups"]
    assert {group["name"] for group in rules} == {"gpucap-caps", "gpucap-agent", "gpucap-ledger"}
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"])
    breach = prometheus.wait_for('ALERTS{alertname="GpucapCapBreached"}')
    assert [s["metric"]["scope"] for s in breach] == ["AE"]
    lost = prometheus.wait_for('ALERTS{alertname="GpucapGpuLost"}')
    assert [s["metric"]["uuid"] for s in lost] == ["GPU-lost"]
    assert prometheus.query('ALERTS{alertname="GpucapAgentDown"}') == []
