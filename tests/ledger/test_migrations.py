"""The shipped Alembic migrations build exactly the schema the table definitions describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from gpucap.ledger import tables  # noqa: F401 (registers the tables on SQLModel.metadata)
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store


def test_migrations_match_the_table_definitions(db_url: str) -> None:
    store = Store.open(Settings(db_url=db_url))
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        store.close()
    assert diff == []


def test_migrating_twice_is_a_no_op(db_url: str) -> None:
    store = Store.open(Settings(db_url=db_url))
    try:
        first = store.migrate()
        assert store.migrate() == first
    finally:
        store.close()
