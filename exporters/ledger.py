"""The ledger's Prometheus exporter: families built per scrape from the latest `LedgerSnapshot`.

The ledger refreshes its snapshot after each write; a scrape never touches the database.
`metrics_response()` is what the ledger's `GET /metrics` route returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gpucap.exporters.families import FamilyBuilder, MetricSpec, describe_all
from gpucap.exporters.snapshots import FINDING_KINDS, LedgerSnapshot

# Label values always emitted (0 when the snapshot has none), so that rates and alerts see a
# series from the first scrape on; values outside these sets are emitted as they come.
NODE_STATES: tuple[str, ...] = ("fresh", "stale")
REPORT_STATUSES: tuple[str, ...] = ("accepted", "duplicate", "rejected")
# The rule whose checks (scope `licence:ID`) also make the per-licence series.
LICENCE_RULE = "licence_quantity"

LEDGER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "gpucap_cap_used_tpp",
        "gauge",
        "TPP counted against each cap or share rule in its scope.",
        ("rule", "scope"),
    ),
    MetricSpec(
        "gpucap_cap_limit_tpp",
        "gauge",
        "The limit of each cap in TPP; absent for share rules, whose limit is relative.",
        ("rule", "scope"),
    ),
    MetricSpec(
        "gpucap_cap_share",
        "gauge",
        "Share (0..1) each share rule measures in its scope (held TPP over the scope's total); "
        "absent for caps and where the total is 0.",
        ("rule", "scope", "kind"),
    ),
    MetricSpec(
        "gpucap_cap_limit_share",
        "gauge",
        "The limit (0..1) of each share rule: a maximum (kind max_share) or a minimum (min_share); "
        "absent for caps.",
        ("rule", "scope", "kind"),
    ),
    MetricSpec(
        "gpucap_cap_headroom_tpp",
        "gauge",
        "TPP that can still be added in each scope before the rule is breached (negative: over).",
        ("rule", "scope"),
    ),
    MetricSpec(
        "gpucap_cap_breached",
        "gauge",
        "1 if the rule is breached in the scope, else 0.",
        ("rule", "scope"),
    ),
    MetricSpec(
        "gpucap_licence_used_tpp",
        "gauge",
        "TPP counted against each licence's quantity (its licence_quantity check).",
        ("licence",),
    ),
    MetricSpec(
        "gpucap_licence_limit_tpp",
        "gauge",
        "The quantity of each licence in TPP (a limit in units converted at the model's TPP).",
        ("licence",),
    ),
    MetricSpec(
        "gpucap_site_tpp",
        "gauge",
        "Counted TPP installed at each site.",
        ("site", "entity", "country", "tier"),
    ),
    MetricSpec(
        "gpucap_nodes",
        "gauge",
        "Nodes per site whose latest report is fresh or stale.",
        ("site", "state"),
    ),
    MetricSpec(
        "gpucap_reconciliation_findings",
        "gauge",
        "Open reconciliation findings by kind.",
        ("kind",),
    ),
    MetricSpec(
        "gpucap_reports_total",
        "counter",
        "Agent reports received by the ledger, by outcome (accepted, duplicate, rejected).",
        ("status",),
    ),
    MetricSpec(
        "gpucap_auth_refusals_total",
        "counter",
        "Requests the ledger refused for authentication or authorisation, by reason.",
        ("reason",),
    ),
    MetricSpec(
        "gpucap_ruleset_info",
        "gauge",
        "Each rule pack the ledger evaluates caps against; always 1.",
        ("id", "status"),
    ),
    MetricSpec(
        "gpucap_eventlog_rows",
        "gauge",
        "Entries in the ledger's transparency log covered by its newest signed checkpoint.",
    ),
    MetricSpec(
        "gpucap_log_unsigned_age_seconds",
        "gauge",
        "Age of the oldest log entry not yet in a signed checkpoint; 0 when every one is signed.",
    ),
)


def _with_defaults(counts: Mapping[str, int], always: Iterable[str]) -> dict[str, int]:
    merged = dict.fromkeys(always, 0)
    merged.update(counts)
    return merged


def ledger_families(snapshot: LedgerSnapshot) -> list[Metric]:
    """Build every ledger family from one snapshot (pure)."""
    out = FamilyBuilder(LEDGER_METRICS)
    for cap in snapshot.caps:
        key = {"rule": cap.rule, "scope": cap.scope}
        out.add("gpucap_cap_used_tpp", cap.used_tpp, key)
        if cap.limit_tpp is not None:
            out.add("gpucap_cap_limit_tpp", cap.limit_tpp, key)
        if cap.limit_share is not None:
            # `kind` depends on the rule alone, so it adds no series: one per check, as above.
            share_key = {**key, "kind": cap.kind}
            if cap.share is not None:
                out.add("gpucap_cap_share", cap.share, share_key)
            out.add("gpucap_cap_limit_share", cap.limit_share, share_key)
        out.add("gpucap_cap_headroom_tpp", cap.headroom_tpp, key)
        out.add("gpucap_cap_breached", 1 if cap.breached else 0, key)
        if cap.rule == LICENCE_RULE and cap.scope.startswith("licence:"):
            licence = {"licence": cap.scope.removeprefix("licence:")}
            out.add("gpucap_licence_used_tpp", cap.used_tpp, licence)
            if cap.limit_tpp is not None:
                out.add("gpucap_licence_limit_tpp", cap.limit_tpp, licence)
    for site in snapshot.sites:
        labels = {
            "site": site.site,
            "entity": site.entity,
            "country": site.country,
            "tier": site.tier,
        }
        out.add("gpucap_site_tpp", site.tpp, labels)
    # Every site known to the ledger gets both fresh and stale, so a site whose nodes all went
    # stale shows fresh=0 rather than losing the series.
    per_site: dict[str, dict[str, int]] = {s.site: {} for s in snapshot.sites}
    for (site_id, state), count in snapshot.nodes.items():
        per_site.setdefault(site_id, {})[state] = count
    for site_id in sorted(per_site):
        for state, count in _with_defaults(per_site[site_id], NODE_STATES).items():
            out.add("gpucap_nodes", count, {"site": site_id, "state": state})
    for kind, count in _with_defaults(snapshot.findings, FINDING_KINDS).items():
        out.add("gpucap_reconciliation_findings", count, {"kind": kind})
    for status, count in _with_defaults(snapshot.reports_total, REPORT_STATUSES).items():
        out.add("gpucap_reports_total", count, {"status": status})
    for reason, count in sorted(snapshot.auth_refusals_total.items()):
        out.add("gpucap_auth_refusals_total", count, {"reason": reason})
    # One series per pack evaluated (none before a registry is loaded). The cap series need no
    # `ruleset` label: no two shipped packs share a rule id (tests/ledger/test_multipack_ledger).
    packs = snapshot.rulesets or ((snapshot.ruleset_id, snapshot.ruleset_status),)
    for pack_id, status in packs:
        if pack_id:
            out.add("gpucap_ruleset_info", 1, {"id": pack_id, "status": status})
    out.add("gpucap_eventlog_rows", snapshot.eventlog_rows)
    out.add("gpucap_log_unsigned_age_seconds", snapshot.log_unsigned_age_s)
    return out.families()


class LedgerCollector(Collector):
    """A custom collector over the ledger's latest snapshot."""

    def __init__(self, snapshot: Callable[[], LedgerSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return describe_all(LEDGER_METRICS)

    def collect(self) -> Iterator[Metric]:
        return iter(ledger_families(self._snapshot()))


def metrics_response(snapshot: Callable[[], LedgerSnapshot]) -> tuple[bytes, str]:
    """The body and content type of `GET /metrics` (Prometheus text format 0.0.4)."""
    return generate_latest(LedgerCollector(snapshot)), CONTENT_TYPE_PLAIN_0_0_4
