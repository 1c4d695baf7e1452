"""What the agent and the ledger hand to their exporters: plain frozen values, base units.

The agent and the ledger refresh a snapshot after each collection or write; the collectors in
this package turn the latest snapshot into metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceSample:
    """One accelerator as the agent last saw it."""

    uuid: str
    model: str | None  # catalogue id; None for an accelerator the catalogue does not know
    pci_device_id: str  # "0x2330"
    name: str
    driver_version: str
    state: str  # ok | lost | unsupported | ...
    tpp: float | None
    eccn_class: str | None


@dataclass(frozen=True)
class AgentSnapshot:
    """The agent's state after its latest collection and report attempt."""

    node_id: str
    site_id: str
    agent_version: str
    nvml_up: bool
    devices: tuple[DeviceSample, ...] = ()
    node_tpp: float = 0.0
    node_h100e: float = 0.0
    collect_duration_seconds: float = 0.0
    last_report_success_timestamp_seconds: float | None = None
    report_failures_total: int = 0
    spool_reports: int = 0
    spool_errors_total: int = 0  # spool steps that failed with an I/O error (ENOSPC, EIO, ...)


# Reconciliation finding kinds: the ledger produces them, the exporter always emits each one.
FINDING_KINDS: tuple[str, ...] = (
    "duplicate_uuid",  # the same GPU UUID reported by two nodes or sites
    "vanished_device",  # a device gone from a node without a decommission
    "stale_node",  # a node silent past the stale threshold
    "unknown_accelerator",  # a device the catalogue does not know (not counted)
    "tpp_mismatch",  # the agent's TPP disagrees with the catalogue
    "declared_vs_observed",  # declared inventory and observed counts differ at a site
    "shipment_missing",  # a shipped serial never reported at its site within the grace days
    "shipment_elsewhere",  # a shipped serial reported at another site
    "unexpected_device",  # a device needing a licence, in no shipment and under no licence
)


@dataclass(frozen=True)
class CapSample:
    """One check of the engine: a cap (limit_tpp set) or a share rule (limit_share set).

    Shares are fractions 0..1; `share` is None when the scope holds no TPP at all (undefined).
    `kind` is the engine's check kind: `max_share`/`min_share` for share rules.
    """

    rule: str
    scope: str
    used_tpp: float
    headroom_tpp: float
    breached: bool
    limit_tpp: float | None = None
    kind: str = ""
    share: float | None = None
    limit_share: float | None = None


@dataclass(frozen=True)
class SiteSample:
    """Counted TPP installed at one site."""

    site: str
    entity: str
    country: str
    tier: str  # "1" | "2" | "3"
    tpp: float


@dataclass(frozen=True)
class LedgerSnapshot:
    """The ledger's projections, refreshed after each write (never per scrape)."""

    ruleset_id: str
    ruleset_status: str
    caps: tuple[CapSample, ...] = ()
    sites: tuple[SiteSample, ...] = ()
    nodes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (site, fresh|stale) -> n
    findings: Mapping[str, int] = field(default_factory=dict)  # reconciliation kind -> n
    reports_total: Mapping[str, int] = field(default_factory=dict)  # accepted|duplicate|rejected
    auth_refusals_total: Mapping[str, int] = field(default_factory=dict)  # reason -> n
    eventlog_rows: int = 0
    log_unsigned_age_s: float = 0.0  # age of the oldest entry not yet in a signed checkpoint
    # Every pack evaluated, as (id, status), in order; empty: `ruleset_id`'s alone.
    rulesets: tuple[tuple[str, str], ...] = ()
