"""`GET /v1/licences` and `gpucap licences`: the licence_quantity figures of the cached view,
validity, covered sites, and shipped serials against the devices the ledger sees (at the
shipment's site or elsewhere), per visibility; on SQLite and PostgreSQL, and over a real
`gpucap ledger serve` for the command."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gpucap.core.catalogue import default_catalogue
from gpucap.core.errors import InputError
from gpucap.core.fleet import Licence, Site
from gpucap.exporters.ledger import ledger_families
from gpucap.exporters.snapshots import CapSample, LedgerSnapshot
from gpucap.ledger import bundle, events, note, tokens
from gpucap.ledger.errors import AuthError
from gpucap.ledger.licences import covered_sites, licences_for, render
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from tests.ledger.support import H100_TPP, Clock, at, device, gpucap, ledger_server, report

REGISTRY = """\
ruleset: us-ear-2026
entities:
  - {id: falcon, headquarters: AE}
  - {id: kite, headquarters: SG}
sites:
  - {id: falcon-auh-1, entity: falcon, country: AE}
  - {id: falcon-auh-2, entity: falcon, country: AE}
  - {id: kite-sin-1, entity: kite, country: SG}
  - {id: kite-auh-1, entity: kite, country: AE}
licences:
  - id: FAL-1
    licensee: falcon
    sites: [falcon-auh-1]
    limit_units: 10
    unit_model: h100-sxm5-80gb
    valid_from: 2026-01-01
    valid_until: 2027-12-31
    conditions: "US-operated site"
  - id: FAL-2
    licensee: falcon
    countries: [AE]
    limit_tpp: 3166400
    valid_from: 2026-03-01
    valid_until: 2026-06-30
  - id: KITE-1
    licensee: kite
    sites: [kite-sin-1, falcon-auh-2]
    limit_tpp: 1583200
    valid_from: 2026-06-15
inventory:
  - {site: falcon-auh-1, model: h100-sxm5-80gb, count: 8, installed: 2026-02-01, licence: FAL-1}
  - {site: kite-sin-1, model: h100-sxm5-80gb, count: 50, installed: 2026-07-01, licence: KITE-1}
  - {site: falcon-auh-2, model: h100-sxm5-80gb, count: 2, installed: 2026-08-01, licence: KITE-1}
shipments:
  - id: S-1
    licence: FAL-1
    site: falcon-auh-1
    shipped: 2026-01-20
    model: h100-sxm5-80gb
    serials: [Sn10000, Sn10001, Sn10002, Sn10003]
  - {id: S-2, licence: KITE-1, site: kite-sin-1, shipped: 2026-06-20, model: h100-sxm5-80gb,
     serials: [Sk10000, Sk10001]}
"""
TODAY = "2026-12-01"
ADMIN = Principal("a", "operator", operator="root")
FALCON = Principal("f", "operator", operator="ops", entity="falcon")
AUDITOR = Principal("x", "auditor", auditor="ext")


@pytest.fixture
def led(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    settings = Settings(
        db_url=db_url,
        clock=Clock(at(f"{TODAY}T10:00:00")),
        revocation_ttl_s=0,
        sqlite_synchronous="NORMAL",
    )
    store = Store.open(settings)
    ledger = Ledger(settings, store, default_catalogue())
    ledger.load_registry_file(path)
    yield ledger
    ledger.stop()
    store.close()


def by_id(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["licence"]: item for item in answer["licences"]}


def quantity_check(ledger: Ledger, licence: str) -> Any:
    ev, _ = ledger.evaluation(ledger.today())
    (check,) = [c for c in ev.checks if c.scope == f"licence:{licence}"]
    return check


def post(ledger: Ledger, node: str, site: str, seq: int, devices: list[dict[str, Any]]) -> None:
    ledger.ingest(Report.model_validate(report(node=node, site=site, seq=seq, devices=devices)))


# -- pure ---------------------------------------------------------------------------------------
SITES = (
    Site("a1", "falcon", "AE"),
    Site("a2", "falcon", "AE"),
    Site("k1", "kite", "AE"),
    Site("s1", "falcon", "SG"),
)


@pytest.mark.parametrize(
    ("sites", "countries", "want"),
    [
        ({"a1"}, set(), ["a1"]),
        (set(), {"AE"}, ["a1", "a2"]),  # kite's site in AE is not falcon's
        ({"k1"}, set(), []),  # a named site of another entity covers nothing
        ({"s1"}, {"AE"}, ["a1", "a2", "s1"]),
        (set(), {"US"}, []),
    ],
)
def test_covered_sites_are_the_licensees_named_or_in_named_countries(
    sites: set[str], countries: set[str], want: list[str]
) -> None:
    lic = Licence("L", "falcon", frozenset(sites), frozenset(countries), date(2026, 1, 1))
    assert covered_sites(lic, SITES) == want


# -- the answer ---------------------------------------------------------------------------------
def test_figures_validity_and_sites_before_any_report(led: Ledger) -> None:
    answer = licences_for(led, ADMIN)
    assert answer["as_of"] == TODAY
    assert answer["ruleset"] == "us-ear-2026"
    assert answer["provenance"]["log_size"] >= 0
    got = by_id(answer)
    assert list(got) == ["FAL-1", "FAL-2", "KITE-1"]
    fal1 = got["FAL-1"]
    assert fal1["limit_tpp"] == 10 * H100_TPP
    assert fal1["used_tpp"] == 8 * H100_TPP
    assert fal1["headroom_tpp"] == 2 * H100_TPP
    assert fal1["headroom_h100e"] == 2.0
    assert fal1["status"] == "ok"
    assert fal1["valid"] is True
    assert fal1["valid_until"] == "2027-12-31"
    assert fal1["conditions"] == "US-operated site"
    assert fal1["sites"] == ["falcon-auh-1"]
    assert (fal1["shipped"], fal1["observed"]) == (4, 0)
    assert got["FAL-2"]["valid"] is False  # ended 2026-06-30
    assert got["FAL-2"]["sites"] == ["falcon-auh-1", "falcon-auh-2"]
    assert got["FAL-2"]["shipments"] == []
    assert got["KITE-1"]["sites"] == ["kite-sin-1"]  # falcon-auh-2 is not kite's
    assert got["KITE-1"]["valid_until"] is None
    assert got["KITE-1"]["valid"] is True
    for lic in got:
        check = quantity_check(led, lic)
        assert got[lic]["used_tpp"] == check.used_tpp
        assert got[lic]["limit_tpp"] == check.limit_tpp


def test_observed_serials_split_by_the_shipments_site(led: Ledger) -> None:
    # S-1's serials Sn10000 and Sn10001 at its site; Sn10002 at another site; Sn10003 unseen;
    # a device whose serial was never shipped changes nothing.
    post(led, "n1", "falcon-auh-1", 1, [device(0), device(1), device(7)])
    post(led, "x1", "falcon-auh-2", 1, [device(0, "x1", serial="Sn10002")])
    fal1 = by_id(licences_for(led, ADMIN))["FAL-1"]
    assert (fal1["shipped"], fal1["observed"]) == (4, 3)
    assert (fal1["observed_at_site"], fal1["observed_elsewhere"]) == (2, 1)
    (s1,) = fal1["shipments"]
    assert s1 == {
        "id": "S-1",
        "site": "falcon-auh-1",
        "shipped_on": "2026-01-20",
        "model": "h100-sxm5-80gb",
        "shipped": 4,
        "observed": 3,
        "observed_at_site": 2,
        "observed_elsewhere": 1,
    }
    check = quantity_check(led, "FAL-1")  # whatever the ledger now counts, the same figures
    assert fal1["used_tpp"] == check.used_tpp
    assert fal1["headroom_tpp"] == check.headroom_tpp
    # A device that goes away is no longer observed.
    post(led, "n1", "falcon-auh-1", 2, [device(0), device(7)])
    fal1 = by_id(licences_for(led, ADMIN))["FAL-1"]
    assert (fal1["observed"], fal1["observed_at_site"], fal1["observed_elsewhere"]) == (2, 1, 1)


def test_an_entity_scoped_operator_sees_only_its_licences(led: Ledger) -> None:
    assert list(by_id(licences_for(led, FALCON))) == ["FAL-1", "FAL-2"]
    assert list(by_id(licences_for(led, AUDITOR))) == ["FAL-1", "FAL-2", "KITE-1"]
    assert list(by_id(licences_for(led, FALCON, "FAL-2"))) == ["FAL-2"]
    for other in ("KITE-1", "NO-SUCH"):  # another's and an unknown one answer alike
        with pytest.raises(AuthError) as info:
            licences_for(led, FALCON, other)
        assert (info.value.status_code, info.value.reason) == (403, "scope_forbidden")
        assert "falcon" in info.value.detail
        assert f"licence:{other}" in info.value.detail
    assert led.auth_refusals_total["scope_forbidden"] == 2
    with pytest.raises(InputError) as bad:
        licences_for(led, ADMIN, "NO-SUCH")
    assert bad.value.path == "licence"


def test_render_formats(led: Ledger) -> None:
    answer = licences_for(led, ADMIN)
    rows = list(csv.reader(io.StringIO(render(answer, "csv"))))
    assert rows[0][:4] == ["licence", "licensee", "status", "limit_tpp"]
    assert [r[0] for r in rows[1:]] == ["FAL-1", "FAL-2", "KITE-1"]
    assert rows[1][rows[0].index("sites")] == "falcon-auh-1"
    headless = list(csv.reader(io.StringIO(render(answer, "csv", headers=False))))
    assert headless == rows[1:]
    table = render(answer, "table")
    assert "158,320" in table
    assert "licence" in table.splitlines()[0]
    assert json.loads(render(answer, "json")) == answer


# -- over HTTP, and the command -----------------------------------------------------------------
@pytest.mark.slow
def test_route_and_command_on_a_real_server(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    store = Store.open(Settings(db_url=db_url))
    try:
        made = {
            "admin": ("operator", {"operator": "root"}),
            "falcon": ("operator", {"operator": "ops", "entity": "falcon"}),
            "n1": ("node", {"node_id": "n1", "site_id": "falcon-auh-1"}),
        }
        toks = {n: tokens.issue(store, k, utc_now(), None, **s)[1] for n, (k, s) in made.items()}
    finally:
        store.close()
    files = {}
    for name, tok in toks.items():
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(tok + "\n")
    with ledger_server(db_url, registry) as url:
        auth = {"Authorization": f"Bearer {toks['n1']}"}
        body = report(node="n1", site="falcon-auh-1", seq=1, devices=[device(0), device(1)])
        assert httpx.post(f"{url}/v1/reports", json=body, headers=auth).status_code == 200
        assert httpx.get(f"{url}/v1/licences").status_code == 401
        assert httpx.get(f"{url}/v1/licences", headers=auth).status_code == 403
        admin = {"Authorization": f"Bearer {toks['admin']}"}
        answer = httpx.get(f"{url}/v1/licences", headers=admin).json()
        got = by_id(answer)
        today = answer["as_of"]
        assert got["FAL-1"]["valid"] is (today <= "2027-12-31")
        assert (got["FAL-1"]["observed"], got["FAL-1"]["observed_at_site"]) == (2, 2)
        scoped = {"Authorization": f"Bearer {toks['falcon']}"}
        refused = httpx.get(f"{url}/v1/licences", headers=scoped, params={"licence": "KITE-1"})
        assert refused.status_code == 403
        assert refused.json()["reason"] == "scope_forbidden"
        unknown = httpx.get(f"{url}/v1/licences", headers=admin, params={"licence": "NOPE"})
        assert unknown.status_code == 422
        assert unknown.json() == {
            "detail": [{"path": "licence", "reason": "no licence with id 'NOPE'"}]
        }

        def run(*args: str, who: str = "admin") -> Any:
            return gpucap("licences", "--ledger", url, "--token-file", str(files[who]), *args)

        done = run("-o", "json")
        assert done.returncode == 0, done.stderr
        assert by_id(json.loads(done.stdout))["FAL-1"]["shipments"] == got["FAL-1"]["shipments"]
        as_yaml = yaml.safe_load(run("-o", "yaml").stdout)
        as_json = json.loads(run("-o", "json").stdout)
        for doc in (as_yaml, as_json):
            doc["provenance"].pop("generated_at")
        assert as_yaml == as_json
        env = {"GPUCAP_LEDGER": url, "GPUCAP_TOKEN_FILE": str(files["falcon"])}
        done = gpucap("licences", "-o", "csv", "--no-headers", env=env)  # the URL from the env
        assert [r.split(",")[0] for r in done.stdout.splitlines()] == ["FAL-1", "FAL-2"]
        done = run("--format", "csv", who="falcon")
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        assert [r["licence"] for r in rows] == ["FAL-1", "FAL-2"]
        assert rows[0]["observed"] == "2"
        assert rows[0]["shipped"] == "4"
        done = run("--no-headers", "-o", "csv", "--licence", "FAL-2", who="falcon")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("FAL-2,falcon,")
        done = run(who="falcon")
        assert done.returncode == 0
        assert "FAL-1" in done.stdout
        assert "KITE-1" not in done.stdout
        done = run("--licence", "KITE-1", who="falcon")
        assert done.returncode == 3, done.stderr
        assert "HTTP 403" in done.stderr
        assert "may not see licence:KITE-1" in done.stderr
        done = run("--licence", "NOPE")
        assert done.returncode == 2
        assert done.stderr.strip().endswith("licence: no licence with id 'NOPE'")
        done = run("-o", "xml")
        assert done.returncode == 2


# -- evidence bundles: an entity's holds only its licences ------------------------------------
@pytest.mark.parametrize(("entity", "other"), [("falcon", b"kite"), ("kite", b"falcon")])
def test_an_entity_bundle_holds_only_its_licences_and_verifies(
    led: Ledger, tmp_path: Path, entity: str, other: bytes
) -> None:
    post(led, "n1", "falcon-auh-1", 1, [device(0), device(1)])
    post(led, "k1", "kite-sin-1", 1, [device(0, "k1", serial="Sk10000")])
    led.integrator.run_once()
    path = tmp_path / f"{entity}.zip"
    bundle.export(led, path, AUDITOR, f"entity:{entity}", date(2026, 12, 1))
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("registry.json"))["doc"]
        for name in zf.namelist():
            if not name.startswith(("rulesets/", "catalogue", "eccn")):
                assert other not in zf.read(name), name
    if entity == "falcon":
        assert [lic["id"] for lic in doc["licences"]] == ["FAL-1", "FAL-2"]
        assert [s["id"] for s in doc["shipments"]] == ["S-1"]
        # falcon's line naming kite's licence keeps no licence.
        assert [ln.get("licence") for ln in doc["inventory"]] == ["FAL-1", None]
    else:
        assert doc["licences"] == [
            {
                "id": "KITE-1",
                "licensee": "kite",
                "sites": ["kite-sin-1"],  # falcon-auh-2 is not kite's
                "limit_tpp": 1583200,
                "valid_from": "2026-06-15",
            }
        ]
        assert [s["id"] for s in doc["shipments"]] == ["S-2"]
    verifier = note.parse_verifier_key(led.signer.verifier_key, "key")
    outcome = bundle.verify(path, verifier)  # the reduced registry parses and replays
    assert outcome.devices == (2 if entity == "falcon" else 1)
    done = gpucap("audit", "verify", str(path), "--key", led.signer.verifier_key)
    assert done.returncode == 0, done.stdout + done.stderr


def test_registry_events_shown_to_an_entity_hold_only_its_licences(led: Ledger) -> None:
    led.integrator.run_once()
    page = led.events(FALCON, events.parse_query({"kind": "registry"}))
    (entry,) = page["entries"]
    doc = entry["body"]["doc"]
    assert [lic["id"] for lic in doc["licences"]] == ["FAL-1", "FAL-2"]
    assert [s["id"] for s in doc["shipments"]] == ["S-1"]
    assert "kite" not in json.dumps(entry)


def test_the_whole_bundle_keeps_every_licence(led: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "all.zip"
    led.integrator.run_once()
    bundle.export(led, path, AUDITOR, None, date(2026, 12, 1))
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("registry.json"))["doc"]
    assert [lic["id"] for lic in doc["licences"]] == ["FAL-1", "FAL-2", "KITE-1"]
    assert len(doc["shipments"]) == 2


# -- metrics ------------------------------------------------------------------------------------
def test_licence_series_come_from_the_licence_quantity_checks() -> None:
    caps = (
        CapSample("licence_quantity", "licence:FAL-1", 950.0, 50.0, False, 1000.0, "cap"),
        CapSample("destination_licence", "site:x", 10.0, -10.0, True, 0.0, "prohibition"),
    )
    families = {f.name: f for f in ledger_families(LedgerSnapshot("us-ear-2026", "in_force", caps))}
    used = [(s.labels, s.value) for s in families["gpucap_licence_used_tpp"].samples]
    limit = [(s.labels, s.value) for s in families["gpucap_licence_limit_tpp"].samples]
    assert used == [({"licence": "FAL-1"}, 950.0)]
    assert limit == [({"licence": "FAL-1"}, 1000.0)]
    cap = [s.labels for s in families["gpucap_cap_used_tpp"].samples]  # the check, as every cap
    assert {"rule": "licence_quantity", "scope": "licence:FAL-1"} in cap


def test_the_ledger_snapshot_carries_the_licence_checks(led: Ledger) -> None:
    led.refresh_snapshot(force=True)
    families = {f.name: f for f in ledger_families(led.snapshot())}
    used = {s.labels["licence"]: s.value for s in families["gpucap_licence_used_tpp"].samples}
    assert used == {"FAL-1": 8 * H100_TPP, "FAL-2": 0.0, "KITE-1": 50 * H100_TPP}
    limit = {s.labels["licence"]: s.value for s in families["gpucap_licence_limit_tpp"].samples}
    assert limit["FAL-1"] == 10 * H100_TPP
