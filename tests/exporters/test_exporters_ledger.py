"""The ledger exporter: `metrics_response()` parsed like Prometheus does, and promtool-clean."""

from __future__ import annotations

import pytest

from gpucap.exporters.ledger import (
    FINDING_KINDS,
    LEDGER_METRICS,
    LedgerCollector,
    metrics_response,
)
from gpucap.exporters.snapshots import CapSample, LedgerSnapshot, SiteSample
from tests.exporters.exporters_testkit import parse, promtool_check_metrics, samples

SNAPSHOT = LedgerSnapshot(
    ruleset_id="us-bis-ai-diffusion-2025",
    ruleset_status="rescinded",
    caps=(
        CapSample("tier2_country_cap", "IN", 800_000.0, 200_000.0, False, 1_000_000.0),
        CapSample("tier2_country_cap", "AE", 1_100_000.0, -100_000.0, True, 1_000_000.0),
        CapSample(
            "uveu_country_share", "uveu-a/DE", 50.0, 20.0, False, None, "max_share", 0.05, 0.07
        ),
    ),
    sites=(
        SiteSample("fra-1", "uveu-a", "DE", "1", 316_640.0),
        SiteSample("bom-1", "acme", "IN", "2", 800_000.0),
    ),
    nodes={("fra-1", "fresh"): 3, ("fra-1", "stale"): 1, ("bom-1", "fresh"): 5},
    findings={"duplicate_uuid": 2, "clock_skew": 1},
    reports_total={"accepted": 40, "rejected": 2},
    auth_refusals_total={"bad_signature": 4, "node_mismatch": 1},
    eventlog_rows=123,
    log_unsigned_age_s=4.5,
)


def _parsed(snapshot: LedgerSnapshot = SNAPSHOT) -> dict[str, object]:
    body, _ = metrics_response(lambda: snapshot)
    return parse(body.decode())  # type: ignore[return-value]


def test_content_type_is_the_text_format_every_prometheus_reads() -> None:
    body, content_type = metrics_response(lambda: SNAPSHOT)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert isinstance(body, bytes)


def test_caps_headroom_and_breaches() -> None:
    fams = _parsed()
    ind = (("rule", "tier2_country_cap"), ("scope", "IN"))
    uae = (("rule", "tier2_country_cap"), ("scope", "AE"))
    share = (("rule", "uveu_country_share"), ("scope", "uveu-a/DE"))
    assert samples(fams, "gpucap_cap_used_tpp") == {ind: 800_000.0, uae: 1_100_000.0, share: 50.0}
    # Share rules have no absolute limit: no limit series rather than a made-up one.
    assert samples(fams, "gpucap_cap_limit_tpp") == {ind: 1_000_000.0, uae: 1_000_000.0}
    assert samples(fams, "gpucap_cap_headroom_tpp") == {
        ind: 200_000.0,
        uae: -100_000.0,
        share: 20.0,
    }
    assert samples(fams, "gpucap_cap_breached") == {ind: 0.0, uae: 1.0, share: 0.0}


SHARES = LedgerSnapshot(
    ruleset_id="us-bis-ai-diffusion-2025",
    ruleset_status="in_force",
    caps=(
        CapSample("tier2_country_cap", "IN", 800_000.0, 200_000.0, False, 1_000_000.0, "cap"),
        CapSample(
            "uveu_tier2_country_share",
            "entity:uveu-a/country:IN",
            63.0,
            7.5,
            False,
            kind="max_share",
            share=0.063,
            limit_share=0.07,
        ),
        CapSample(
            "uveu_us_share",
            "entity:uveu-a",
            550.0,
            100.0,
            False,
            kind="min_share",
            share=0.55,
            limit_share=0.5,
        ),
        # An entity with no TPP yet: its share is undefined, its limit is not.
        CapSample(
            "uveu_us_share", "entity:uveu-b", 0.0, 0.0, False, kind="min_share", limit_share=0.5
        ),
    ),
)


def test_share_rules_export_share_and_limit_share_with_their_kind() -> None:
    fams = _parsed(SHARES)
    tier2 = (
        ("kind", "max_share"),
        ("rule", "uveu_tier2_country_share"),
        ("scope", "entity:uveu-a/country:IN"),
    )
    us_a = (("kind", "min_share"), ("rule", "uveu_us_share"), ("scope", "entity:uveu-a"))
    us_b = (("kind", "min_share"), ("rule", "uveu_us_share"), ("scope", "entity:uveu-b"))
    # Fractions 0..1, exactly as the snapshot holds them; no share where the total is 0.
    assert samples(fams, "gpucap_cap_share") == {tier2: 0.063, us_a: 0.55}
    assert samples(fams, "gpucap_cap_limit_share") == {tier2: 0.07, us_a: 0.5, us_b: 0.5}
    # One series per check, as for the TPP series: `kind` follows from the rule.
    rule_scopes = {
        (dict(k)["rule"], dict(k)["scope"]) for k in samples(fams, "gpucap_cap_used_tpp")
    }
    share_scopes = {
        (dict(k)["rule"], dict(k)["scope"]) for k in samples(fams, "gpucap_cap_limit_share")
    }
    assert share_scopes == rule_scopes - {("tier2_country_cap", "IN")}


def test_caps_have_no_share_series() -> None:
    caps_only = LedgerSnapshot("r", "in_force", caps=SNAPSHOT.caps[:2])
    fams = _parsed(caps_only)
    assert samples(fams, "gpucap_cap_share") == {}
    assert samples(fams, "gpucap_cap_limit_share") == {}
    assert len(samples(fams, "gpucap_cap_limit_tpp")) == 2
    # A share rule, in turn, has its share series and no TPP limit.
    fams = _parsed()
    share = (("kind", "max_share"), ("rule", "uveu_country_share"), ("scope", "uveu-a/DE"))
    assert samples(fams, "gpucap_cap_share") == {share: 0.05}
    assert samples(fams, "gpucap_cap_limit_share") == {share: 0.07}


def test_sites_and_node_freshness() -> None:
    fams = _parsed()
    assert samples(fams, "gpucap_site_tpp") == {
        (("country", "DE"), ("entity", "uveu-a"), ("site", "fra-1"), ("tier", "1")): 316_640.0,
        (("country", "IN"), ("entity", "acme"), ("site", "bom-1"), ("tier", "2")): 800_000.0,
    }
    # bom-1 has no stale nodes: the series is there with 0, not missing.
    assert samples(fams, "gpucap_nodes") == {
        (("site", "bom-1"), ("state", "fresh")): 5.0,
        (("site", "bom-1"), ("state", "stale")): 0.0,
        (("site", "fra-1"), ("state", "fresh")): 3.0,
        (("site", "fra-1"), ("state", "stale")): 1.0,
    }


def test_a_site_with_no_nodes_shows_zero_fresh_and_stale() -> None:
    snapshot = LedgerSnapshot("r", "active", sites=(SiteSample("new", "e", "US", "1", 0.0),))
    assert samples(_parsed(snapshot), "gpucap_nodes") == {
        (("site", "new"), ("state", "fresh")): 0.0,
        (("site", "new"), ("state", "stale")): 0.0,
    }


def test_findings_default_every_known_kind_to_zero_and_keep_new_kinds() -> None:
    findings = samples(_parsed(), "gpucap_reconciliation_findings")
    assert {dict(k)["kind"] for k in findings} == {*FINDING_KINDS, "clock_skew"}
    assert findings[(("kind", "duplicate_uuid"),)] == 2.0
    assert findings[(("kind", "clock_skew"),)] == 1.0
    assert findings[(("kind", "stale_node"),)] == 0.0


def test_counters_and_identity() -> None:
    fams = _parsed()
    assert fams["gpucap_reports"].type == "counter"
    assert samples(fams, "gpucap_reports_total") == {
        (("status", "accepted"),): 40.0,
        (("status", "duplicate"),): 0.0,
        (("status", "rejected"),): 2.0,
    }
    assert fams["gpucap_auth_refusals"].type == "counter"
    assert samples(fams, "gpucap_auth_refusals_total") == {
        (("reason", "bad_signature"),): 4.0,
        (("reason", "node_mismatch"),): 1.0,
    }
    assert samples(fams, "gpucap_ruleset_info") == {
        (("id", "us-bis-ai-diffusion-2025"), ("status", "rescinded")): 1.0
    }
    assert samples(fams, "gpucap_eventlog_rows") == {(): 123.0}
    assert samples(fams, "gpucap_log_unsigned_age_seconds") == {(): 4.5}


def test_exposition_has_exactly_the_declared_families_with_help() -> None:
    fams = _parsed()
    declared = {spec.name.removesuffix("_total"): spec for spec in LEDGER_METRICS}
    assert set(fams) == set(declared)
    for name, family in fams.items():
        assert family.type == declared[name].kind  # type: ignore[attr-defined]
        assert family.documentation == declared[name].help  # type: ignore[attr-defined]


def test_describe_matches_the_declared_table() -> None:
    described = [f.name for f in LedgerCollector(lambda: SNAPSHOT).describe()]
    assert described == [spec.name.removesuffix("_total") for spec in LEDGER_METRICS]


def test_label_values_with_quotes_and_newlines_round_trip() -> None:
    odd = 'scope "with" \\ and\nnewline'
    snapshot = LedgerSnapshot("r", "active", caps=(CapSample("rule", odd, 1.0, 2.0, False, 3.0),))
    assert samples(_parsed(snapshot), "gpucap_cap_used_tpp") == {
        (("rule", "rule"), ("scope", odd)): 1.0
    }


def test_a_failing_snapshot_fails_the_scrape() -> None:
    # The ledger's route turns this into HTTP 500, which Prometheus records as up == 0.
    def broken() -> LedgerSnapshot:
        raise RuntimeError("projection unavailable")

    with pytest.raises(RuntimeError, match="projection unavailable"):
        metrics_response(broken)


@pytest.mark.parametrize(
    "snapshot",
    [SNAPSHOT, SHARES, LedgerSnapshot("r", "draft")],
    ids=["full", "shares", "empty"],
)
def test_promtool_check_metrics_is_clean(snapshot: LedgerSnapshot) -> None:
    body, _ = metrics_response(lambda: snapshot)
    result = promtool_check_metrics(body.decode())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_promtool_check_is_not_vacuous() -> None:
    bad = "# HELP gpucap_x_count X.\n# TYPE gpucap_x_count counter\ngpucap_x_count 1\n"
    result = promtool_check_metrics(bad)
    assert 'counter metrics should have "_total" suffix' in result.stdout + result.stderr
