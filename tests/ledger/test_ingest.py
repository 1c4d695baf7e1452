"""Ingest on both databases: idempotency, inventory changes, decommission, rebuild."""

from __future__ import annotations

import json
import threading
from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpucap.core.catalogue import default_catalogue
from gpucap.core.report import evaluation_to_dict
from gpucap.ledger import ingest, log, replay, tokens
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.store import Store
from gpucap.ledger.tables import table
from tests.ledger.support import H100_TPP, Clock, at, device, log_kinds, report


def rep(**kw: object) -> Report:
    return Report.model_validate_json(json.dumps(report(**kw)))  # type: ignore[arg-type]


def count(led: Ledger, name: str) -> int:
    with led.store.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table(name))).scalar_one())


def lines(led: Ledger) -> list[tuple[str, str, int, str | None, int]]:
    t = table("inventory_line")
    with led.store.read() as conn:
        return [
            (r.site_id, r.installed, r.tpp, r.removed, r._mapping["count"])
            for r in conn.execute(sa.select(t).where(t.c.count > 0).order_by(t.c.key))
        ]


def check(led: Ledger, rule: str, scope: str, day: date) -> dict[str, object]:
    ev, _ = led.evaluation(day)
    found = [
        c for c in evaluation_to_dict(ev)["checks"] if (c["rule"], c["scope"]) == (rule, scope)
    ]
    assert len(found) == 1, found
    return found[0]


def test_accepts_then_refuses_the_same_and_a_lower_seq(ledger: Ledger) -> None:
    assert ledger.ingest(rep(seq=5)).status == "accepted"
    events = count(ledger, "log_entry")
    assert ledger.ingest(rep(seq=5)).status == "duplicate"
    assert ledger.ingest(rep(seq=3)).status == "duplicate"
    assert count(ledger, "log_entry") == events
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, None, 8)]


def test_heartbeats_add_no_entries_and_keep_projections(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    version = ledger.store.state().projection_version
    for seq in range(2, 1002):  # 1,000 unchanged reports within one UTC day
        assert ledger.ingest(rep(seq=seq)) == ingest.Outcome("accepted", seq)
    assert ledger.store.state().projection_version == version
    assert log_kinds(ledger.settings.db_url) == ["registry", "report"]
    assert node(ledger, "n1")[:2] == (1001, "2025-09-01T10:00:00.000000Z")
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, None, 8)]


def test_one_presence_entry_per_node_per_utc_day(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    clock.moment = at("2025-09-02T00:00:01")
    for seq in range(2, 1002):
        ledger.ingest(rep(seq=seq))
    clock.moment = at("2025-09-03T23:59:59")
    ledger.ingest(rep(seq=1002))
    assert log_kinds(ledger.settings.db_url) == ["registry", "report", "presence", "presence"]
    with ledger.store.read() as conn:
        leaves = [
            json.loads(r[0])
            for r in conn.execute(
                sa.text("SELECT leaf FROM log_entry WHERE kind = 'presence' ORDER BY id")
            )
        ]
    with ledger.store.read() as conn:
        digest = conn.execute(sa.text("SELECT devices_digest FROM node")).scalar_one()
    assert [e["body"] for e in leaves] == [
        {"node_id": "n1", "site_id": "acme-ae-1", "seq": 2, "devices": digest},
        {"node_id": "n1", "site_id": "acme-ae-1", "seq": 1002, "devices": digest},
    ]
    assert [e["recorded_at"][:10] for e in leaves] == ["2025-09-02", "2025-09-03"]
    assert node(ledger, "n1")[:2] == (1002, "2025-09-03T23:59:59.000000Z")


def test_each_kind_of_change_adds_exactly_one_entry(ledger: Ledger, clock: Clock) -> None:
    kinds = lambda: log_kinds(ledger.settings.db_url, tokens=True)  # noqa: E731
    before = kinds()
    ledger.ingest(rep(seq=1))
    assert kinds() == [*before, "report"]
    ledger.ingest(rep(seq=2, n=7))  # a changed inventory
    assert kinds() == [*before, "report", "report"]
    token_id, _ = tokens.issue(ledger.store, "auditor", clock(), None, auditor="kpmg")
    tokens.revoke(ledger.store, token_id, clock(), by="alice")
    assert kinds()[-2:] == ["token_issued", "token_revoked"]
    ingest.decommission(ledger.store, "n1", clock(), "operator:test")
    assert kinds()[-1] == "decommission"
    assert len(kinds()) == len(before) + 5
    with ledger.store.read() as conn:
        revoked = json.loads(
            conn.execute(
                sa.text("SELECT leaf FROM log_entry WHERE kind = 'token_revoked'")
            ).scalar_one()
        )
    assert revoked["actor"] == "operator:alice"
    assert revoked["body"] == {
        "id": token_id,
        "kind": "auditor",
        "subject": {"auditor": "kpmg"},
        "scope": None,
    }
    assert "gpc1" not in json.dumps(revoked)  # never the token itself


def node(led: Ledger, node_id: str) -> tuple[int, str]:
    with led.store.read() as conn:
        row = conn.execute(
            sa.text("SELECT last_seq, last_seen FROM node WHERE node_id = :n"), {"n": node_id}
        ).one()
    return int(row[0]), str(row[1])


def test_a_vanished_device_stops_counting_for_installed_base(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    clock.moment = at("2025-10-01T00:00:00")
    ledger.ingest(rep(seq=2, n=6))
    assert lines(ledger) == [
        ("acme-ae-1", "2025-09-01", H100_TPP, None, 6),
        ("acme-ae-1", "2025-09-01", H100_TPP, "2025-10-01", 2),
    ]
    share = check(ledger, "uveu_tier2_country_share", "entity:acme/country:AE", date(2025, 10, 2))
    assert share["used_tpp"] == 6 * H100_TPP
    # It comes back: it counts again from its first-seen date.
    ledger.ingest(rep(seq=3, n=8))
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, None, 8)]


def test_headroom_matches_hand_computation(ledger: Ledger) -> None:
    ledger.ingest(rep(seq=1))
    day = date(2025, 9, 2)
    # acme: 1000 declared H100 in the US, 8 observed in AE (Tier 2). T = 1008 H100.
    total = Fraction(1008 * H100_TPP)
    share = check(ledger, "uveu_tier2_country_share", "entity:acme/country:AE", day)
    assert share["used_tpp"] == 8 * H100_TPP
    expected = (Fraction(7, 100) * total - 8 * H100_TPP) / Fraction(93, 100)
    assert share["headroom_tpp"] == pytest.approx(float(expected))
    us = check(ledger, "uveu_us_share", "entity:acme", day)
    assert us["headroom_tpp"] == 1000 * H100_TPP * 2 - 1008 * H100_TPP
    ae = check(ledger, "country_allocation", "country:AE", day)
    assert ae["used_tpp"] == 0  # UVEU deployments are exempt from the country allocation
    assert ae["headroom_tpp"] == 790_000_000 * 2


def test_decommission_closes_devices_and_refuses_later_reports(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.ingest(rep(seq=1))
    clock.moment = at("2025-09-10T00:00:00")
    assert ingest.decommission(ledger.store, "n1", clock(), "operator:test") == (8, 0)
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, "2025-09-10", 8)]
    with pytest.raises(RejectedError, match=r"decommissioned on 2025-09-10; .* new node id"):
        ledger.ingest(rep(seq=2))
    with pytest.raises(RejectedError, match="already"):
        ingest.decommission(ledger.store, "n1", clock(), "operator:test")
    # The machine comes back under a new node id: its GPUs count again from that day, and the
    # same UUIDs on the closed node are no duplicate.
    ledger.ingest(rep(node="n1-b", seq=1, devices=[device(i, "n1") for i in range(8)]))
    assert ledger_findings(ledger)["counts"]["duplicate_uuid"] == 0  # type: ignore[index]
    assert ("acme-ae-1", "2025-09-10", H100_TPP, None, 8) in lines(ledger)


def test_refusals_write_nothing(ledger: Ledger) -> None:
    ledger.ingest(rep(seq=1))
    before = count(ledger, "log_entry")
    with pytest.raises(RejectedError, match="site_id"):
        ledger.ingest(rep(seq=2, site="nowhere-1"))
    with pytest.raises(RejectedError, match="site_id"):
        ledger.ingest(rep(seq=2, site="acme-us-1"))  # a node cannot move without decommission
    with pytest.raises(RejectedError, match=r"devices\[1\]\.uuid"):
        ledger.ingest(rep(seq=2, devices=[device(0), device(0)]))
    assert count(ledger, "log_entry") == before


def test_catalogue_overrides_the_agent_and_flags_mismatch(ledger: Ledger) -> None:
    devices = [
        device(0, tpp=99999.0),  # the agent's number is wrong: the catalogue's counts
        device(1, pci_device_id="0xffff", name="Mystery Accelerator", model=None, tpp=None),
    ]
    ledger.ingest(rep(seq=1, devices=devices))
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, None, 1)]
    found = ledger_findings(ledger)
    assert found["counts"]["tpp_mismatch"] == 1
    assert found["counts"]["unknown_accelerator"] == 1
    assert found["findings"]["unknown_accelerator"][0]["uuid"] == "GPU-n1-0001"


def ledger_findings(led: Ledger) -> dict[str, object]:
    from gpucap.ledger import reconcile

    with led.store.read() as conn:
        fleet = led.registry(conn)
        result: dict[str, object] = reconcile.findings(
            conn, fleet, led.now(), led.settings.stale_after_s, led.today()
        )
    return result


def test_reconciliation_duplicates_vanished_stale_declared(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    shared = device(0)  # the same UUID on a second node at another site: possible diversion
    ledger.ingest(rep(node="n2", site="acme-us-1", seq=1, devices=[shared]))
    clock.moment = at("2025-09-01T10:10:00")
    ledger.ingest(rep(seq=2, n=7))
    found = ledger_findings(ledger)
    counts = found["counts"]
    assert isinstance(counts, dict)
    assert counts["duplicate_uuid"] == 1
    assert counts["vanished_device"] == 1
    assert counts["stale_node"] == 0
    assert counts["declared_vs_observed"] == 1  # acme-us-1: 1000 declared, 1 observed
    clock.moment = at("2025-09-01T12:00:00")  # both silent for more than 3 x 300 s
    assert ledger_findings(ledger)["counts"]["stale_node"] == 2  # type: ignore[index]


def test_rebuild_gives_the_same_answers(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    clock.moment = at("2025-09-05T00:00:00")
    ledger.ingest(rep(seq=2, n=5))
    ledger.ingest(rep(node="n2", site="nimbus-ae-1", seq=1))
    clock.moment = at("2025-09-06T00:00:00")
    ingest.decommission(ledger.store, "n2", clock(), "operator:test")
    day = date(2025, 9, 7)
    before = evaluation_to_dict(ledger.evaluation(day)[0])
    lines_before = lines(ledger)
    assert replay.rebuild(ledger.store, default_catalogue()) == count(ledger, "log_entry")
    assert lines(ledger) == lines_before
    assert evaluation_to_dict(ledger.evaluation(day)[0]) == before


def test_concurrent_writers_accept_each_report_once(ledger: Ledger) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def post(seq: int) -> None:
        outcome = ledger.ingest(rep(seq=seq))
        with lock:
            results.append(outcome.status)

    threads = [threading.Thread(target=post, args=(s,)) for s in (1, 1, 2, 2, 3, 3) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = results.count("accepted")
    assert 1 <= accepted <= 3  # a lower seq arriving after a higher one is a duplicate
    assert accepted >= 1
    assert count(ledger, "log_entry") == 2  # the registry and the first report (later: heartbeats)
    assert lines(ledger) == [("acme-ae-1", "2025-09-01", H100_TPP, None, 8)]


def test_a_site_removed_by_another_process_is_refused_at_once(
    ledger: Ledger, registry_file: Path
) -> None:
    ledger.ingest(rep(seq=1))  # caches the registry's sites
    other = Ledger(ledger.settings, Store.open(ledger.settings), default_catalogue())
    try:
        text = registry_file.read_text(encoding="utf-8")
        registry_file.write_text(
            text.replace("  - {id: nimbus-ae-1, entity: nimbus, country: AE}\n", ""),
            encoding="utf-8",
        )
        assert other.load_registry_file(registry_file)
    finally:
        other.store.close()
    with pytest.raises(RejectedError, match="no site 'nimbus-ae-1'"):
        ledger.ingest(rep(node="n2", site="nimbus-ae-1", seq=1))
    assert ledger.ingest(rep(seq=2)).status == "accepted"


def test_an_entity_operator_sees_the_checks_of_its_sites_in_a_territory(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A site in HK is bound by `country:CN` checks (the rule pack treats HK as CN)."""
    from gpucap.ledger.app import _whatif, headroom_answer
    from gpucap.ledger.models import WhatIf
    from gpucap.ledger.tokens import Principal
    from tests.ledger.support import HK_REGISTRY

    path = tmp_path / "hk.yaml"
    path.write_text(HK_REGISTRY, encoding="utf-8")
    ledger.load_registry_file(path)
    ledger.ingest(rep(node="hk1", site="harbour-hk-1", n=4))
    admin = Principal("a", "operator", operator="root")
    harbour = Principal("h", "operator", operator="ops", entity="harbour")
    tier3 = ("tier3_prohibition", "country:CN", "breach")

    def checks(principal: Principal, scope: str | None) -> set[tuple[str, str, str]]:
        doc = headroom_answer(ledger, principal, scope, None)
        return {(c["rule"], c["scope"], c["status"]) for c in doc["checks"]}

    assert tier3 in checks(admin, None)
    for scope in (None, "site:harbour-hk-1", "country:HK", "country:CN", "entity:harbour"):
        if scope == "entity:harbour":
            assert tier3 not in checks(harbour, scope)  # a country check, not the entity's
            continue
        assert tier3 in checks(harbour, scope), scope
    assert headroom_answer(ledger, harbour, None, None)["verdict"] == "breach"
    sites = headroom_answer(ledger, harbour, "country:HK", None)["sites"]
    assert [s["id"] for s in sites] == ["harbour-hk-1"]
    add = WhatIf.model_validate(
        {"add": [{"site": "harbour-hk-1", "model": "h100-sxm5-80gb", "count": 1}]}
    )
    answer = _whatif(ledger, harbour, add)
    assert answer["allowed"] is False
    assert answer["binding"]["rule"] == "tier3_prohibition"
    assert answer["binding"]["scope"] == "country:CN"


def test_rebuild_names_a_recorded_report_that_no_longer_validates(ledger: Ledger) -> None:
    """A report an older, laxer ledger accepted (seq 0) stops the rebuild with its entry."""
    from gpucap.ledger.errors import LedgerError

    body = report(seq=0)
    with ledger.store.write() as conn:
        log.append(conn, "report", "node:n1", body, "2025-09-01T10:00:00.000000Z")
    ledger.integrator.run_once()
    before = count(ledger, "registry")
    with pytest.raises(LedgerError, match=r"entry\[1\].*seq"):
        replay.rebuild(ledger.store, default_catalogue())
    assert count(ledger, "registry") == before  # nothing was dropped


def test_metrics_and_the_api_count_declared_vs_observed_alike(ledger: Ledger) -> None:
    """Declared lines are the registry's only: a site with agents but no declared line is not
    a `declared_vs_observed` finding in the metrics either."""
    ledger.ingest(rep(seq=1))  # acme-ae-1: observed only
    ledger.ingest(rep(node="n2", site="acme-us-1", seq=1, n=2))  # acme-us-1: 1000 declared
    ledger.refresh_snapshot(force=True)
    found = ledger.reconciliation()
    assert found["findings"]["declared_vs_observed"] == [
        {"site": "acme-us-1", "declared": 1000, "observed": 2}
    ]
    assert dict(ledger.snapshot().findings) == found["counts"]
    assert found == ledger_findings(ledger)


def test_a_silent_node_turns_stale_in_the_metrics_snapshot(ledger: Ledger, clock: Clock) -> None:
    ledger.ingest(rep(seq=1))
    assert ledger.refresh_snapshot()
    assert ledger.snapshot().nodes == {("acme-ae-1", "fresh"): 1}
    clock.moment = at("2025-09-01T10:01:00")  # nothing moved, within one report interval
    assert not ledger.refresh_snapshot()
    clock.moment = at("2025-09-01T10:16:00")  # silent for more than 3 x 300 s, no write since
    assert ledger.refresh_snapshot()
    assert ledger.snapshot().nodes == {("acme-ae-1", "stale"): 1}
    assert ledger.snapshot().findings["stale_node"] == 1


def test_the_metrics_snapshot_follows_the_date(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    from tests.ledger.support import REGISTRY

    path = tmp_path / "tomorrow.yaml"
    path.write_text(
        REGISTRY
        + "  - {site: acme-ae-1, model: h100-sxm5-80gb, count: 5, installed: 2025-09-02}\n",
        encoding="utf-8",
    )
    ledger.load_registry_file(path)
    clock.moment = at("2025-09-01T23:59:50")
    ledger.refresh_snapshot()

    def site_tpp() -> float:
        return next(s.tpp for s in ledger.snapshot().sites if s.site == "acme-ae-1")

    assert site_tpp() == 0
    clock.moment = at("2025-09-02T00:00:10")  # 20 s later, a new day: the line counts now
    assert ledger.refresh_snapshot()
    assert site_tpp() == 5 * H100_TPP


def test_a_failing_refresh_is_logged_once_per_distinct_error(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, registry_file: Path
) -> None:
    from gpucap.ledger.app import SnapshotRefresher
    from gpucap.ledger.settings import Settings

    url = f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}"  # its folder does not exist
    settings = Settings(db_url=url, secret="s")
    led = Ledger(settings, Store(url), default_catalogue())
    refresher = SnapshotRefresher(led)
    with caplog.at_level("INFO", logger="gpucap.ledger"):
        for _ in range(3):
            refresher.step()
    failures = [r for r in caplog.records if "not refreshed" in r.getMessage()]
    assert len(failures) == 1
    assert "unable to open database file" in failures[0].getMessage()
    assert failures[0].exc_info is None  # an operational error: one line, no traceback
    (tmp_path / "missing").mkdir()
    led.store.migrate()
    caplog.clear()
    with caplog.at_level("INFO", logger="gpucap.ledger"):
        refresher.step()  # no registry yet: another distinct error
        refresher.step()
    assert [r.getMessage() for r in caplog.records] == [
        "metrics snapshot not refreshed (serving the last one): "
        "registry: no registry loaded (serve --registry FILE)"
    ]
    led.load_registry_file(registry_file)
    caplog.clear()
    with caplog.at_level("INFO", logger="gpucap.ledger"):
        refresher.step()
    assert [r.getMessage() for r in caplog.records] == ["metrics snapshot refreshed again"]
    led.store.close()


def test_no_ruleset_info_series_before_a_registry_is_loaded(tmp_path: Path) -> None:
    from gpucap.exporters.ledger import metrics_response
    from gpucap.ledger.settings import Settings

    settings = Settings(db_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    led = Ledger(settings, Store.open(settings), default_catalogue())
    try:
        body = metrics_response(led.snapshot)[0].decode()
        assert "\ngpucap_ruleset_info{" not in body
        assert 'status="unknown"' not in body
        led.load_registry_file(_registry(tmp_path))
        led.refresh_snapshot()
        body = metrics_response(led.snapshot)[0].decode()
        assert '\ngpucap_ruleset_info{id="us-bis-ai-diffusion-2025",' in body
    finally:
        led.store.close()


def _registry(tmp_path: Path) -> Path:
    from tests.ledger.support import REGISTRY

    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    return path


@pytest.mark.parametrize("as_of", ["20250901", "2025-02-30", "2025-9-1", "2025-09-01T00:00:00"])
def test_as_of_dates_are_parsed_by_the_one_date_parser(ledger: Ledger, as_of: str) -> None:
    from pydantic import ValidationError

    from gpucap.ledger.app import headroom_answer
    from gpucap.ledger.models import WhatIf
    from gpucap.ledger.tokens import Principal

    admin = Principal("a", "operator", operator="root")
    with pytest.raises(RejectedError) as info:
        headroom_answer(ledger, admin, None, as_of)
    assert info.value.path == "as_of"
    with pytest.raises(ValidationError) as bad:
        WhatIf.model_validate_json(json.dumps({"as_of": as_of}))
    assert bad.value.errors()[0]["loc"] == ("as_of",)
    assert WhatIf.model_validate_json('{"as_of": "2025-09-01"}').as_of == date(2025, 9, 1)


def test_documents_after_changes_equal_fresh_ones(ledger: Ledger, clock: Clock) -> None:
    """The cached document (engine memo, reused site entries) equals one built from scratch
    after every change, for every scope asked."""
    from gpucap.core.engine import evaluate
    from gpucap.ledger.views import filtered, parse_request_scope

    day = date(2025, 12, 1)
    steps = [
        ("n1", "acme-ae-1", [device(i) for i in range(8)]),
        ("n2", "nimbus-ae-1", [device(i, "n2") for i in range(4)]),
        ("n1", "acme-ae-1", [device(i) for i in range(1, 9)]),  # one swapped
        ("n3", "acme-us-1", [device(i, "n3") for i in range(16)]),
        ("n2", "nimbus-ae-1", []),  # all gone
        ("n1", "acme-ae-1", [device(i) for i in range(1, 9)]),  # unchanged
    ]
    seqs: dict[str, int] = {}
    for node, site, devices in steps:
        seqs[node] = seqs.get(node, 0) + 1
        clock.moment = clock.moment.replace(day=clock.moment.day + 1)
        outcome = ledger.ingest(rep(node=node, site=site, seq=seqs[node], devices=devices))
        assert outcome.status == "accepted"
        view = ledger.view(day)
        fresh = evaluation_to_dict(evaluate(view.fleet, ledger.pack(view.fleet.ruleset), day))
        # Scoped answers first (built from parts, no whole document yet), then the whole one.
        scopes = ("country:AE", "country:US", "entity:acme", "entity:nimbus", "site:acme-ae-1")
        asked = [None, *(parse_request_scope(s, view.index) for s in scopes)]
        for requested in asked:
            for entity in (None, "acme", "nimbus"):
                got = view.document.answer(entity, requested)
                assert got == filtered(fresh, view.index, entity, requested), (entity, requested)
                assert list(got) == list(fresh)  # the same keys in the same order
        assert view.doc == fresh
        for requested in asked:
            for entity in (None, "acme", "nimbus"):
                got = filtered(view.doc, view.index, entity, requested)
                assert got == filtered(fresh, view.index, entity, requested)
                assert view.document.answer(entity, requested) == got


def test_scoped_answers_equal_filtered_documents_with_territories(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Scoped answers built from parts equal the whole document filtered, where a territory (HK)
    answers for the country it is treated as (CN)."""
    from gpucap.core.engine import evaluate
    from gpucap.ledger.views import filtered, parse_request_scope
    from tests.ledger.support import HK_REGISTRY

    path = tmp_path / "hk.yaml"
    path.write_text(HK_REGISTRY, encoding="utf-8")
    ledger.load_registry_file(path)
    ledger.ingest(rep(node="hk1", site="harbour-hk-1", n=4))
    ledger.ingest(rep(node="sg1", site="harbour-sg-1", n=2))
    day = date(2025, 9, 1)
    view = ledger.view(day)
    fresh = evaluation_to_dict(evaluate(view.fleet, ledger.pack(view.fleet.ruleset), day))
    scopes = ("country:HK", "country:CN", "country:SG", "site:harbour-hk-1", "entity:harbour")
    asked = [None, *(parse_request_scope(s, view.index) for s in scopes)]
    for requested in asked:
        for entity in (None, "acme", "harbour"):
            got = view.document.answer(entity, requested)
            assert got == filtered(fresh, view.index, entity, requested), (entity, requested)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_line_reads_equal_full_reads(
    ledger: Ledger, clock: Clock, tmp_path: Path, seed: int
) -> None:
    """After random reports, decommissions, registry changes and rebuilds, a line set patched
    from rows newer than its version (in this process, and in a second one that reads less
    often) equals a full read, and the evaluation over it equals one from scratch."""
    import random

    from gpucap.core.engine import evaluate
    from gpucap.ledger.linecache import read_lines
    from tests.ledger.support import REGISTRY

    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    other = Ledger(ledger.settings, ledger.store, ledger.catalogue)
    registries = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    registries[0].write_text(REGISTRY, encoding="utf-8")
    registries[1].write_text(REGISTRY.replace("count: 1000", "count: 999"), encoding="utf-8")
    nodes = {"n1": "acme-ae-1", "n2": "nimbus-ae-1", "n3": "acme-us-1", "n4": "acme-ae-1"}
    seqs: dict[str, int] = {}
    closed: set[str] = set()

    def as_set(lines: object) -> list[tuple[object, ...]]:
        assert isinstance(lines, dict)
        return sorted((k, repr(v)) for k, v in lines.items())

    for step in range(40):
        clock.moment = clock.moment.replace(hour=step % 24, minute=step % 60)
        if step % 24 == 23:
            clock.moment = clock.moment.replace(day=clock.moment.day + 1)
        what = rng.random()
        open_nodes = [n for n in nodes if n not in closed]
        if what < 0.65 and open_nodes:
            node = rng.choice(open_nodes)
            seqs[node] = seqs.get(node, 0) + 1
            picked = rng.sample(range(12), rng.randint(0, 8))
            devices = [device(i, node) for i in sorted(picked)]
            ledger.ingest(rep(node=node, site=nodes[node], seq=seqs[node], devices=devices))
        elif what < 0.75 and open_nodes and seqs:
            node = rng.choice([n for n in open_nodes if n in seqs] or open_nodes)
            if node in seqs:
                ingest.decommission(ledger.store, node, clock(), "operator:test")
                closed.add(node)
        elif what < 0.85:
            ledger.load_registry_file(registries[step % 2])
        else:
            replay.rebuild(ledger.store, ledger.catalogue)
        readers = [ledger] if rng.random() < 0.5 else [ledger, other]
        for reader in readers:
            day = clock().date()
            view = reader.view(day)
            with ledger.store.snapshot() as conn:
                full, _ = read_lines(conn, None)
            lineset = reader._lineset
            assert lineset is not None
            assert lineset.version == full.version
            assert as_set(lineset.lines) == as_set(full.lines)
            fresh = evaluation_to_dict(evaluate(view.fleet, ledger.pack(view.fleet.ruleset), day))
            assert view.doc == fresh
            with ledger.store.read() as conn:
                declared = ledger.registry(conn).lines
            assert sorted(map(repr, view.fleet.lines)) == sorted(
                map(repr, declared + tuple(full.lines.values()))
            )


def test_resolved_devices_are_reused_only_while_they_are_equal(ledger: Ledger) -> None:
    """The per-node memo of resolved facts gives exactly what resolving again gives."""
    from gpucap.ledger.settings import utc_now

    first = rep(node="n1", site="acme-ae-1", n=4)
    ledger.ingest(first)
    same = rep(node="n1", site="acme-ae-1", seq=2, n=4)
    assert ledger.submit(same).result().status == "accepted"
    assert ledger._prepared["n1"].digest == ingest.prepare(same, ledger.catalogue).digest
    swapped = [device(i, "n1") for i in range(3)] + [device(9, "n1", pci_device_id="0x2335")]
    changed = rep(node="n1", site="acme-ae-1", seq=3, devices=swapped)
    ledger.ingest(changed)
    memo = ledger._prepared["n1"]
    assert memo.report is changed
    assert memo.facts == ingest.prepare(changed, ledger.catalogue).facts
    with ledger.store.read() as conn:
        assert ingest.db.devices(conn, "n1")["GPU-n1-0009"].facts.pci_device_id == "0x2335"
    # A token whose signature was checked once is still refused once revoked.
    token_id, token = tokens.issue(
        ledger.store, "node", utc_now(), None, node_id="n1", site_id="acme-ae-1"
    )
    assert ledger.authenticate(f"Bearer {token}", "node").token_id == token_id
    tokens.revoke(ledger.store, token_id, utc_now())
    with pytest.raises(AuthError, match="revoked"):
        ledger.authenticate(f"Bearer {token}", "node")
    with pytest.raises(AuthError, match="signature"):
        ledger.authenticate(f"Bearer {token[:-2]}AA", "node")
