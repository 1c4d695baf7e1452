"""The node agent's Prometheus exporter: families built per scrape from the latest `AgentSnapshot`.

A scrape calls the agent's snapshot function and nothing else: no NVML, no disk, no network.
Identity (node, site, version) is one `gpucap_agent_info` series to join on, never a label on
every series; per-device series carry only `uuid`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gpucap.exporters.families import FamilyBuilder, MetricSpec, describe_all
from gpucap.exporters.server import MetricsServer, serve_registry
from gpucap.exporters.snapshots import AgentSnapshot

_log = logging.getLogger(__name__)

# The agent's device states (ok; lost: fell off the bus; unsupported: NVML gives no handle;
# error: any other NVML failure; missing: seen earlier, now gone from enumeration). All are
# emitted (0 or 1 per device, a count per state for the node) so alerts compare against 0
# instead of testing for absent series; a state outside this set is emitted as well.
DEVICE_STATES: tuple[str, ...] = ("ok", "lost", "unsupported", "error", "missing")

AGENT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "gpucap_agent_up",
        "gauge",
        "1 if the agent produced its latest snapshot for this scrape, 0 if building it failed.",
    ),
    MetricSpec(
        "gpucap_agent_info",
        "gauge",
        "Identity of this agent; always 1. Join on instance to attach node and site.",
        ("node_id", "site_id", "version"),
    ),
    MetricSpec(
        "gpucap_agent_nvml_up",
        "gauge",
        "1 if NVML initialised and answered during the latest collection, else 0.",
    ),
    MetricSpec(
        "gpucap_agent_device_info",
        "gauge",
        "Identity of each accelerator; always 1. model is empty for an unknown accelerator.",
        ("uuid", "model", "pci_device_id", "name", "driver_version", "eccn_class"),
    ),
    MetricSpec(
        "gpucap_agent_device_tpp",
        "gauge",
        "Total Processing Performance of each accelerator (ECCN 3A090 TPP, dimensionless).",
        ("uuid",),
    ),
    MetricSpec(
        "gpucap_agent_device_state",
        "gauge",
        "State of each accelerator: 1 for the current state, 0 for the other standard states.",
        ("uuid", "state"),
    ),
    MetricSpec(
        "gpucap_agent_node_tpp",
        "gauge",
        "Counted TPP of all accelerators on this node.",
    ),
    MetricSpec(
        "gpucap_agent_node_h100e",
        "gauge",
        "Counted capacity of this node in H100-equivalents (node TPP over the reference TPP).",
    ),
    MetricSpec(
        "gpucap_agent_devices",
        "gauge",
        "Number of accelerators on this node by state.",
        ("state",),
    ),
    MetricSpec(
        "gpucap_agent_collect_duration_seconds",
        "gauge",
        "Wall-clock duration of the latest collection, in seconds.",
    ),
    MetricSpec(
        "gpucap_agent_last_report_success_timestamp_seconds",
        "gauge",
        "Unix time of the latest report the ledger accepted; 0 if none has been accepted yet.",
    ),
    MetricSpec(
        "gpucap_agent_report_failures_total",
        "counter",
        "Failed attempts to deliver a report to the ledger (each retry counts) since the start.",
    ),
    MetricSpec(
        "gpucap_agent_spool_errors_total",
        "counter",
        "Spool reads or writes that failed (full disk, I/O error) since the agent started.",
    ),
    MetricSpec(
        "gpucap_agent_spool_reports",
        "gauge",
        "Reports waiting in the local spool for delivery to the ledger.",
    ),
)


def agent_families(snapshot: AgentSnapshot) -> list[Metric]:
    """Build every agent family from one snapshot (pure)."""
    out = FamilyBuilder(AGENT_METRICS)
    out.add("gpucap_agent_up", 1)
    out.add(
        "gpucap_agent_info",
        1,
        {
            "node_id": snapshot.node_id,
            "site_id": snapshot.site_id,
            "version": snapshot.agent_version,
        },
    )
    out.add("gpucap_agent_nvml_up", 1 if snapshot.nvml_up else 0)
    states = Counter({state: 0 for state in DEVICE_STATES})
    for device in snapshot.devices:
        out.add(
            "gpucap_agent_device_info",
            1,
            {
                "uuid": device.uuid,
                "model": device.model or "",
                "pci_device_id": device.pci_device_id,
                "name": device.name,
                "driver_version": device.driver_version,
                "eccn_class": device.eccn_class or "",
            },
        )
        # An accelerator without a TPP (unknown model) has no series: absent, never NaN.
        if device.tpp is not None:
            out.add("gpucap_agent_device_tpp", device.tpp, {"uuid": device.uuid})
        for state in (*DEVICE_STATES, *(() if device.state in DEVICE_STATES else (device.state,))):
            value = 1 if state == device.state else 0
            out.add("gpucap_agent_device_state", value, {"uuid": device.uuid, "state": state})
        states[device.state] += 1
    for state, count in states.items():
        out.add("gpucap_agent_devices", count, {"state": state})
    out.add("gpucap_agent_node_tpp", snapshot.node_tpp)
    out.add("gpucap_agent_node_h100e", snapshot.node_h100e)
    out.add("gpucap_agent_collect_duration_seconds", snapshot.collect_duration_seconds)
    out.add(
        "gpucap_agent_last_report_success_timestamp_seconds",
        snapshot.last_report_success_timestamp_seconds or 0.0,
    )
    out.add("gpucap_agent_report_failures_total", snapshot.report_failures_total)
    out.add("gpucap_agent_spool_errors_total", snapshot.spool_errors_total)
    out.add("gpucap_agent_spool_reports", snapshot.spool_reports)
    return out.families()


def agent_down_families() -> list[Metric]:
    """What a scrape shows when the snapshot could not be obtained: `gpucap_agent_up 0` only."""
    out = FamilyBuilder(AGENT_METRICS)
    out.add("gpucap_agent_up", 0)
    return out.families()


class AgentCollector(Collector):
    """A custom collector over the agent's latest snapshot; register it in its own registry."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return describe_all(AGENT_METRICS)

    def collect(self) -> Iterator[Metric]:
        try:
            current = self._snapshot()
        except Exception:
            # A broken snapshot must not turn into a failed scrape: Prometheus would then report
            # the agent as unreachable, hiding that it is running but unable to report.
            _log.exception("agent snapshot failed; exporting gpucap_agent_up 0")
            return iter(agent_down_families())
        return iter(agent_families(current))


def agent_registry(snapshot: Callable[[], AgentSnapshot]) -> CollectorRegistry:
    """A fresh registry holding only the agent collector (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentCollector(snapshot))
    return registry


def start_agent_metrics_server(
    port: int, host: str, snapshot: Callable[[], AgentSnapshot]
) -> MetricsServer:
    """Serve `/metrics` on `host:port` in a background thread; port 0 picks a free port.

    Raises `MetricsServerError` if the address cannot be bound. Call `.close()` to stop.
    """
    return serve_registry(agent_registry(snapshot), host=host, port=port)
