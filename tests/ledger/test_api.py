"""End to end: a real `gpucap ledger serve` (uvicorn on loopback) and a plain HTTP client."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpucap.ledger import tokens
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import (
    H100_TPP,
    REGISTRY,
    device,
    gpucap,
    ledger_server,
    log_kinds,
    pg_base_url,
    pg_schema_url,
    report,
)

pytestmark = pytest.mark.slow


@dataclass
class Ledger:
    url: str
    db_url: str
    tokens: dict[str, str]
    token_ids: dict[str, str]

    def post(self, body: Any, token: str | None, **kw: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/json"
            return httpx.post(f"{self.url}/v1/reports", content=body, headers=headers, **kw)
        return httpx.post(f"{self.url}/v1/reports", json=body, headers=headers, **kw)

    def get(self, path: str, token: str | None, **params: str) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=30)

    def events(self) -> int:
        """Log entries other than the fixture's token issues."""
        return len(log_kinds(self.db_url))


def _issue(db_url: str) -> tuple[dict[str, str], dict[str, str]]:
    store = Store.open(Settings(db_url=db_url))
    made = {
        "n1": ("node", {"node_id": "n1", "site_id": "acme-ae-1"}),
        "n2": ("node", {"node_id": "n2", "site_id": "nimbus-ae-1"}),
        "n3": ("node", {"node_id": "n3", "site_id": "acme-ae-1"}),
        "revoked": ("node", {"node_id": "n9", "site_id": "acme-ae-1"}),
        "admin": ("operator", {"operator": "root"}),
        "acme": ("operator", {"operator": "ops", "entity": "acme"}),
        "nimbus": ("operator", {"operator": "ops", "entity": "nimbus"}),
    }
    toks, ids = {}, {}
    try:
        for name, (kind, subject) in made.items():
            ids[name], toks[name] = tokens.issue(store, kind, utc_now(), None, **subject)
        tokens.revoke(store, ids["revoked"], utc_now())
    finally:
        store.close()
    return toks, ids


@pytest.fixture
def ledger(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    toks, ids = _issue(db_url)
    with ledger_server(db_url, registry) as url:
        yield Ledger(url, db_url, toks, ids)


def check(answer: dict[str, Any], rule: str, scope: str) -> dict[str, Any]:
    found = [c for c in answer["checks"] if (c["rule"], c["scope"]) == (rule, scope)]
    assert len(found) == 1, answer["checks"]
    return found[0]


def test_ingest_is_idempotent_and_order_safe(ledger: Ledger) -> None:
    tok = ledger.tokens["n1"]
    assert ledger.post(report(seq=2), tok).json() == {"status": "accepted", "seq": 2}
    assert ledger.post(report(seq=2), tok).json() == {"status": "duplicate"}
    assert ledger.post(report(seq=1, n=3), tok).json() == {"status": "duplicate"}  # late, older
    assert ledger.events() == 2  # the registry and one report
    inv = ledger.get("/v1/inventory", ledger.tokens["admin"], site="acme-ae-1").json()
    assert inv["devices_total"] == 8
    assert [ln["count"] for ln in inv["lines"]] == [8]


def test_headroom_matches_hand_computed_values(ledger: Ledger) -> None:
    assert ledger.post(report(seq=1), ledger.tokens["n1"]).status_code == 200
    answer = ledger.get("/v1/headroom", ledger.tokens["admin"]).json()
    # acme (UVEU, US HQ): 1000 declared H100 in the US + 8 observed in AE.
    share = check(answer, "uveu_tier2_country_share", "entity:acme/country:AE")
    assert share["used_tpp"] == 8 * H100_TPP
    assert share["total_tpp"] == 1008 * H100_TPP
    assert share["headroom_tpp"] == pytest.approx((0.07 * 1008 - 8) * H100_TPP / 0.93)
    assert check(answer, "uveu_tier1_share", "entity:acme")["headroom_tpp"] == pytest.approx(
        (1000 / 0.75 - 1008) * H100_TPP
    )
    assert check(answer, "uveu_us_share", "entity:acme")["headroom_tpp"] == 992 * H100_TPP
    scoped = ledger.get("/v1/headroom", ledger.tokens["admin"], scope="country:AE").json()
    assert {c["scope"] for c in scoped["checks"]} >= {"country:AE", "entity:acme/country:AE"}
    assert all("country:AE" in c["scope"] for c in scoped["checks"])
    assert [s["id"] for s in scoped["sites"]] == ["acme-ae-1", "nimbus-ae-1"]


def test_whatif_finds_the_binding_share_rule_and_writes_nothing(ledger: Ledger) -> None:
    ledger.post(report(seq=1), ledger.tokens["n1"])
    events = ledger.events()
    admin = {"Authorization": f"Bearer {ledger.tokens['admin']}"}

    def ask(count: int) -> dict[str, Any]:
        body = {"add": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": count}]}
        r = httpx.post(f"{ledger.url}/v1/whatif", json=body, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    # 7% of T in AE: delta <= (0.07 * 1008 - 8) / 0.93 = 67.27 H100.
    ok, over = ask(67), ask(68)
    assert ok["allowed"] is True
    assert over["allowed"] is False
    assert over["binding"]["rule"] == "uveu_tier2_country_share"
    assert over["binding"]["scope"] == "entity:acme/country:AE"
    assert ok["binding"]["headroom_tpp"] == pytest.approx((0.07 * 1075 - 75) * H100_TPP / 0.93)
    tier1 = next(c for c in over["after"] if c["rule"] == "uveu_tier1_share")
    assert tier1["headroom_tpp"] == pytest.approx((1000 / 0.75 - 1076) * H100_TPP)
    removal = {"remove": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 9}]}
    r = httpx.post(f"{ledger.url}/v1/whatif", json=removal, headers=admin, timeout=30)
    assert r.status_code == 422
    assert r.json()["detail"][0]["path"] == "remove[0].count"
    assert ledger.events() == events


def test_every_auth_refusal(ledger: Ledger) -> None:
    t = ledger.tokens
    for path in ("/v1/headroom", "/v1/inventory", "/v1/reconciliation"):
        assert ledger.get(path, None).status_code == 401
    assert ledger.post(report(seq=1), None).status_code == 401
    assert ledger.post(report(seq=1), "garbage").status_code == 401
    forged = t["n1"][:-4] + ("AAAA" if not t["n1"].endswith("AAAA") else "BBBB")
    assert ledger.post(report(seq=1), forged).status_code == 401
    assert ledger.post(report(seq=1, node="n9"), t["revoked"]).status_code == 401
    # A node token used for another node or another site.
    assert ledger.post(report(seq=1, node="n3"), t["n1"]).status_code == 403
    assert ledger.post(report(seq=1, site="acme-us-1"), t["n1"]).status_code == 403
    # The wrong kind of token.
    assert ledger.post(report(seq=1), t["admin"]).status_code == 403
    assert ledger.get("/v1/headroom", t["n1"]).status_code == 403
    # Entity-scoped operators asking beyond their scopes.
    assert ledger.get("/v1/headroom", t["nimbus"], scope="entity:acme").status_code == 403
    assert ledger.get("/v1/headroom", t["nimbus"], scope="country:US").status_code == 403
    assert ledger.get("/v1/headroom", t["nimbus"], scope="site:acme-ae-1").status_code == 403
    assert ledger.get("/v1/inventory", t["nimbus"], site="acme-ae-1").status_code == 403
    body = {"add": [{"site": "acme-us-1", "model": "h100-sxm5-80gb", "count": 1}]}
    r = httpx.post(
        f"{ledger.url}/v1/whatif", json=body, headers={"Authorization": f"Bearer {t['nimbus']}"}
    )
    assert r.status_code == 403
    assert ledger.events() == 1
    # Allowed: its own entity, and the country checks of countries where it has sites.
    own = ledger.get("/v1/headroom", t["nimbus"]).json()
    scopes = {c["scope"] for c in own["checks"]}
    assert scopes
    assert all("acme" not in s and s != "country:US" for s in scopes)
    assert "country:AE" in scopes
    assert {s["entity"] for s in own["sites"]} == {"nimbus"}
    metrics = httpx.get(f"{ledger.url}/metrics").text
    assert "auth_refusals" in metrics


def test_malformed_reports_are_422_with_a_path_and_write_nothing(ledger: Ledger) -> None:
    tok = ledger.tokens["n1"]
    many = report(seq=1, devices=[device(i) for i in range(1025)])
    cases: list[tuple[Any, str]] = [
        ({**report(seq=1), "extra": 1}, "extra"),
        ({k: v for k, v in report(seq=1).items() if k != "seq"}, "seq"),
        ({**report(seq=1), "schema": "gpucap.report/v2"}, "schema"),
        ({**report(seq=1), "collected_at": "2025-09-01T10:00:00"}, "collected_at"),
        ({**report(seq=-1)}, "seq"),
        (report(seq=1, devices=[device(0, pci_device_id="2330")]), "devices[0].pci_device_id"),
        (report(seq=1, devices=[device(0, uuid="x" * 500)]), "devices[0].uuid"),
        (report(seq=1, devices=[device(0, bogus=True)]), "devices[0].bogus"),
        (report(seq=1, devices=[device(0), device(0)]), "devices[1].uuid"),
        (many, "devices"),
        (b"{not json", "(body)"),
        (report(seq=1, devices=[device(0, uuid="GPU-\x00-1")]), "devices[0].uuid"),
        (report(seq=1, devices=[device(0, name="H100\x1b[31m")]), "devices[0].name"),
        ({**report(seq=1), "agent_version": "0.1\x00"}, "agent_version"),
        (json.dumps(report(seq=1))[:-1].encode() + b', "seq": 2}', "seq"),  # a key twice
    ]
    for body, path in cases:
        r = ledger.post(body, tok, timeout=30)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["path"] == path, r.text
    too_large = ledger.post(b"x" * (5 * 1024 * 1024), tok, timeout=30)
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["detail"][0]["path"] == "(body)"
    as_form = httpx.post(
        f"{ledger.url}/v1/reports",
        content=json.dumps(report(seq=1)),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "text/plain"},
    )
    assert as_form.status_code == 415, as_form.text
    assert "application/json" in as_form.json()["detail"][0]["reason"]
    assert ledger.events() == 1


def test_health_ready_openapi_metrics_and_reconciliation(ledger: Ledger) -> None:
    assert httpx.get(f"{ledger.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{ledger.url}/readyz").json() == {"status": "ready"}
    paths = httpx.get(f"{ledger.url}/openapi.json").json()["paths"]
    assert {"/v1/reports", "/v1/headroom", "/v1/whatif", "/v1/inventory"} <= set(paths)
    ledger.post(report(seq=1, devices=[device(0, tpp=1.0)]), ledger.tokens["n1"])
    rec = ledger.get("/v1/reconciliation", ledger.tokens["acme"]).json()
    assert rec["counts"]["tpp_mismatch"] == 1
    assert (
        ledger.get("/v1/reconciliation", ledger.tokens["nimbus"]).json()["counts"]["tpp_mismatch"]
        == 0
    )
    assert "gpucap" in httpx.get(f"{ledger.url}/metrics").text


def test_operator_cli_headroom_and_whatif(ledger: Ledger) -> None:
    ledger.post(report(seq=1), ledger.tokens["n1"])
    env = {"GPUCAP_TOKEN": ledger.tokens["acme"]}
    proc = gpucap(
        "headroom", "--ledger", ledger.url, "--scope", "entity:acme", "--format", "json", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "ok"
    table = gpucap("headroom", "--ledger", ledger.url, env=env)
    assert table.returncode == 0
    assert "uveu_tier2_country_share" in table.stdout

    def whatif(model: str, count: int) -> subprocess.CompletedProcess[str]:
        return gpucap(
            "whatif", "--ledger", ledger.url, "--site", "acme-ae-1",
            "--model", model, "--count", str(count), env=env,
        )  # fmt: skip

    yes = whatif("h100-sxm5-80gb", 10)
    assert yes.returncode == 0
    assert "allowed" in yes.stdout
    no = whatif("h100-sxm5-80gb", 500)
    assert no.returncode == 1
    assert "NOT allowed" in no.stdout
    bad = whatif("nope", 1)
    assert bad.returncode == 2
    assert "add[0].model" in bad.stderr
    denied = gpucap("headroom", "--ledger", ledger.url, "--scope", "entity:nimbus", env=env)
    assert denied.returncode == 3
    missing = gpucap("headroom", "--ledger", ledger.url, env={"GPUCAP_TOKEN": ""})
    assert missing.returncode == 2
    assert "GPUCAP_TOKEN" in missing.stderr


@pytest.mark.postgres
def test_two_ledger_processes_on_one_postgresql(tmp_path: Path) -> None:
    base = pg_base_url()
    assert base is not None
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    with pg_schema_url(base) as db_url:
        toks, ids = _issue(db_url)
        with ledger_server(db_url, registry) as a, ledger_server(db_url, registry) as b:
            statuses: list[str] = []
            lock = threading.Lock()

            def send(url: str, seq: int, n: int) -> None:
                r = httpx.post(
                    f"{url}/v1/reports",
                    json=report(seq=seq, n=n),
                    headers={"Authorization": f"Bearer {toks['n1']}"},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
                with lock:
                    statuses.append(r.json()["status"])

            # Every report goes to both processes at once, in increasing seq.
            for seq in range(1, 11):
                threads = [
                    threading.Thread(target=send, args=(u, seq, 8 + seq % 2)) for u in (a, b)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            assert statuses.count("accepted") == 10
            assert statuses.count("duplicate") == 10
            led = Ledger(a, db_url, toks, ids)
            assert led.events() == 11
            for url in (a, b):
                inv = Ledger(url, db_url, toks, ids).get(
                    "/v1/inventory", toks["admin"], site="acme-ae-1"
                )
                assert inv.json()["devices_total"] == 9
                head = (
                    Ledger(url, db_url, toks, ids)
                    .get("/v1/headroom", toks["admin"], scope="entity:acme")
                    .json()
                )
                share = check(head, "uveu_tier2_country_share", "entity:acme/country:AE")
                assert share["used_tpp"] == 8 * H100_TPP  # seq 10 reported 8 present devices
        verify = gpucap("ledger", "verify", "--db", db_url)
        assert verify.returncode == 0, verify.stderr


def test_metrics_findings_agree_with_the_reconciliation_api(ledger: Ledger) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ledger.post(report(seq=1), ledger.tokens["n1"])  # acme-ae-1: no declared inventory
    counts = ledger.get("/v1/reconciliation", ledger.tokens["admin"]).json()["counts"]
    assert counts["declared_vs_observed"] == 0

    def scraped() -> dict[str, float]:
        text = httpx.get(f"{ledger.url}/metrics", timeout=30).text
        rows = {
            s.labels["kind"]: s.value
            for f in text_string_to_metric_families(text)
            if f.name == "gpucap_reconciliation_findings"
            for s in f.samples
        }
        eventlog = [
            s.value
            for f in text_string_to_metric_families(text)
            if f.name == "gpucap_eventlog_rows"
            for s in f.samples
        ]
        # the registry, the report, and the fixture's 7 token issues and 1 revocation
        return rows if eventlog == [10.0] else {}

    deadline = time.monotonic() + 30  # the snapshot is refreshed in the background
    while not (found := scraped()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == {k: float(v) for k, v in counts.items()}


def test_nodes_answer_the_last_accepted_seq_though_heartbeats_are_not_logged(
    ledger: Ledger,
) -> None:
    for seq in (1, 2, 3):
        assert ledger.post(report(seq=seq), ledger.tokens["n1"]).status_code == 200
    ledger.post(report(node="n2", site="nimbus-ae-1", seq=7), ledger.tokens["n2"])
    events = ledger.events()
    answer = ledger.get("/v1/nodes", ledger.tokens["admin"]).json()
    assert answer["nodes_total"] == 2
    by_node = {n["node"]: n for n in answer["nodes"]}
    assert by_node["n1"]["last_seq"] == 3
    assert by_node["n1"]["site"] == "acme-ae-1"
    assert by_node["n1"]["stale"] is False
    assert by_node["n2"]["last_seq"] == 7
    assert ledger.events() == events  # reading changes nothing
    scoped = ledger.get("/v1/nodes", ledger.tokens["acme"]).json()
    assert [n["node"] for n in scoped["nodes"]] == ["n1"]  # nimbus's node is not acme's
    one = ledger.get("/v1/nodes", ledger.tokens["admin"], site="nimbus-ae-1").json()
    assert [n["node"] for n in one["nodes"]] == ["n2"]
    refused = ledger.get("/v1/nodes", ledger.tokens["acme"], site="nimbus-ae-1")
    assert refused.status_code == 403
    assert ledger.get("/v1/nodes", ledger.tokens["n1"]).status_code == 403


def test_whatif_bodies_are_bounded_typed_and_unambiguous(ledger: Ledger) -> None:
    headers = {"Authorization": f"Bearer {ledger.tokens['admin']}"}
    url = f"{ledger.url}/v1/whatif"
    big = b'{"add": [], "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(url, content=big, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    r = httpx.post(url, content=b'{"add": []}', headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    twice = b'{"as_of": "2025-09-01", "add": [], "as_of": "2025-09-02"}'
    r = httpx.post(url, content=twice, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == [{"path": "as_of", "reason": "given twice in one JSON object"}]
    ok = {"add": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 1}]}
    r = httpx.post(url, json=ok, headers=headers)
    assert r.status_code == 200, r.text
    nul = {"add": [{"site": "acme-ae-1\x00", "model": "h100-sxm5-80gb", "count": 1}]}
    r = httpx.post(url, json=nul, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["path"] == "add[0].site"
