"""`gpucap shipments import FILE.csv --licence ID --site S`: rows checked one by one and
against the registry, the first problem one exit-2 line naming `FILE.csv:LINE:column` with
nothing written, the amended registry recorded as a `registry` entry (seen by
`gpucap ledger events`), the same file twice a no-op; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpucap.core.catalogue import default_catalogue
from gpucap.core.errors import InputError
from gpucap.ledger import db, shipimport
from gpucap.ledger.licences import licences_for
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from tests.ledger.support import Clock, at, device, gpucap, log_kinds, report
from tests.ledger.test_licences import REGISTRY

GOOD = b"serial,model,shipped\nN-1,h100-sxm5-80gb,2026-02-01\nN-2,h100-sxm5-80gb,2026-02-01\n"
ADMIN = Principal("a", "operator", operator="root")


@pytest.fixture
def led(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    settings = Settings(db_url=db_url, clock=Clock(at("2026-12-01T10:00:00")), revocation_ttl_s=0)
    store = Store.open(settings)
    ledger = Ledger(settings, store, default_catalogue())
    ledger.load_registry_file(path)
    yield ledger
    ledger.stop()
    store.close()


def registry_doc(led: Ledger) -> dict[str, object]:
    with led.store.read() as conn:
        row = db.registry(conn)
    assert row is not None
    doc: dict[str, object] = json.loads(row.doc)
    return doc


def run(led: Ledger, data: bytes, licence: str = "FAL-1", site: str = "falcon-auh-1") -> bool:
    done = shipimport.import_file(led.store, data, "s.csv", licence, site, led.now())
    return done.recorded


# -- the file -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "where", "reason"),
    [
        (b"", "s.csv:1", "no header row"),
        (b"serial,model\nA,h100-sxm5-80gb\n", "s.csv:1:shipped", "missing column"),
        (b"serial,model,shipped,count\n", "s.csv:1:count", "unknown column"),
        (b"serial,model,serial\n", "s.csv:1:serial", "column given twice"),
        (b"serial,model,shipped\n", "s.csv:2", "no shipment rows"),
        (b"serial,model,shipped\nA,h100-sxm5-80gb\n", "s.csv:2", "expected 3 fields, found 2"),
        (b"serial,model,shipped\n,h100-sxm5-80gb,2026-01-01\n", "s.csv:2:serial", "must not be"),
        (b'serial,model,shipped\n"A\x07",h100-sxm5-80gb,2026-01-01\n', "s.csv:2:serial", "U+0007"),
        (b"serial,model,shipped\n A,h100-sxm5-80gb,2026-01-01\n", "s.csv:2:serial", "whitespace"),
        (
            b"serial,model,shipped\n" + b"A" * 129 + b",h100-sxm5-80gb,2026-01-01\n",
            "s.csv:2:serial",
            "longer",
        ),
        (
            b"serial,model,shipped\nA,h100-sxm5-80gb,2026-01-01\nB,h100,2026-01-01\n",
            "s.csv:3:model",
            "unknown model 'h100'",
        ),
        (b"serial,model,shipped\nA,h100-sxm5-80gb,2026-02-30\n", "s.csv:2:shipped", "not a valid"),
        (b"serial,model,shipped\nA,h100-sxm5-80gb,1/2/2026\n", "s.csv:2:shipped", "YYYY-MM-DD"),
        (
            b'serial,model,shipped\nA,h100-sxm5-80gb,2026-01-01\n"x\ny",h100-sxm5-80gb,2026-01-01\nA,h100-sxm5-80gb,2026-01-01\n',
            "s.csv:3:serial",  # a quoted field over two lines: the row starts on line 3
            "U+000A",
        ),
        (
            b"serial,model,shipped\nA,h100-sxm5-80gb,2026-01-01\nB,h100-sxm5-80gb,2026-01-01\nA,h100-sxm5-80gb,2026-01-02\n",
            "s.csv:4:serial",
            "listed twice (first on line 2)",
        ),
        (b'serial,model,shipped\n"A,h100-sxm5-80gb,2026-01-01\n', "s.csv:", "not valid CSV"),
        (b"serial,model,shipped\n\xff,h100-sxm5-80gb,2026-01-01\n", "s.csv", "not UTF-8"),
    ],
)
def test_each_bad_file_names_its_line_and_column(data: bytes, where: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        shipimport.parse_rows(data, "s.csv", default_catalogue())
    assert info.value.path.startswith(where), info.value
    assert reason in info.value.reason


def test_columns_in_any_order_and_one_shipment_per_model_and_date() -> None:
    data = (
        b"\xef\xbb\xbfshipped,serial,model\n2026-02-01,A,h100-sxm5-80gb\n"
        b"2026-03-01,B,l40-48gb\n2026-02-01,C,h100-sxm5-80gb\n"
    )
    rows = shipimport.parse_rows(data, "s.csv", default_catalogue())
    digest = shipimport.import_digest(data, "L", "S")
    made = shipimport.shipments(rows, "L", "S", digest)
    assert [(s["model"], s["shipped"], s["serials"]) for s in made] == [
        ("h100-sxm5-80gb", "2026-02-01", ["A", "C"]),
        ("l40-48gb", "2026-03-01", ["B"]),
    ]
    assert [s["id"] for s in made] == [f"csv-{digest[:16]}-1", f"csv-{digest[:16]}-2"]
    assert shipimport.import_digest(data, "L", "T") != digest  # another site, other ids


# -- the ledger -----------------------------------------------------------------------------------
def test_an_import_is_recorded_like_a_registry_edit(led: Ledger) -> None:
    before = registry_doc(led)
    assert run(led, GOOD) is True
    doc = registry_doc(led)
    shipments = doc["shipments"]
    assert isinstance(shipments, list)
    assert len(shipments) == 3
    assert shipments[:2] == before["shipments"]
    new = shipments[2]
    assert (new["licence"], new["site"], new["serials"]) == (
        "FAL-1",
        "falcon-auh-1",
        ["N-1", "N-2"],
    )
    kinds = log_kinds(led.settings.db_url)
    assert kinds == ["registry", "registry"]
    # The running ledger's view follows: the shipped serials count, and an observed one shows.
    led.ingest(
        Report.model_validate(
            report(node="n1", site="falcon-auh-1", devices=[device(0, "n1", serial="N-2")])
        )
    )
    fal1 = {x["licence"]: x for x in licences_for(led, ADMIN)["licences"]}["FAL-1"]
    assert (fal1["shipped"], fal1["observed"], fal1["observed_at_site"]) == (6, 1, 1)
    # The same file again: nothing recorded.
    assert run(led, GOOD) is False
    assert log_kinds(led.settings.db_url) == ["registry", "registry", "report"]
    assert registry_doc(led) == doc


def test_nothing_is_written_on_any_error(led: Ledger) -> None:
    before, kinds = registry_doc(led), log_kinds(led.settings.db_url)
    cases = [
        (GOOD, "NO-SUCH", "falcon-auh-1", "--licence"),
        (GOOD, "FAL-1", "nowhere", "--site"),
        # Sn10001 was shipped under FAL-1 already (shipment S-1), on line 3 here.
        (
            b"serial,model,shipped\nZ-1,h100-sxm5-80gb,2026-02-01\nSn10001,h100-sxm5-80gb,2026-02-01\n",
            "FAL-1",
            "falcon-auh-1",
            "s.csv:3:serial",
        ),
        (
            b"serial,model,shipped\nZ-1,h100-sxm5-80gb,2026-02-01\nZ-2,nope,2026-02-01\n",
            "FAL-1",
            "falcon-auh-1",
            "s.csv:3:model",
        ),
    ]
    for data, licence, site, path in cases:
        with pytest.raises(InputError) as info:
            run(led, data, licence, site)
        assert info.value.path == path, info.value
    assert registry_doc(led) == before
    assert log_kinds(led.settings.db_url) == kinds


def test_the_same_file_for_another_site_is_refused_as_shipped_already(led: Ledger) -> None:
    assert run(led, GOOD) is True
    with pytest.raises(InputError) as info:
        run(led, GOOD, site="falcon-auh-2")
    assert info.value.path == "s.csv:2:serial"
    assert "shipped already" in info.value.reason


# -- the command ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_command_records_and_events_list_it(led: Ledger, tmp_path: Path) -> None:
    url = led.settings.db_url
    led.integrator.run_once()
    path = tmp_path / "ships.csv"
    path.write_bytes(GOOD)
    done = gpucap(
        "shipments",
        "import",
        str(path),
        "--licence",
        "FAL-1",
        "--site",
        "falcon-auh-1",
        "--db",
        url,
    )
    assert done.returncode == 0, done.stderr
    assert "recorded 1 shipments" in done.stdout
    assert "2 serials" in done.stdout
    events = gpucap("ledger", "events", "--db", url, "--kind", "registry", "-o", "json")
    assert events.returncode == 0, events.stderr
    entries = json.loads(events.stdout)["entries"]
    assert [e["actor"] for e in entries] == ["registry-file", "shipments-import"]
    assert entries[1]["body"]["previous_digest"] is not None
    again = gpucap(
        "shipments",
        "import",
        str(path),
        "--licence",
        "FAL-1",
        "--site",
        "falcon-auh-1",
        "--db",
        url,
    )
    assert again.returncode == 0
    assert "imported already" in again.stdout
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"serial,model,shipped\nQ-1,h100-sxm5-80gb,2026-13-01\n")
    done = gpucap(
        "shipments", "import", str(bad), "--licence", "FAL-1", "--site", "falcon-auh-1", "--db", url
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"gpucap: error: {bad}:2:shipped: not a valid date: '2026-13-01'"
    ]
    missing = gpucap(
        "shipments",
        "import",
        str(tmp_path / "none.csv"),
        "--licence",
        "FAL-1",
        "--site",
        "x",
        "--db",
        url,
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    no_db = gpucap(
        "shipments",
        "import",
        str(path),
        "--licence",
        "FAL-1",
        "--site",
        "falcon-auh-1",
        "--db",
        f"sqlite:///{tmp_path / 'none.db'}",
    )
    assert no_db.returncode == 3
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            n = conn.execute(
                sa.text("SELECT count(*) FROM log_entry WHERE kind = 'registry'")
            ).scalar()
    finally:
        engine.dispose()
    assert n == 2
