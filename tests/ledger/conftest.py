"""Fixtures: every storage test runs on a SQLite file and on a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpucap.core.catalogue import default_catalogue
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, Clock, at, pg_base_url, pg_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    base = pg_base_url()
    assert base is not None
    with pg_schema_url(base) as url:
        yield url


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock(at("2025-09-01T10:00:00"))


@pytest.fixture
def ledger(db_url: str, registry_file: Path, clock: Clock) -> Iterator[Ledger]:
    settings = Settings(
        db_url=db_url,
        clock=clock,
        revocation_ttl_s=0,
        sqlite_synchronous="NORMAL",
        report_interval_s=300,  # the tests' timelines assume 5-minute reports
    )
    store = Store.open(settings)
    led = Ledger(settings, store, default_catalogue())
    led.load_registry_file(registry_file)
    yield led
    led.stop()
    store.close()
