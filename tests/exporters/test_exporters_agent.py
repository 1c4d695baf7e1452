"""The agent exporter, scraped through its real HTTP server and parsed like Prometheus does."""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest

from gpucap.exporters.agent import (
    AGENT_METRICS,
    DEVICE_STATES,
    AgentCollector,
    agent_families,
    agent_registry,
    start_agent_metrics_server,
)
from gpucap.exporters.errors import MetricsServerError
from gpucap.exporters.server import MetricsServer
from gpucap.exporters.snapshots import AgentSnapshot, DeviceSample
from tests.exporters.exporters_testkit import parse, promtool_check_metrics, samples, scrape

H100 = DeviceSample(
    uuid="GPU-11111111-2222-3333-4444-555555555555",
    model="h100-sxm5-80gb",
    pci_device_id="0x2330",
    name="NVIDIA H100 80GB HBM3",
    driver_version="550.54.15",
    state="ok",
    tpp=15832.0,
    eccn_class="3A090.a",
)
LOST = DeviceSample(
    uuid="GPU-lost",
    model="h100-sxm5-80gb",
    pci_device_id="0x2330",
    name="NVIDIA H100 80GB HBM3",
    driver_version="550.54.15",
    state="lost",
    tpp=15832.0,
    eccn_class="3A090.a",
)
UNKNOWN = DeviceSample(
    uuid="GPU-unknown",
    model=None,
    pci_device_id="0x9999",
    name="Mystery Accelerator",
    driver_version="550.54.15",
    state="ok",
    tpp=None,
    eccn_class=None,
)

SNAPSHOT = AgentSnapshot(
    node_id="node-a",
    site_id="site-1",
    agent_version="0.1.0",
    nvml_up=True,
    devices=(H100, LOST, UNKNOWN),
    node_tpp=31664.0,
    node_h100e=2.0,
    collect_duration_seconds=0.125,
    last_report_success_timestamp_seconds=1_700_000_000.5,
    report_failures_total=3,
    spool_reports=2,
)


def _metrics(snapshot: AgentSnapshot) -> str:
    return generate_latest(agent_registry(lambda: snapshot)).decode()


@pytest.fixture
def served() -> Iterator[MetricsServer]:
    server = start_agent_metrics_server(0, "127.0.0.1", lambda: SNAPSHOT)
    yield server
    server.close()


def test_scrape_over_http_reports_every_value(served: MetricsServer) -> None:
    body, content_type = scrape(served.url)
    assert content_type.startswith("text/plain")
    fams = parse(body)
    assert samples(fams, "gpucap_agent_up") == {(): 1.0}
    assert samples(fams, "gpucap_agent_nvml_up") == {(): 1.0}
    assert samples(fams, "gpucap_agent_info") == {
        (("node_id", "node-a"), ("site_id", "site-1"), ("version", "0.1.0")): 1.0
    }
    info = samples(fams, "gpucap_agent_device_info")
    assert len(info) == 3
    known = dict(next(k for k in info if ("uuid", H100.uuid) in k))
    assert known == {
        "uuid": H100.uuid,
        "model": "h100-sxm5-80gb",
        "pci_device_id": "0x2330",
        "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15",
        "eccn_class": "3A090.a",
    }
    unknown = dict(next(k for k in info if ("uuid", UNKNOWN.uuid) in k))
    assert unknown["model"] == ""
    assert unknown["eccn_class"] == ""
    # An accelerator without a TPP has no TPP series at all (absent, never NaN).
    assert samples(fams, "gpucap_agent_device_tpp") == {
        (("uuid", H100.uuid),): 15832.0,
        (("uuid", LOST.uuid),): 15832.0,
    }
    assert samples(fams, "gpucap_agent_node_tpp") == {(): 31664.0}
    assert samples(fams, "gpucap_agent_node_h100e") == {(): 2.0}
    assert samples(fams, "gpucap_agent_devices") == {
        (("state", "ok"),): 2.0,
        (("state", "lost"),): 1.0,
        (("state", "unsupported"),): 0.0,
        (("state", "error"),): 0.0,
        (("state", "missing"),): 0.0,
    }
    assert samples(fams, "gpucap_agent_collect_duration_seconds") == {(): 0.125}
    assert samples(fams, "gpucap_agent_last_report_success_timestamp_seconds") == {
        (): 1_700_000_000.5
    }
    assert fams["gpucap_agent_report_failures"].type == "counter"
    assert samples(fams, "gpucap_agent_report_failures_total") == {(): 3.0}
    assert samples(fams, "gpucap_agent_spool_reports") == {(): 2.0}


def test_device_state_is_a_stateset_over_the_standard_states(served: MetricsServer) -> None:
    fams = parse(scrape(served.url)[0])
    states = samples(fams, "gpucap_agent_device_state")
    assert len(states) == 3 * len(DEVICE_STATES)
    assert states[(("state", "ok"), ("uuid", H100.uuid))] == 1.0
    assert states[(("state", "lost"), ("uuid", H100.uuid))] == 0.0
    assert states[(("state", "lost"), ("uuid", LOST.uuid))] == 1.0
    assert states[(("state", "ok"), ("uuid", LOST.uuid))] == 0.0


def test_a_state_outside_the_standard_set_is_still_exported() -> None:
    odd = DeviceSample("GPU-x", "m", "0x1", "n", "d", "fallen_off_bus", 1.0, None)
    fams = parse(_metrics(AgentSnapshot("n", "s", "v", True, devices=(odd,))))
    states = samples(fams, "gpucap_agent_device_state")
    assert states[(("state", "fallen_off_bus"), ("uuid", "GPU-x"))] == 1.0
    assert all(v == 0.0 for k, v in states.items() if ("state", "fallen_off_bus") not in k)
    assert samples(fams, "gpucap_agent_devices")[(("state", "fallen_off_bus"),)] == 1.0


def test_never_reported_shows_zero_timestamp_and_degraded_nvml() -> None:
    fams = parse(_metrics(AgentSnapshot("n", "s", "v", nvml_up=False)))
    assert samples(fams, "gpucap_agent_last_report_success_timestamp_seconds") == {(): 0.0}
    assert samples(fams, "gpucap_agent_nvml_up") == {(): 0.0}
    assert samples(fams, "gpucap_agent_up") == {(): 1.0}
    assert samples(fams, "gpucap_agent_device_info") == {}
    assert all(v == 0.0 for v in samples(fams, "gpucap_agent_devices").values())


def test_exposition_has_exactly_the_declared_families_with_help() -> None:
    fams = parse(_metrics(SNAPSHOT))
    declared = {spec.name.removesuffix("_total"): spec for spec in AGENT_METRICS}
    assert set(fams) == set(declared)
    for name, family in fams.items():
        assert family.type == declared[name].kind
        assert family.documentation == declared[name].help
        for sample in family.samples:
            assert set(sample.labels) == set(declared[name].labels), sample


def test_describe_matches_the_declared_table() -> None:
    described = [family.name for family in AgentCollector(lambda: SNAPSHOT).describe()]
    assert described == [spec.name.removesuffix("_total") for spec in AGENT_METRICS]


@pytest.mark.parametrize(
    "snapshot",
    [
        SNAPSHOT,
        AgentSnapshot("n", "s", "v", nvml_up=False),
        AgentSnapshot('node "quoted"\\', "s\nnewline", "v", True, devices=(UNKNOWN,)),
    ],
    ids=["full", "no-nvml", "odd-label-values"],
)
def test_promtool_check_metrics_is_clean(snapshot: AgentSnapshot) -> None:
    result = promtool_check_metrics(_metrics(snapshot))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_each_scrape_reads_the_latest_snapshot() -> None:
    current = [SNAPSHOT]
    with start_agent_metrics_server(0, "127.0.0.1", lambda: current[0]) as server:
        first = parse(scrape(server.url)[0])
        current[0] = AgentSnapshot("node-a", "site-1", "0.1.0", True, spool_reports=7)
        second = parse(scrape(server.url)[0])
    assert samples(first, "gpucap_agent_spool_reports") == {(): 2.0}
    assert samples(second, "gpucap_agent_spool_reports") == {(): 7.0}


def test_a_failing_snapshot_is_a_successful_scrape_with_up_zero() -> None:
    calls = []

    def snapshot() -> AgentSnapshot:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("collector state corrupted")
        return SNAPSHOT

    with start_agent_metrics_server(0, "127.0.0.1", snapshot) as server:
        down = parse(scrape(server.url)[0])
        up = parse(scrape(server.url)[0])
    assert samples(down, "gpucap_agent_up") == {(): 0.0}
    assert samples(down, "gpucap_agent_device_info") == {}
    assert samples(down, "gpucap_agent_node_tpp") == {}
    assert samples(up, "gpucap_agent_up") == {(): 1.0}


def test_the_global_registry_is_left_alone() -> None:
    with start_agent_metrics_server(0, "127.0.0.1", lambda: SNAPSHOT) as server:
        scrape(server.url)
    assert "gpucap_agent_up" not in generate_latest(REGISTRY).decode()


def test_close_releases_the_port_and_is_idempotent() -> None:
    server = start_agent_metrics_server(0, "127.0.0.1", lambda: SNAPSHOT)
    port = server.port
    assert port > 0
    assert server.url == f"http://127.0.0.1:{port}/metrics"
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        scrape(f"http://127.0.0.1:{port}/metrics")
    # The same port can be bound again at once.
    again = start_agent_metrics_server(port, "127.0.0.1", lambda: SNAPSHOT)
    try:
        assert again.port == port
    finally:
        again.close()


def test_a_taken_port_is_a_clear_operational_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsServerError) as info:
            start_agent_metrics_server(port, "127.0.0.1", lambda: SNAPSHOT)
    assert info.value.path == "metrics.port"
    assert f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize("port", [-1, 65536])
def test_an_out_of_range_port_is_refused(port: int) -> None:
    with pytest.raises(MetricsServerError, match=r"metrics\.port: expected 0\.\.65535"):
        start_agent_metrics_server(port, "127.0.0.1", lambda: SNAPSHOT)


def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(MetricsServerError, match=r"metrics\.port: cannot serve metrics"):
        start_agent_metrics_server(0, "no-such-host.invalid", lambda: SNAPSHOT)


_states = st.sampled_from([*DEVICE_STATES, "fallen_off_bus", "mig_pending"])


@given(st.lists(_states, max_size=12))
def test_every_device_is_in_exactly_one_state_and_counts_add_up(states: list[str]) -> None:
    devices = tuple(
        DeviceSample(f"GPU-{i}", "m", "0x1", "n", "d", state, 1.0, None)
        for i, state in enumerate(states)
    )
    fams = parse(_metrics(AgentSnapshot("n", "s", "v", True, devices)))
    per_device = samples(fams, "gpucap_agent_device_state")
    for device in devices:
        ones = [k for k, v in per_device.items() if ("uuid", device.uuid) in k and v == 1.0]
        assert ones == [(("state", device.state), ("uuid", device.uuid))]
    counts = samples(fams, "gpucap_agent_devices")
    assert sum(counts.values()) == len(devices)
    for state in set(states):
        assert counts[(("state", state),)] == states.count(state)


def test_families_are_a_pure_function_of_the_snapshot() -> None:
    first = [(f.name, f.samples) for f in agent_families(SNAPSHOT)]
    second = [(f.name, f.samples) for f in agent_families(SNAPSHOT)]
    assert first == second
