"""A real Prometheus scrapes both exporters with the shipped configuration and rules on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_testkit import DEPLOY
from prometheus_client.registry import CollectorRegistry

from gpucap.exporters.agent import start_agent_metrics_server
from gpucap.exporters.ledger import LedgerCollector
from gpucap.exporters.promconfig import render_prometheus_config
from gpucap.exporters.server import serve_registry
from gpucap.exporters.snapshots import AgentSnapshot, CapSample, DeviceSample, LedgerSnapshot

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


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is required under CI=true (Debian package `prometheus`)")
        pytest.skip("prometheus not installed")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback URL we built)
        return json.loads(response.read())


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _wait_for(base: str, expr: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = _query(base, expr)
        except (urllib.error.URLError, ConnectionError):
            result = []
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"no result for {expr} within {timeout_s} s")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    binary = _prometheus()
    agent = start_agent_metrics_server(0, "127.0.0.1", lambda: AGENT)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LedgerCollector(lambda: LEDGER))
    ledger = serve_registry(registry, host="127.0.0.1", port=0)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        render_prometheus_config(
            (DEPLOY / "prometheus" / "prometheus.yml").read_text(),
            agent_targets=[f"127.0.0.1:{agent.port}"],
            ledger_targets=[f"127.0.0.1:{ledger.port}"],
            rule_files=[str(DEPLOY / "prometheus" / "alerts.yml")],
            scrape_interval_seconds=1.0,
        )
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        agent.close()
        ledger.close()


def test_shipped_config_and_rules_work_with_a_real_prometheus(prometheus: str) -> None:
    _wait_for(prometheus, 'up{job="gpucap-agent"} == 1')
    _wait_for(prometheus, 'up{job="gpucap-ledger"} == 1')
    headroom = _wait_for(prometheus, "gpucap_cap_headroom_tpp")
    assert {s["metric"]["scope"]: float(s["value"][1]) for s in headroom} == {
        "AE": -100_000.0,
        "IN": 500_000.0,
    }
    rules = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    assert {group["name"] for group in rules} == {"gpucap-caps", "gpucap-agent", "gpucap-ledger"}
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"])
    breach = _wait_for(prometheus, 'ALERTS{alertname="GpucapCapBreached"}')
    assert [s["metric"]["scope"] for s in breach] == ["AE"]
    lost = _wait_for(prometheus, 'ALERTS{alertname="GpucapGpuLost"}')
    assert [s["metric"]["uuid"] for s in lost] == ["GPU-lost"]
    assert _query(prometheus, 'ALERTS{alertname="GpucapAgentDown"}') == []
