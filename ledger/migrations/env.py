"""Alembic environment: runs on the connection `store.migrate` hands over (never at import)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from gpucap.ledger import tables  # noqa: F401 (registers the tables on SQLModel.metadata)

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata)
with context.begin_transaction():
    context.run_migrations()
