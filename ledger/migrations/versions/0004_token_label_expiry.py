"""Tokens gain an optional expiry (also in their signed claims) and a label; existing tokens get
neither and keep working unchanged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("token") as batch:
        batch.add_column(sa.Column("expires_at", sa.String(), nullable=True))
        batch.add_column(sa.Column("label", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("token") as batch:
        batch.drop_column("label")
        batch.drop_column("expires_at")
