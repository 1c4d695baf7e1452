"""The registry is a scenario document: the sections the format gained (entity parents,
licences, shipments, `rulesets`) load, and the headroom answer has the document's shape
(`rulesets`, each check's `ruleset`). Several packs are evaluated together
(tests/ledger/test_multipack_ledger.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpucap.core.catalogue import default_catalogue
from gpucap.core.errors import InputError
from gpucap.ledger.app import headroom_answer, headroom_body
from gpucap.ledger.service import Ledger, registry_doc
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from tests.ledger.support import Clock, gpucap

ADMIN = Principal("a", "operator", operator="root")
DIFFUSION = "us-bis-ai-diffusion-2025"
# The shared test registry (support.REGISTRY) with every new section.
LICENSED = f"""\
rulesets: [{DIFFUSION}]
countries: {{AE: {{gov_agreement: true}}}}
entities:
  - {{id: acme, headquarters: US, status: uveu}}
  - {{id: nimbus, headquarters: AE, status: nveu, nveu_countries: [AE], parent: acme}}
sites:
  - {{id: acme-ae-1, entity: acme, country: AE}}
  - {{id: acme-us-1, entity: acme, country: US}}
  - {{id: nimbus-ae-1, entity: nimbus, country: AE}}
licences:
  - id: D1
    licensee: nimbus
    sites: [nimbus-ae-1]
    limit_units: 100
    unit_model: h100-sxm5-80gb
    valid_from: 2025-01-01
    conditions: semi-annual reports
inventory:
  - {{site: acme-us-1, model: h100-sxm5-80gb, count: 1000, installed: 2025-06-01}}
  - {{site: nimbus-ae-1, model: h100-sxm5-80gb, count: 8, installed: 2025-06-01, licence: D1}}
shipments:
  - {{id: S-1, licence: D1, site: nimbus-ae-1, shipped: 2025-05-20, model: h100-sxm5-80gb,
     serials: ["1652000000001", "1652000000002"]}}
"""
TWO_PACKS = LICENSED.replace(f"rulesets: [{DIFFUSION}]", f"rulesets: [{DIFFUSION}, us-ear-2026]")


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def licensed(db_url: str, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    settings = Settings(db_url=db_url, clock=clock, revocation_ttl_s=0)
    store = Store.open(settings)
    led = Ledger(settings, store, default_catalogue())
    assert led.load_registry_file(_file(tmp_path, LICENSED))
    yield led
    led.stop()
    store.close()


def test_a_registry_with_the_new_sections_loads_and_answers(licensed: Ledger) -> None:
    fleet = licensed.view(licensed.today()).fleet
    assert [e.parent for e in fleet.entities] == [None, "acme"]
    (licence,) = fleet.licences
    assert (licence.limit_units, licence.unit_tpp) == (100, 15832)
    assert [s.serials for s in fleet.shipments] == [("1652000000001", "1652000000002")]
    assert [ln.licence for ln in fleet.lines if ln.site == "nimbus-ae-1"] == ["D1"]
    answer = headroom_answer(licensed, ADMIN, None, None)
    assert answer["rulesets"] == [answer["ruleset"]]
    assert answer["ruleset"]["id"] == DIFFUSION
    assert answer["checks"]
    assert {c["ruleset"] for c in answer["checks"]} == {DIFFUSION}
    body = json.loads(headroom_body(licensed, ADMIN, None, None))
    assert {k: v for k, v in body.items() if k != "provenance"} == {
        k: v for k, v in answer.items() if k != "provenance"
    }
    scoped = headroom_answer(licensed, ADMIN, "entity:nimbus", None)
    assert scoped["rulesets"] == answer["rulesets"]
    assert scoped["checks"]
    assert all(c["ruleset"] == DIFFUSION for c in scoped["checks"])


def test_several_packs_load_and_a_repeated_one_is_refused_naming_it(tmp_path: Path) -> None:
    doc = registry_doc(_file(tmp_path, TWO_PACKS), default_catalogue())
    assert doc["rulesets"] == [DIFFUSION, "us-ear-2026"]
    text = LICENSED.replace(f"rulesets: [{DIFFUSION}]", f"rulesets: [{DIFFUSION}, {DIFFUSION}]")
    with pytest.raises(InputError, match=r"^rulesets\[1\]: rule pack .* is listed twice"):
        registry_doc(_file(tmp_path, text), default_catalogue())


def test_an_unknown_pack_in_rulesets_is_refused_naming_it(tmp_path: Path) -> None:
    text = LICENSED.replace(f"rulesets: [{DIFFUSION}]", "rulesets: [no-such-pack]")
    with pytest.raises(InputError, match=r"^rulesets\[0\]: unknown rule pack 'no-such-pack'"):
        registry_doc(_file(tmp_path, text), default_catalogue())


@pytest.mark.slow
def test_serve_refuses_a_registry_naming_a_pack_twice(tmp_path: Path) -> None:
    text = TWO_PACKS.replace("us-ear-2026]", f"{DIFFUSION}]")
    registry = _file(tmp_path, text)
    db = f"sqlite:///{tmp_path / 'x.db'}"
    proc = gpucap("ledger", "serve", "--registry", str(registry), "--db", db)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "rulesets[1]: rule pack" in line
