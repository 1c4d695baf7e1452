"""Answers as the log held them (`known_at`), their provenance, and explain's breakdown."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from gpucap.core.errors import InputError
from gpucap.ledger import log, merkle, note
from gpucap.ledger.app import _whatif, headroom_answer
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.known import parse_known_at
from gpucap.ledger.models import Report, WhatIf
from gpucap.ledger.service import Ledger
from gpucap.ledger.tokens import Principal
from tests.ledger.support import REGISTRY, Clock, device, report

ADMIN = Principal("a", "operator", operator="root")
NIMBUS = Principal("b", "operator", operator="ops", entity="nimbus")


def rep(**kw: Any) -> Report:
    return Report.model_validate(report(**kw))


def signed(led: Ledger) -> int:
    led.integrator.run_once()
    with led.store.read() as conn:
        return log.tree(conn).size


def checks(doc: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(c["rule"], c["scope"]): c for c in doc["checks"]}


def _history(led: Ledger, clock: Clock, registry_file: Path) -> dict[str, Any]:
    """Reports, a registry change and a decommission, with the signed size after each step."""
    sizes: dict[str, Any] = {}
    led.ingest(rep(node="n1", site="acme-ae-1", n=8))
    led.ingest(rep(node="n2", site="nimbus-ae-1", n=4))
    sizes["reported"] = signed(led)
    sizes["reported_at"] = clock.moment
    clock.moment += timedelta(days=2)
    led.ingest(rep(node="n1", site="acme-ae-1", seq=2, n=12))
    sizes["grown"] = signed(led)
    clock.moment += timedelta(days=1)
    registry_file.write_text(REGISTRY.replace("count: 1000", "count: 3000"), encoding="utf-8")
    led.load_registry_file(registry_file)
    from gpucap.ledger import ingest

    ingest.decommission(led.store, "n2", clock(), "operator:cli")
    sizes["changed"] = signed(led)
    return sizes


def test_an_answer_at_a_known_at_never_changes(
    ledger: Ledger, clock: Clock, registry_file: Path
) -> None:
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=8))
    size = signed(ledger)
    known = f"log_size={size}"
    then = headroom_answer(ledger, ADMIN, None, "2025-09-30", known)
    instant = (clock.moment + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    clock.moment += timedelta(seconds=2)
    by_time = headroom_answer(ledger, ADMIN, None, "2025-09-30", instant)
    assert by_time["provenance"]["log_size"] == size
    assert by_time["checks"] == then["checks"]
    # Everything that can change the record changes, later.
    clock.moment += timedelta(days=1)
    ledger.ingest(rep(node="n1", site="acme-ae-1", seq=2, n=16))
    ledger.ingest(rep(node="n3", site="nimbus-ae-1", n=8))
    registry_file.write_text(REGISTRY.replace("count: 1000", "count: 2000"), encoding="utf-8")
    ledger.load_registry_file(registry_file)
    from gpucap.ledger import ingest

    ingest.decommission(ledger.store, "n1", clock(), "operator:cli")
    signed(ledger)
    now = headroom_answer(ledger, ADMIN, None, "2025-09-30")
    assert now["checks"] != then["checks"]  # the live answer moved
    again = headroom_answer(ledger, ADMIN, None, "2025-09-30", known)
    assert again["checks"] == then["checks"]
    assert again["sites"] == then["sites"]
    assert again["provenance"]["root_hash"] == then["provenance"]["root_hash"]
    assert again["provenance"]["registry_digest"] == then["provenance"]["registry_digest"]
    assert headroom_answer(ledger, ADMIN, None, "2025-09-30", instant)["checks"] == then["checks"]
    # A fresh process (no cached record) folds the same prefix to the same answer.
    fresh = Ledger(ledger.settings, ledger.store, ledger.catalogue)
    assert headroom_answer(fresh, ADMIN, None, "2025-09-30", known)["checks"] == then["checks"]


def test_the_live_answer_equals_the_answer_at_the_whole_signed_log(
    ledger: Ledger, clock: Clock, registry_file: Path
) -> None:
    sizes = _history(ledger, clock, registry_file)
    for as_of in ("2025-09-01", "2025-09-03", "2025-12-31"):
        live = headroom_answer(ledger, ADMIN, None, as_of)
        past = headroom_answer(ledger, ADMIN, None, as_of, f"log_size={sizes['changed']}")
        assert live["checks"] == past["checks"]
        assert live["sites"] == past["sites"]
        assert live["provenance"]["log_size"] == past["provenance"]["log_size"]
    early = headroom_answer(ledger, ADMIN, None, "2025-12-31", f"log_size={sizes['reported']}")
    acme = next(s for s in early["sites"] if s["id"] == "acme-ae-1")
    assert acme["installed_tpp"] == 8 * 15832
    assert next(s for s in early["sites"] if s["id"] == "nimbus-ae-1")["installed_tpp"] == 4 * 15832


def test_provenance_ties_the_answer_to_a_signed_checkpoint(ledger: Ledger) -> None:
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=8))
    first = signed(ledger)
    ledger.ingest(rep(node="n1", site="acme-ae-1", seq=2, n=9))
    signed(ledger)
    prov = headroom_answer(ledger, ADMIN, None, None, f"log_size={first}")["provenance"]
    assert prov["log_size"] == first
    assert prov["known_at"] == f"log_size={first}"
    key = note.parse_verifier_key(ledger.signer.verifier_key, "key")
    checkpoint = note.open_checkpoint(prov["checkpoint"], key)
    assert checkpoint.size == prov["checkpoint_size"] > first
    proof = [base64.b64decode(h) for h in prov["consistency_proof"]]
    merkle.verify_consistency(
        first, checkpoint.size, proof, base64.b64decode(prov["root_hash"]), checkpoint.root
    )
    pack = prov["rulesets"][0]
    assert pack["id"] == "us-bis-ai-diffusion-2025"
    assert pack["in_force"] is False
    from gpucap.core.data import shipped

    text = shipped("rulesets", "us-bis-ai-diffusion-2025.yaml").read_bytes()
    assert pack["digest"] == hashlib.sha256(text).hexdigest()
    assert (
        prov["catalogue_digest"]
        == hashlib.sha256(shipped("catalogue.yaml").read_bytes()).hexdigest()
    )


def test_live_provenance_counts_what_is_not_yet_signed(ledger: Ledger) -> None:
    signed(ledger)
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=8))  # appended; no integration yet
    prov = headroom_answer(ledger, ADMIN, None, None)["provenance"]
    assert prov["unsigned_entries"] == 1
    size = signed(ledger)
    prov = headroom_answer(ledger, ADMIN, None, "2025-09-02")["provenance"]
    assert "unsigned_entries" not in prov
    assert prov["log_size"] == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2025-09-01", "no UTC offset"),
        ("yesterday", "expected an ISO 8601 instant"),
        ("log_size=-1", "expected an ISO 8601 instant"),
        ("log_size=99999", "beyond the signed log"),
        ("2099-01-01T00:00:00Z", "in the future"),
    ],
)
def test_bad_known_at_values_are_refused_naming_the_field(
    ledger: Ledger, value: str, reason: str
) -> None:
    with pytest.raises(RejectedError) as info:
        headroom_answer(ledger, ADMIN, None, None, value)
    assert info.value.path == "known_at"
    assert reason in info.value.reason


def test_known_at_instants_in_every_offset_name_the_same_prefix(
    ledger: Ledger, clock: Clock
) -> None:
    assert parse_known_at("2025-09-01T12:00:00+02:00") == parse_known_at("2025-09-01T10:00:00Z")
    nine = parse_known_at("2025-09-01T10:00:00.123456789Z")
    assert nine is not None
    assert nine.label() == "2025-09-01T10:00:00.123456Z"
    signed(ledger)  # the registry entry, recorded at the clock's 10:00:00
    clock.moment += timedelta(hours=1)
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=8))
    size = signed(ledger)
    clock.moment += timedelta(hours=1)
    sizes = {
        value: headroom_answer(ledger, ADMIN, None, None, value)["provenance"]["log_size"]
        for value in ("2025-09-01T10:30:00Z", "2025-09-01T12:30:00+02:00", "2025-09-01T11:00:00Z")
    }
    assert sizes == {
        "2025-09-01T10:30:00Z": size - 1,
        "2025-09-01T12:30:00+02:00": size - 1,
        "2025-09-01T11:00:00Z": size,
    }


def test_before_any_registry_there_is_nothing_to_answer(ledger: Ledger) -> None:
    signed(ledger)
    with pytest.raises(RejectedError) as info:
        headroom_answer(ledger, ADMIN, None, None, "log_size=0")
    assert "no registry" in info.value.reason


def test_whatif_names_its_rule_pack_and_provenance(ledger: Ledger) -> None:
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=8))
    size = signed(ledger)
    add = [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 10}]
    req = WhatIf.model_validate({"add": add, "known_at": f"log_size={size}"})
    answer = _whatif(ledger, ADMIN, req)
    assert answer["ruleset"]["id"] == "us-bis-ai-diffusion-2025"
    assert answer["ruleset"]["status"] != "in_force"
    assert answer["ruleset"]["warnings"]
    assert answer["provenance"]["log_size"] == size


# -- explain ----------------------------------------------------------------------------------
def _sum(items: list[dict[str, Any]], figure: str) -> Fraction:
    return sum((Fraction(c["tpp"]) for c in items if c["figure"] == figure), Fraction(0))


def test_explain_contributions_add_up_to_every_check(
    ledger: Ledger, clock: Clock, registry_file: Path
) -> None:
    _history(ledger, clock, registry_file)
    ledger.ingest(rep(node="n4", site="acme-us-1", n=3))
    signed(ledger)
    for as_of in ("2025-09-01", "2025-12-31"):
        doc = headroom_answer(ledger, ADMIN, None, as_of)
        assert doc["checks"]
        for check in doc["checks"]:
            out = ledger.explain(ADMIN, check["rule"], check["scope"], as_of=doc_day(as_of))
            assert out["used_tpp"] == check["used_tpp"]
            assert _sum(out["contributions"], "used_tpp") == Fraction(check["used_tpp"])
            if "total_tpp" in check and check["total_tpp"] is not None:
                assert _sum(out["contributions"], "total_tpp") == Fraction(check["total_tpp"])
            assert out["provenance"]["log_size"] == doc["provenance"]["log_size"]


def doc_day(text: str) -> Any:
    from datetime import date

    return date.fromisoformat(text)


def test_explain_names_devices_serials_and_the_entries_that_brought_them(
    ledger: Ledger,
) -> None:
    ledger.ingest(rep(node="n1", site="nimbus-ae-1", n=2))
    first = signed(ledger)
    devices = [device(i, "n1") for i in range(3)]
    ledger.ingest(rep(node="n1", site="nimbus-ae-1", seq=2, devices=devices))
    signed(ledger)
    out = ledger.explain(ADMIN, "nveu_country_cap", "entity:nimbus/country:AE")
    observed = [c for c in out["contributions"] if c["source"] == "observed"]
    assert [c["log_index"] for c in observed] == [first - 1, first]
    assert [c["count"] for c in observed] == [2, 1]
    assert observed[1]["devices"] == [
        {"uuid": "GPU-n1-0002", "serial": "Sn10002", "model": "h100-sxm5-80gb", "tpp": 15832}
    ]
    with ledger.store.read() as conn:
        ((_, leaf),) = log.entries(conn, first, first + 1)
    assert '"GPU-n1-0002"' in leaf  # the named entry is the report that brought the device


def test_explain_refuses_what_the_token_may_not_see_and_what_does_not_exist(
    ledger: Ledger,
) -> None:
    ledger.ingest(rep(node="n1", site="acme-ae-1", n=2))
    signed(ledger)
    with pytest.raises(AuthError):
        ledger.explain(NIMBUS, "uveu_max_share_per_country", "entity:acme/country:AE")
    with pytest.raises(InputError) as info:
        ledger.explain(ADMIN, "no_such_rule", "country:AE")
    assert info.value.path == "rule"
    with pytest.raises(InputError) as info:
        ledger.explain(ADMIN, "nveu_country_cap", "entity:acme/country:AE")
    assert info.value.path == "scope"


# -- inventory --------------------------------------------------------------------------------
def test_inventory_lists_declared_lines_beside_observed_ones(ledger: Ledger) -> None:
    ledger.ingest(rep(node="n1", site="acme-us-1", n=2))
    size = signed(ledger)
    one = ledger.inventory(ADMIN, "acme-us-1")
    assert [d["count"] for d in one["declared"]] == [1000]
    assert one["devices_total"] == 2
    assert one["provenance"]["log_size"] == size
    sites = {s["site"]: s for s in ledger.inventory(ADMIN, None)["sites"]}
    assert sites["acme-us-1"]["declared_devices"] == 1000
    assert sites["acme-us-1"]["devices"] == 2
    past = ledger.inventory(ADMIN, "acme-us-1", known=parse_known_at(f"log_size={size}"))
    assert past["devices"] == one["devices"]
    assert past["lines"] == one["lines"]
    assert past["declared"] == one["declared"]
    assert ledger.inventory(ADMIN, None, known=parse_known_at(f"log_size={size}"))["sites"] == list(
        sites.values()
    )


def test_the_period_report_as_known_at_a_past_size(ledger: Ledger, clock: Clock) -> None:
    from gpucap.ledger.periodreport import parse_period, report_answer

    ledger.ingest(rep(node="n1", site="nimbus-ae-1", n=8))
    size = signed(ledger)
    period = parse_period("2025-09-01", "2025-09-10", "week")
    then = report_answer(ledger, ADMIN, "entity:nimbus", period, parse_known_at(f"log_size={size}"))
    assert then["provenance"]["log_size"] == size
    clock.moment += timedelta(days=1)
    ledger.ingest(rep(node="n1", site="nimbus-ae-1", seq=2, n=16))
    signed(ledger)
    now = report_answer(ledger, ADMIN, "entity:nimbus", period)
    again = report_answer(
        ledger, ADMIN, "entity:nimbus", period, parse_known_at(f"log_size={size}")
    )
    assert again["steps"] == then["steps"]
    assert now["steps"] != then["steps"]


@pytest.mark.parametrize(
    ("exists", "missing"),
    [
        ("site:acme-ae-1", "site:acme-zz-9"),
        ("entity:acme", "entity:ghost"),
        ("country:US", "country:ZZ"),
    ],
)
def test_a_scoped_operator_cannot_tell_what_exists_beyond_its_entity(
    ledger: Ledger, exists: str, missing: str
) -> None:
    """Another entity's site and a site that does not exist are refused alike (403)."""
    refusals = []
    for scope in (exists, missing):
        with pytest.raises(AuthError) as info:
            headroom_answer(ledger, NIMBUS, scope, None)
        refusals.append((info.value.status_code, info.value.reason))
    assert refusals == [(403, "scope_forbidden")] * 2
    with pytest.raises(RejectedError):  # an unscoped operator is told the scope names nothing
        headroom_answer(ledger, ADMIN, missing, None)
