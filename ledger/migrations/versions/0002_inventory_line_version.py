"""Inventory lines carry the projection version that last wrote them (indexed), so that readers
can read only what changed; lines whose count reaches 0 are kept from now on (tombstones).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get version 0: older than any version a reader can hold.
    with op.batch_alter_table("inventory_line") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_inventory_line_version", "inventory_line", ["version"])


def downgrade() -> None:
    op.drop_index("ix_inventory_line_version", table_name="inventory_line")
    with op.batch_alter_table("inventory_line") as batch:
        batch.drop_column("version")
    op.execute("DELETE FROM inventory_line WHERE count <= 0")
