"""End to end with a real Prometheus: a ledger and two agents on fake hardware, scraped with the
shipped configuration and alerting rules.

The fleet (tests/e2e/fleet) breaches exactly one check by construction: aurora, a UVEU, holds
about 11% of its compute in the UAE where 7% is allowed. The test checks that the headroom series
Prometheus stores match `gpucap headroom`, that the breach alert fires for that scope only, and
that stopping an agent fires the agent-down alert for it. The shipped rules keep their `for: 1m`,
so the alerts fire on real timing; the agent is stopped while the breach alert is still pending
so that both waits overlap (about 75 s in all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gpucap.demo import DemoStack
from tests.promtest import PrometheusServer, Series, prometheus_binary, running_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

FLEET = Path(__file__).resolve().parent / "fleet"
BREACHED_SCOPE = "entity:aurora/country:AE"
BREACHED_RULE = "uveu_tier2_country_share"
OK_SCOPES = ("country:SG", "country:AE", "entity:aurora")
STOPPED_AGENT = "agent-kestrel-sg-n01"
KEPT_AGENT = "agent-aurora-ae-n01"
# Both alerts have `for: 1m`; add scrape and evaluation intervals and slack for a loaded machine.
ALERT_TIMEOUT_S = 100.0

Key = tuple[str, str]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DemoStack]:
    prometheus_binary()  # skip (or fail under CI=true) before starting anything
    demo = DemoStack(state_dir=tmp_path / "stack", fleet_dir=FLEET, interval_s=1.0)
    try:
        demo.start()
        demo.wait_for_reports()
        yield demo
    finally:
        demo.close()


@pytest.fixture
def prometheus(stack: DemoStack, tmp_path: Path) -> Iterator[PrometheusServer]:
    agents = [c.url for name, c in stack.children.items() if name.startswith("agent-")]
    with running_prometheus(
        tmp_path / "prometheus",
        agent_targets=[instance(url) for url in agents],
        ledger_targets=[instance(stack.ledger_url)],
        interval_s=1.0,
        ledger_token=stack.metrics_token,
    ) as server:
        yield server


def instance(url: str) -> str:
    """The `instance` label Prometheus gives a target: its host:port."""
    return urlsplit(url).netloc


def cli_headroom(stack: DemoStack) -> dict[str, Any]:
    """`gpucap headroom --format json` against the stack's ledger, as an operator."""
    proc = subprocess.run(
        [sys.executable, "-m", "gpucap", "headroom", "--ledger", stack.ledger_url,
         "--format", "json"],
        env={**os.environ, "GPUCAP_TOKEN": stack.operator_token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # 1: a visible check is breached
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def by_key(series: Series) -> dict[Key, float]:
    values = {(s["metric"]["rule"], s["metric"]["scope"]): float(s["value"][1]) for s in series}
    assert len(values) == len(series), f"duplicate rule/scope series: {series}"
    return values


def expected_series(checks: list[dict[str, Any]]) -> dict[str, dict[Key, float]]:
    """What the ledger's cap families must hold for these checks (limit only for caps)."""
    keys = [(c["rule"], c["scope"]) for c in checks]
    assert len(set(keys)) == len(keys), f"checks repeat a rule/scope pair: {keys}"
    return {
        "gpucap_cap_headroom_tpp": {(c["rule"], c["scope"]): c["headroom_tpp"] for c in checks},
        "gpucap_cap_used_tpp": {(c["rule"], c["scope"]): c["used_tpp"] for c in checks},
        "gpucap_cap_limit_tpp": {
            (c["rule"], c["scope"]): c["limit_tpp"]
            for c in checks
            if c.get("limit_tpp") is not None
        },
        "gpucap_cap_breached": {
            (c["rule"], c["scope"]): 1.0 if c["status"] == "breach" else 0.0 for c in checks
        },
    }


def matches(stored: dict[Key, float], wanted: dict[Key, float]) -> bool:
    return stored.keys() == wanted.keys() and all(
        stored[k] == pytest.approx(wanted[k], rel=1e-9, abs=1e-6) for k in wanted
    )


def test_prometheus_sees_headroom_breach_and_a_stopped_agent(
    stack: DemoStack, prometheus: PrometheusServer
) -> None:
    stopped = instance(stack.children[STOPPED_AGENT].url)
    kept = instance(stack.children[KEPT_AGENT].url)
    ledger = instance(stack.ledger_url)

    # The ledger's fleet-wide metrics are refused to a scrape without the token.
    refused = httpx.get(f"{stack.ledger_url}/metrics", timeout=10)
    assert refused.status_code == 401, refused.text

    # Every target is scraped (the ledger with the token, from the shipped configuration).
    prometheus.wait_for('up{job="gpucap-agent"} == 1', until=lambda r: len(r) == 2, timeout_s=30)
    prometheus.wait_for('up{job="gpucap-ledger"} == 1', timeout_s=30)

    # The cap series match `gpucap headroom`: same rule/scope label sets, equal values. Poll,
    # since a scrape may predate the ledger's last re-evaluation.
    answer = cli_headroom(stack)
    assert answer["verdict"] == "breach"
    checks = answer["checks"]
    assert {c["kind"] for c in checks} >= {"cap", "max_share", "min_share"}
    assert [(c["rule"], c["scope"]) for c in checks if c["status"] == "breach"] == [
        (BREACHED_RULE, BREACHED_SCOPE)
    ]
    for family, wanted in expected_series(checks).items():
        prometheus.wait_for(
            f'{family}{{job="gpucap-ledger", instance="{ledger}"}}',
            until=lambda r, wanted=wanted: matches(by_key(r), wanted),
            timeout_s=30,
        )
    assert cli_headroom(stack)["checks"] == checks, "the ledger's answer moved during the test"

    # The rule sees the breach (pending until its `for:` has elapsed) and no agent is down.
    prometheus.wait_for(
        f'ALERTS{{alertname="GpucapCapBreached", scope="{BREACHED_SCOPE}"}}', timeout_s=30
    )
    assert prometheus.query('ALERTS{alertname="GpucapAgentDown"}') == []

    # Stop one agent now, so that its down alert and the breach alert wait out `for:` together.
    stack.stop(STOPPED_AGENT)
    prometheus.wait_for(f'up{{job="gpucap-agent", instance="{stopped}"}} == 0', timeout_s=30)

    breach = prometheus.wait_for(
        f'ALERTS{{alertname="GpucapCapBreached", alertstate="firing", scope="{BREACHED_SCOPE}"}}',
        timeout_s=ALERT_TIMEOUT_S,
    )
    assert [(s["metric"]["rule"], s["metric"]["severity"]) for s in breach] == [
        (BREACHED_RULE, "critical")
    ]
    down = prometheus.wait_for(
        f'ALERTS{{alertname="GpucapAgentDown", alertstate="firing", instance="{stopped}"}}',
        timeout_s=ALERT_TIMEOUT_S,
    )
    assert [s["metric"]["job"] for s in down] == ["gpucap-agent"]

    # Nothing else fires: no breach alert for a scope that is ok (its series says 0), no
    # down alert for the agent still running.
    for scope in OK_SCOPES:
        assert prometheus.query(f'gpucap_cap_breached{{scope="{scope}"}} == 0'), scope
    breached_scopes = {
        s["metric"]["scope"] for s in prometheus.query('ALERTS{alertname="GpucapCapBreached"}')
    }
    assert breached_scopes == {BREACHED_SCOPE}
    down_instances = {
        s["metric"]["instance"] for s in prometheus.query('ALERTS{alertname="GpucapAgentDown"}')
    }
    assert down_instances == {stopped}
    assert kept != stopped
    assert prometheus.query(f'up{{job="gpucap-agent", instance="{kept}"}} == 1')
