"""The ledger evaluates every rule pack its registry names: headroom (with `ruleset` to name
others instead), what-if, explain, the period report, evidence bundles and metrics, on SQLite and
PostgreSQL. The registry names the in-force EAR pack first and the Diffusion pack second: a
site in AE without a licence breaches the first's destination_licence, and most of acme's
TPP outside the US breaches the second's uveu_us_share."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpucap.core.catalogue import default_catalogue
from gpucap.core.data import read_yaml, shipped
from gpucap.core.engine import evaluate
from gpucap.core.errors import InputError
from gpucap.core.report import document
from gpucap.core.ruleset import available_rulesets, country_codes, load_ruleset, parse_ruleset
from gpucap.exporters.ledger import metrics_response
from gpucap.ledger import bundle, log, note, periodreport, tokens
from gpucap.ledger.app import _whatif, headroom_answer, headroom_body
from gpucap.ledger.errors import VerificationError
from gpucap.ledger.explainer import pack_of
from gpucap.ledger.models import Report, WhatIf
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from tests.ledger.support import Clock, gpucap, ledger_server, report
from tests.ledger.test_evidence import rewrite

EAR, DIFFUSION = "us-ear-2026", "us-bis-ai-diffusion-2025"
ADMIN = Principal("a", "operator", operator="root")
AUDITOR = Principal("x", "auditor", auditor="ext")
ACME = Principal("b", "operator", operator="ops", entity="acme")
AS_OF = date(2025, 9, 30)
REGISTRY = f"""\
rulesets: [{EAR}, {DIFFUSION}]
countries: {{AE: {{gov_agreement: true}}}}
entities:
  - {{id: acme, headquarters: US, status: uveu}}
  - {{id: nimbus, headquarters: AE, status: nveu, nveu_countries: [AE]}}
sites:
  - {{id: acme-ae-1, entity: acme, country: AE}}
  - {{id: acme-us-1, entity: acme, country: US}}
  - {{id: nimbus-ae-1, entity: nimbus, country: AE}}
  - {{id: acme-gb-1, entity: acme, country: GB}}
inventory:
  - {{site: acme-us-1, model: h100-sxm5-80gb, count: 1000, installed: 2025-06-01}}
"""
# 2,000 H100 in GB: acme holds a third of its TPP in the US, under the Diffusion pack's minimum.
OUTSIDE_US = "  - {site: acme-gb-1, model: h100-sxm5-80gb, count: 2000, installed: 2025-06-01}\n"


def _registry(tmp_path: Path, text: str = REGISTRY) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def led(db_url: str, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    settings = Settings(db_url=db_url, clock=clock, revocation_ttl_s=0, report_interval_s=300)
    store = Store.open(settings)
    ledger = Ledger(settings, store, default_catalogue())
    assert ledger.load_registry_file(_registry(tmp_path))
    yield ledger
    ledger.stop()
    store.close()


def _ingest(led: Ledger, **kw: Any) -> None:
    led.ingest(Report.model_validate(report(**kw)))


def _fresh(led: Ledger, packs: tuple[str, ...] = (EAR, DIFFUSION)) -> dict[str, Any]:
    """The document `gpucap evaluate` makes of the ledger's fleet now, from scratch."""
    fleet = led.view(AS_OF).fleet
    return document([evaluate(fleet, load_ruleset(p), AS_OF) for p in packs])


def _bare(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "provenance"}


def _packs_of(answer: dict[str, Any]) -> set[str]:
    return {c["ruleset"] for c in answer["checks"]}


def _breached(answer: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (c["ruleset"], c["rule"], c["scope"]) for c in answer["checks"] if c["status"] == "breach"
    }


def test_headroom_holds_every_pack_in_order_as_evaluate_does(led: Ledger) -> None:
    answer = headroom_answer(led, ADMIN, None, AS_OF.isoformat())
    assert [rs["id"] for rs in answer["rulesets"]] == [EAR, DIFFUSION]
    assert answer["ruleset"] == answer["rulesets"][0]
    assert _packs_of(answer) == {EAR, DIFFUSION}
    assert _bare(answer) == _fresh(led)
    assert answer["verdict"] == "ok"
    # The packs see sites differently (tiers): one entry per pack and site, naming its pack.
    assert {s["ruleset"] for s in answer["sites"]} == {EAR, DIFFUSION}
    assert [r["id"] for r in answer["provenance"]["rulesets"]] == [EAR, DIFFUSION]
    body = json.loads(headroom_body(led, ADMIN, None, AS_OF.isoformat()))
    assert _bare(body) == _bare(answer)
    # An operator limited to acme sees both packs' checks of acme (the EAR pack's are per site).
    scoped = headroom_answer(led, ACME, None, AS_OF.isoformat())
    assert _packs_of(scoped) == {EAR, DIFFUSION}
    assert {s["entity"] for s in scoped["sites"]} == {"acme"}
    assert "site:nimbus-ae-1" not in {c["scope"] for c in scoped["checks"]}
    assert (
        json.loads(headroom_body(led, ACME, None, AS_OF.isoformat()))["checks"]
        == (scoped["checks"])
    )


def test_the_verdict_is_breach_when_either_pack_breaches(led: Ledger, tmp_path: Path) -> None:
    _ingest(led, n=8)  # 8 H100 at acme-ae-1, with no licence
    answer = headroom_answer(led, ADMIN, None, AS_OF.isoformat())
    assert answer["verdict"] == "breach"
    assert _breached(answer) == {(EAR, "destination_licence", "site:acme-ae-1")}
    assert answer["checks"][0]["status"] == "breach"  # breaches first, whichever pack
    only = headroom_answer(led, ADMIN, None, AS_OF.isoformat(), None, [DIFFUSION])
    assert (only["verdict"], _packs_of(only)) == ("ok", {DIFFUSION})
    assert [rs["id"] for rs in only["rulesets"]] == [DIFFUSION]
    assert [r["id"] for r in only["provenance"]["rulesets"]] == [DIFFUSION]
    # The second pack alone decides it too.
    led.load_registry_file(_registry(tmp_path, REGISTRY + OUTSIDE_US))
    led.ingest(Report.model_validate(report(n=0, seq=2)))  # the AE devices are gone
    answer = headroom_answer(led, ADMIN, None, AS_OF.isoformat())
    assert answer["verdict"] == "breach"
    assert _breached(answer) == {(DIFFUSION, "uveu_us_share", "entity:acme")}
    assert headroom_answer(led, ADMIN, None, None, None, [EAR])["verdict"] == "ok"
    assert _bare(answer) == _fresh(led)


def test_ruleset_names_the_packs_in_the_order_given_and_refuses_others(led: Ledger) -> None:
    swapped = headroom_answer(led, ADMIN, None, AS_OF.isoformat(), None, [DIFFUSION, EAR])
    assert [rs["id"] for rs in swapped["rulesets"]] == [DIFFUSION, EAR]
    assert _bare(swapped) == _fresh(led, (DIFFUSION, EAR))
    for bad, reason in ((["no-such-pack"], "unknown rule pack"), ([EAR, EAR], "given twice")):
        with pytest.raises(InputError) as caught:
            headroom_answer(led, ADMIN, None, None, None, bad)
        assert caught.value.path == "ruleset"
        assert reason in caught.value.reason


def test_a_retally_after_a_report_equals_a_fresh_evaluation_for_both_packs(
    led: Ledger, clock: Clock
) -> None:
    before = led.view(AS_OF)
    assert before.doc == _fresh(led)  # answered once: its entries exist to be taken over
    assert json.loads(before.document.body(None, None)) == before.doc
    narrowed = led.view(AS_OF, (DIFFUSION,))
    _ingest(led, n=8)  # acme-ae-1 only: nimbus's checks in both packs stay as they were
    after = led.view(AS_OF)
    assert after is not before
    assert after.doc == _fresh(led)
    # Incremental: each pack's new document took over the JSON of the checks it kept.
    for k in range(2):
        old = {(c["rule"], c["scope"]): c for c in before.document.documents[k].full()["checks"]}
        kept = [
            c
            for c in after.document.documents[k].full()["checks"]
            if c is old.get((c["rule"], c["scope"]))
        ]
        assert kept, after.packs[k].id
    # Another selection of packs is made from the same per-pack tallies, and equals them too.
    again = led.view(AS_OF, (DIFFUSION,))
    assert again is not narrowed
    assert again.evaluations[0] is after.evaluations[1]
    assert again.doc == _fresh(led, (DIFFUSION,))
    # The bodies after a change (joined from the entries the earlier answers handed on).
    assert json.loads(after.document.body(None, None)) == after.doc
    assert json.loads(after.document.body("acme", None)) == after.document.answer("acme", None)
    _ingest(led, node="n2", site="nimbus-ae-1", n=4)
    latest = led.view(AS_OF)
    assert latest.doc == _fresh(led)
    assert json.loads(latest.document.body(None, None)) == latest.doc
    assert json.loads(latest.document.body(None, ("entity", "nimbus"))) == (
        latest.document.answer(None, ("entity", "nimbus"))
    )
    clock.moment += timedelta(days=1)
    _ingest(led, seq=2, n=2)
    assert led.view(AS_OF).doc == _fresh(led)


def test_explain_finds_the_rule_in_its_pack(led: Ledger) -> None:
    _ingest(led, n=8)
    led.integrator.run_once()
    headroom = headroom_answer(led, ADMIN, None, AS_OF.isoformat())
    checks = {(c["rule"], c["scope"]): c for c in headroom["checks"]}
    for rule, scope, pack in (
        ("destination_licence", "site:acme-ae-1", EAR),
        ("uveu_us_share", "entity:acme", DIFFUSION),
    ):
        got = led.explain(ADMIN, rule, scope, AS_OF)
        assert got["ruleset"] == pack
        assert got["used_tpp"] == checks[(rule, scope)]["used_tpp"]
        assert (
            sum(c["tpp"] for c in got["contributions"] if c["figure"] == "used_tpp")
            == (got["used_tpp"])
        )
        assert led.explain(ADMIN, rule, scope, AS_OF, ruleset=pack)["used_tpp"] == got["used_tpp"]
    with pytest.raises(InputError) as caught:
        led.explain(ADMIN, "uveu_us_share", "entity:acme", AS_OF, ruleset=EAR)
    assert caught.value.path == "rule"
    with pytest.raises(InputError) as caught:
        led.explain(ADMIN, "uveu_us_share", "entity:acme", AS_OF, ruleset="no-such-pack")
    assert caught.value.path == "ruleset"
    with pytest.raises(InputError) as caught:
        led.explain(ADMIN, "no_such_rule", "entity:acme", AS_OF)
    assert caught.value.path == "rule"
    assert "destination_licence" in caught.value.reason  # it lists each pack's rules


def test_two_packs_sharing_a_rule_id_need_ruleset() -> None:
    raw = copy.deepcopy(read_yaml(shipped("rulesets", f"{DIFFUSION}.yaml")))
    raw["id"] = "diffusion-copy"
    packs = [load_ruleset(DIFFUSION), parse_ruleset(raw, country_codes(), "copy.yaml")]
    with pytest.raises(InputError) as caught:
        pack_of(packs, "country_allocation")
    assert caught.value.path == "ruleset"
    assert f"{DIFFUSION} and diffusion-copy" in caught.value.reason
    assert pack_of(packs, "country_allocation", "diffusion-copy") == 1
    assert pack_of(packs, "country_allocation", DIFFUSION) == 0


def test_no_two_shipped_packs_share_a_rule_id() -> None:
    """The gpucap_cap_* series are labelled (rule, scope) only: a pack sharing a rule id with
    another would need a `ruleset` label on them (exporters/ledger.py)."""
    seen: dict[str, str] = {}
    for pack_id in available_rulesets():
        for rule in load_ruleset(pack_id).rules:
            assert rule.id not in seen, (rule.id, seen.get(rule.id), pack_id)
            seen[rule.id] = pack_id


def test_whatif_binds_across_packs(led: Ledger) -> None:
    req = WhatIf.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "add": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 8}],
        }
    )
    answer = _whatif(led, ADMIN, req)
    assert [rs["id"] for rs in answer["rulesets"]] == [EAR, DIFFUSION]
    assert answer["allowed"] is False
    assert answer["binding"] == {
        "ruleset": EAR,
        "rule": "destination_licence",
        "scope": "site:acme-ae-1",
        "headroom_tpp": -8 * 15832,
    }
    assert {c["ruleset"] for c in answer["before"]} == {EAR, DIFFUSION}
    assert answer["after"][0]["status"] == "breach"
    us = WhatIf.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "add": [{"site": "acme-us-1", "model": "h100-sxm5-80gb", "count": 8}],
        }
    )
    allowed = _whatif(led, ADMIN, us)
    assert allowed["allowed"] is True
    assert allowed["binding"]["ruleset"] == DIFFUSION  # the EAR pack has no check it moves


def test_the_period_report_covers_both_packs(led: Ledger) -> None:
    _ingest(led, n=8)
    period = periodreport.parse_period("2025-09-29", "2025-09-30", "day")
    got = periodreport.report_answer(led, ADMIN, None, period)
    assert [rs["id"] for rs in got["rulesets"]] == [EAR, DIFFUSION]
    assert got["ruleset"]["id"] == EAR
    assert got["summary"]["breached_steps"] == 2
    assert {c["ruleset"] for c in got["steps"][0]["checks"]} == {EAR, DIFFUSION}
    assert any("not_enforced" in w or "not enforced" in w for w in got["warnings"]), got["warnings"]
    table = periodreport.report_table(got)
    assert f"Rule pack: {EAR} version" in table
    assert f"Rule pack: {DIFFUSION} version" in table
    assert f"{EAR}: destination_licence site:acme-ae-1" in table
    rows = periodreport.report_csv(got).splitlines()
    assert rows[0].startswith("as_of,ruleset,rule,")
    assert any(row.startswith(f"2025-09-30,{EAR},destination_licence,") for row in rows)


def test_metrics_carry_both_packs(led: Ledger) -> None:
    _ingest(led, n=8)
    assert led.refresh_snapshot(force=True)
    text = metrics_response(led.snapshot)[0].decode()
    assert 'gpucap_cap_breached{rule="destination_licence",scope="site:acme-ae-1"} 1.0' in text
    assert 'gpucap_cap_breached{rule="uveu_us_share",scope="entity:acme"} 0.0' in text
    assert f'gpucap_ruleset_info{{id="{EAR}",status="in_force"}} 1.0' in text
    assert f'gpucap_ruleset_info{{id="{DIFFUSION}",status="not_enforced"}} 1.0' in text
    cap_lines = [ln for ln in text.splitlines() if ln.startswith("gpucap_cap_breached{")]
    assert len(cap_lines) == len(led.view(led.today()).doc["checks"])


def test_an_evidence_bundle_of_two_packs_verifies_and_catches_an_altered_pack(
    led: Ledger, tmp_path: Path
) -> None:
    _ingest(led, n=8)
    led.integrator.run_once()
    path = tmp_path / "evidence.zip"
    manifest = bundle.export(led, path, AUDITOR, None, AS_OF)
    assert manifest["rulesets"] == [EAR, DIFFUSION]
    verifier = note.parse_verifier_key(led.signer.verifier_key, "key")
    outcome = bundle.verify(path, verifier)
    with led.store.read() as conn:
        assert log.tree(conn).size > 0
    assert outcome.checks == len(headroom_answer(led, ADMIN, None, AS_OF.isoformat())["checks"])
    ok = gpucap("audit", "verify", str(path), "--key", led.signer.verifier_key)
    assert ok.returncode == 0, ok.stderr
    assert "re-derived" in ok.stdout

    def alter(files: dict[str, bytes]) -> None:
        name = f"rulesets/{EAR}.yaml"
        files[name] = files[name].replace(b"D:5", b"D:4", 1)

    forged = rewrite(path, tmp_path / "forged.zip", alter)
    with pytest.raises(VerificationError) as caught:
        bundle.verify(forged, verifier)
    assert caught.value.path == f"rulesets/{EAR}.yaml"
    bad = gpucap("audit", "verify", str(forged), "--key", led.signer.verifier_key)
    assert bad.returncode == 1
    assert f"rulesets/{EAR}.yaml" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_http_and_cli_take_ruleset(db_url: str, tmp_path: Path) -> None:
    store = Store.open(Settings(db_url=db_url))
    try:
        _, admin = tokens.issue(store, "operator", utc_now(), None, operator="root")
    finally:
        store.close()
    declared = "  - {site: acme-ae-1, model: h100-sxm5-80gb, count: 8, installed: 2025-06-01}\n"
    with ledger_server(db_url, _registry(tmp_path, REGISTRY + declared)) as url:
        auth = {"Authorization": f"Bearer {admin}"}
        day = {"as_of": AS_OF.isoformat()}  # AE is in D:4 then (not on every date)
        both = httpx.get(f"{url}/v1/headroom", headers=auth, params=day, timeout=60).json()
        assert [rs["id"] for rs in both["rulesets"]] == [EAR, DIFFUSION]
        assert both["verdict"] == "breach"
        one = httpx.get(
            f"{url}/v1/headroom", headers=auth, params={**day, "ruleset": [DIFFUSION]}, timeout=60
        ).json()
        assert (one["verdict"], _packs_of(one)) == ("ok", {DIFFUSION})
        refused = httpx.get(
            f"{url}/v1/headroom", headers=auth, params={"ruleset": "nope"}, timeout=60
        )
        assert refused.status_code == 422
        (detail,) = refused.json()["detail"]
        assert detail["path"] == "ruleset"
        explained = httpx.get(
            f"{url}/v1/explain",
            headers=auth,
            params={
                **day,
                "rule": "destination_licence",
                "scope": "site:acme-ae-1",
                "ruleset": EAR,
            },
            timeout=60,
        )
        assert explained.status_code == 200, explained.text
        assert explained.json()["ruleset"] == EAR
        wrong = httpx.get(
            f"{url}/v1/explain",
            headers=auth,
            params={"rule": "destination_licence", "scope": "site:acme-ae-1", "ruleset": "nope"},
            timeout=60,
        )
        assert wrong.status_code == 422
        assert wrong.json()["detail"][0]["path"] == "ruleset"
        env = {"GPUCAP_TOKEN": admin, "GPUCAP_TOKEN_FILE": ""}
        cli = gpucap(
            "headroom", "--ledger", url, "--ruleset", DIFFUSION, "--format", "json", env=env
        )
        assert cli.returncode == 0, cli.stderr
        assert [rs["id"] for rs in json.loads(cli.stdout)["rulesets"]] == [DIFFUSION]
        table = gpucap("headroom", "--ledger", url, "--as-of", AS_OF.isoformat(), env=env)
        assert table.returncode == 1, table.stderr  # the EAR pack's breach
        assert f"{EAR} (in_force): verdict BREACH" in table.stdout
        assert f"{DIFFUSION} (not_enforced): verdict OK" in table.stdout
        bad = gpucap("headroom", "--ledger", url, "--ruleset", "nope", env=env)
        assert bad.returncode == 2
        (line,) = bad.stderr.strip().splitlines()
        assert "ruleset" in line
        why = ("explain", "--ledger", url, "--rule", "destination_licence", "--as-of")
        why += (AS_OF.isoformat(), "--scope", "site:acme-ae-1", "--format", "json")
        named = gpucap(*why, "--ruleset", EAR, env=env)
        assert named.returncode == 1, named.stderr  # the check it explains is breached
        assert json.loads(named.stdout)["ruleset"] == EAR
        unknown = gpucap(*why, "--ruleset", "nope", env=env)
        assert unknown.returncode == 2  # the ledger refuses the field (422): one line
        (line,) = unknown.stderr.strip().splitlines()
        assert "ruleset" in line


LICENSED = """\
rulesets: [us-ear-2026]
entities:
  - {id: falcon, headquarters: AE}
  - {id: heron, headquarters: SA}
sites:
  - {id: falcon-ae-1, entity: falcon, country: AE}
  - {id: falcon-ae-2, entity: falcon, country: AE}
  - {id: heron-sa-1, entity: heron, country: SA}
licences:
  - {id: FAL-1, licensee: falcon, sites: [falcon-ae-1], limit_tpp: 1000000, valid_from: 2025-01-01}
  - {id: FAL-2, licensee: falcon, countries: [AE], limit_tpp: 1000000, valid_from: 2025-01-01}
  - {id: HER-1, licensee: heron, sites: [heron-sa-1], limit_tpp: 1000000, valid_from: 2025-01-01}
inventory:
  - {site: falcon-ae-1, model: h100-sxm5-80gb, count: 10, installed: 2025-06-01, licence: FAL-1}
  - {site: heron-sa-1, model: h100-sxm5-80gb, count: 10, installed: 2025-06-01}
"""


def test_site_and_licence_checks_follow_the_requested_scope_and_the_token(
    db_url: str, tmp_path: Path, clock: Clock
) -> None:
    """A site's, an entity's or a country's answer holds the site checks there and the licences
    that name them; an entity-limited token sees its own sites' and licences' checks only."""
    settings = Settings(db_url=db_url, clock=clock, revocation_ttl_s=0, report_interval_s=300)
    store = Store.open(settings)
    ledger = Ledger(settings, store, default_catalogue())
    try:
        assert ledger.load_registry_file(_registry(tmp_path, LICENSED))

        def scopes(principal: Principal, scope: str | None) -> set[str]:
            answer = headroom_answer(ledger, principal, scope, AS_OF.isoformat())
            return {c["scope"] for c in answer["checks"]}

        everything = scopes(ADMIN, None)
        assert {"licence:FAL-1", "licence:FAL-2", "licence:HER-1", "site:heron-sa-1"} <= everything
        assert scopes(ADMIN, "site:falcon-ae-1") == {
            "site:falcon-ae-1",
            "licence:FAL-1",
            "licence:FAL-2",
        }
        assert scopes(ADMIN, "site:falcon-ae-2") == {"site:falcon-ae-2", "licence:FAL-2"}
        assert scopes(ADMIN, "entity:heron") == {"site:heron-sa-1", "licence:HER-1"}
        assert scopes(ADMIN, "country:SA") == {"site:heron-sa-1", "licence:HER-1"}
        falcon = Principal("f", "operator", operator="ops", entity="falcon")
        seen = scopes(falcon, None)
        assert seen == {c for c in everything if "heron" not in c and "HER" not in c}
        assert "licence:FAL-1" in seen
    finally:
        ledger.stop()
        store.close()
