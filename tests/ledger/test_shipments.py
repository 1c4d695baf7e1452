"""Observed devices matched to shipments by serial, on both databases: the licence their lines
carry (and the licence's quantity check counts), the shipment findings, the re-keying a
registry edit makes, and rebuild and verify agreeing with the live projections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from gpucap.core.catalogue import default_catalogue
from gpucap.core.errors import InputError
from gpucap.core.report import evaluation_to_dict
from gpucap.ledger import db, ingest, replay
from gpucap.ledger.errors import LogBrokenError, UnavailableError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store, _alembic_config
from gpucap.ledger.tables import table
from gpucap.ledger.tokens import Principal
from tests.ledger.support import H100_TPP, Clock, at, device, report

SHIPMENT = (
    "  - {id: SH-1, licence: L1, site: acme-sa-1, shipped: 2025-08-10, model: h100-sxm5-80gb,\n"
    '     serials: ["Sn10000", "Sn10001", "S-NEVER"]}\n'
)
LATER = (
    "  - {id: SH-2, licence: L1, site: acme-sa-1, shipped: 2025-08-20, model: h100-sxm5-80gb,\n"
    '     serials: ["Sn10002"]}\n'
)
REGISTRY = """\
ruleset: us-ear-2026
entities:
  - {id: acme, headquarters: US}
  - {id: dune, headquarters: US}
sites:
  - {id: acme-sa-1, entity: acme, country: SA}
  - {id: acme-sa-2, entity: acme, country: SA}
  - {id: acme-us-1, entity: acme, country: US}
  - {id: dune-sa-1, entity: dune, country: SA}
licences:
  - {id: L1, licensee: acme, sites: [acme-sa-1], limit_units: 100,
     unit_model: h100-sxm5-80gb, valid_from: 2025-01-01}
shipments:
"""


def _write(tmp_path: Path, *shipments: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY + "".join(shipments), encoding="utf-8")
    return path


def _report(node: str, site: str, serials: list[str], seq: int = 1) -> Report:
    devices = [device(i, node, serial=s) for i, s in enumerate(serials)]
    body = report(node=node, site=site, seq=seq, devices=devices)
    return Report.model_validate_json(json.dumps(body))


@pytest.fixture
def led(db_url: str, tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    settings = Settings(db_url=db_url, clock=clock, revocation_ttl_s=0, report_interval_s=300)
    store = Store.open(settings)
    ledger = Ledger(settings, store, default_catalogue())
    assert ledger.load_registry_file(_write(tmp_path, SHIPMENT))
    yield ledger
    ledger.stop()
    store.close()


def _lines(led: Ledger) -> list[tuple[str, str | None, int]]:
    t = table("inventory_line")
    with led.store.read() as conn:
        rows = conn.execute(sa.select(t).where(t.c.count > 0).order_by(t.c.key))
        return [(r.site_id, r.licence, r._mapping["count"]) for r in rows]


def _check(led: Ledger, rule: str, scope: str) -> dict[str, object]:
    ev, _ = led.evaluation(led.today())
    checks: list[dict[str, object]] = evaluation_to_dict(ev)["checks"]
    (found,) = [c for c in checks if (c["rule"], c["scope"]) == (rule, scope)]
    return found


def _agree(led: Ledger) -> None:
    """verify --projections is clean, and a rebuild leaves the projections as they were."""
    before = {n: sorted(map(repr, _table(led, n))) for n in ("device", "inventory_line")}
    replay.compare(led.store, default_catalogue())
    replay.rebuild(led.store, default_catalogue())
    after = {n: sorted(map(repr, _table(led, n))) for n in ("device", "inventory_line")}
    assert after == before


def _table(led: Ledger, name: str) -> list[dict[str, object]]:
    with led.store.read() as conn:
        return [
            {k: v for k, v in r.items() if k != "version"} for r in db.projection_rows(conn, name)
        ]


def test_a_shipped_serial_at_its_site_is_covered_by_its_licence(led: Ledger) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000", "Sn10001", "S-LOOSE"]))
    assert _lines(led) == [("acme-sa-1", None, 1), ("acme-sa-1", "L1", 2)]
    view = led.view(led.today())
    licensed = [ln for ln in view.fleet.lines if ln.licence == "L1"]
    assert [(ln.count, ln.observed) for ln in licensed] == [(2, True)]
    assert _check(led, "licence_quantity", "licence:L1")["used_tpp"] == 2 * H100_TPP
    with led.store.read() as conn:
        seen = db.observed_serials(conn, ["Sn10000", "S-LOOSE", "S-NEVER"])
    assert seen == {"Sn10000": ("acme-sa-1", "n1"), "S-LOOSE": ("acme-sa-1", "n1")}
    _agree(led)


def test_a_serial_at_another_site_is_shipped_elsewhere_and_not_covered(led: Ledger) -> None:
    led.ingest(_report("n2", "acme-sa-2", ["Sn10000"]))
    assert _lines(led) == [("acme-sa-2", None, 1)]
    assert _check(led, "licence_quantity", "licence:L1")["used_tpp"] == 0
    found = led.reconciliation()
    assert found["findings"]["shipment_elsewhere"] == [
        {
            "serial": "Sn10000",
            "licence": "L1",
            "shipment": "SH-1",
            "site": "acme-sa-1",
            "reported_site": "acme-sa-2",
            "node": "n2",
        }
    ]
    # Shipped (elsewhere): not also an unexpected device.
    assert found["counts"]["unexpected_device"] == 0
    _agree(led)


def test_a_shipped_serial_is_missing_only_after_the_grace_days(led: Ledger, clock: Clock) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000"]))
    clock.moment = at("2025-09-09T12:00:00")  # shipped 2025-08-10: day 30, within the grace
    assert led.reconciliation()["counts"]["shipment_missing"] == 0
    clock.moment = at("2025-09-10T12:00:00")
    found = led.reconciliation()
    assert [i["serial"] for i in found["findings"]["shipment_missing"]] == ["Sn10001", "S-NEVER"]
    assert found["findings"]["shipment_missing"][0] == {
        "serial": "Sn10001",
        "licence": "L1",
        "shipment": "SH-1",
        "site": "acme-sa-1",
        "shipped": "2025-08-10",
    }
    # Reported at another site is not reported at its site.
    led.ingest(_report("n2", "acme-sa-2", ["Sn10001"]))
    assert led.reconciliation()["counts"]["shipment_missing"] == 2


def test_the_grace_days_come_from_the_environment() -> None:
    env = {"GPUCAP_SHIPMENT_GRACE_DAYS": "7"}
    assert Settings.from_env(env).shipment_grace_days == 7
    assert Settings.from_env({}).shipment_grace_days == 30
    for bad in ("seven", "-1", "2.5"):
        with pytest.raises(InputError, match="GPUCAP_SHIPMENT_GRACE_DAYS"):
            Settings.from_env({"GPUCAP_SHIPMENT_GRACE_DAYS": bad})


def test_an_unlicensed_device_needing_a_licence_is_unexpected(led: Ledger) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000", "S-LOOSE"]))
    led.ingest(_report("n3", "acme-us-1", ["S-HOME"]))  # the US needs no destination licence
    led.ingest(_report("n4", "dune-sa-1", ["S-DUNE"]))
    found = led.reconciliation()
    items = found["findings"]["unexpected_device"]
    assert found["counts"]["unexpected_device"] == 2
    assert [(i["serial"], i["site_id"], i["node_id"]) for i in items] == [
        ("S-LOOSE", "acme-sa-1", "n1"),
        ("S-DUNE", "dune-sa-1", "n4"),
    ]
    # An operator of one entity sees its own sites' findings only.
    mine = led.reconciliation_for(Principal("t", "operator", operator="o", entity="dune"))
    assert [i["serial"] for i in mine["findings"]["unexpected_device"]] == ["S-DUNE"]
    assert mine["counts"]["shipment_missing"] == 0


def test_an_entity_sees_its_end_of_a_shipment_elsewhere(led: Ledger) -> None:
    led.ingest(_report("n4", "dune-sa-1", ["Sn10001"]))
    dune = led.reconciliation_for(Principal("t", "operator", operator="o", entity="dune"))
    (item,) = dune["findings"]["shipment_elsewhere"]
    assert (item["site"], item["reported_site"], item["node"]) == (None, "dune-sa-1", "n4")
    acme = led.reconciliation_for(Principal("t", "operator", operator="o", entity="acme"))
    (item,) = acme["findings"]["shipment_elsewhere"]
    assert (item["site"], item["reported_site"], item["node"]) == ("acme-sa-1", None, None)


def test_a_registry_edit_adding_a_shipment_retags_present_devices(
    led: Ledger, tmp_path: Path
) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000", "Sn10001", "Sn10002"]))
    assert _lines(led) == [("acme-sa-1", None, 1), ("acme-sa-1", "L1", 2)]
    assert led.reconciliation()["counts"]["unexpected_device"] == 1
    assert led.load_registry_file(_write(tmp_path, SHIPMENT, LATER))
    assert _lines(led) == [("acme-sa-1", "L1", 3)]
    assert _check(led, "licence_quantity", "licence:L1")["used_tpp"] == 3 * H100_TPP
    assert led.reconciliation()["counts"]["unexpected_device"] == 0
    _agree(led)
    # And back: the shipment's removal un-tags them again.
    assert led.load_registry_file(_write(tmp_path, SHIPMENT))
    assert _lines(led) == [("acme-sa-1", None, 1), ("acme-sa-1", "L1", 2)]
    assert _check(led, "licence_quantity", "licence:L1")["used_tpp"] == 2 * H100_TPP
    _agree(led)


def test_verify_names_a_licence_the_log_does_not_make(led: Ledger) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000"]))
    dev = table("device")
    with led.store.write() as conn:
        conn.execute(sa.update(dev).values(licence=None))
    with pytest.raises(LogBrokenError, match=r"device\[n1/GPU-n1-0000\].*licence"):
        replay.compare(led.store, default_catalogue())


def test_gone_devices_keep_their_licence_for_the_quantity(led: Ledger, clock: Clock) -> None:
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000", "Sn10001"]))
    clock.moment = at("2025-09-05T00:00:00")
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000"], seq=2))
    assert sorted(_lines(led)) == [("acme-sa-1", "L1", 1), ("acme-sa-1", "L1", 1)]
    # Removed devices count against a licence's quantity too (the engine's rule).
    assert _check(led, "licence_quantity", "licence:L1")["used_tpp"] == 2 * H100_TPP
    assert led.today() == date(2025, 9, 5)
    _agree(led)


def test_migration_0005_backfills_serials_and_licences_from_the_log(led: Ledger) -> None:
    """Down to 0004 (serials, licences and licensed lines dropped) and up again: the upgrade
    takes the serials from the log and the licences from the registry, as a replay does."""
    led.ingest(_report("n1", "acme-sa-1", ["Sn10000", "Sn10001", "S-LOOSE"]))
    led.ingest(_report("n2", "acme-sa-2", ["Sn10002"]))
    before = {n: sorted(map(repr, _table(led, n))) for n in ("device", "inventory_line")}
    for target in ("0004", "head"):
        with led.store.engine.begin() as conn:
            config = _alembic_config()
            config.attributes["connection"] = conn
            (command.downgrade if target == "0004" else command.upgrade)(config, target)
        if target == "0004":
            with led.store.read() as conn:
                lines = conn.execute(sa.text("SELECT key, count FROM inventory_line")).all()
            assert {k: n for k, n in lines if n} == {
                "acme-sa-1|h100-sxm5-80gb|15832|3A090.a|2025-09-01|": 3,
                "acme-sa-2|h100-sxm5-80gb|15832|3A090.a|2025-09-01|": 1,
            }
    after = {n: sorted(map(repr, _table(led, n))) for n in ("device", "inventory_line")}
    assert after == before
    replay.compare(led.store, default_catalogue())


def test_a_batch_keyed_with_a_registry_that_changed_meanwhile_is_retried(led: Ledger) -> None:
    """PostgreSQL: a registry recorded while a batch ran (after the batch read its serial map)
    fails the batch instead of leaving devices keyed with the old shipments."""
    cache = ingest.SiteCache()
    with led.store.read() as conn:
        cache.sites(conn)
    p = ingest.prepare(_report("n1", "acme-sa-1", ["Sn10000"]), default_catalogue())
    with led.store.write() as conn:  # what a concurrent registry change leaves, seen late
        conn.execute(sa.update(table("registry")).values(digest="0" * 64))
    results, appended = ingest.ingest_batch(led.store, [p], led.now(), cache)
    if led.store.is_sqlite:  # one writer: nothing can interleave, nothing is checked
        assert [getattr(r, "status", None) for r in results] == ["accepted"]
        return
    assert [type(r) for r in results] == [UnavailableError]
    assert appended == 0
    assert _lines(led) == []
