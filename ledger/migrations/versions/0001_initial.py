"""The initial ledger schema: state, event log, projections, registry and tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        "ledger_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(), nullable=False),
        sa.Column("projection_version", sa.BigInteger(), nullable=False),
        sa.Column("auth_version", sa.BigInteger(), nullable=False),
        sa.Column("token_key", sa.String(), nullable=False),
    )
    op.create_table(
        "event",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("recorded_at", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
    )
    op.create_table(
        "node",
        sa.Column("node_id", sa.String(), primary_key=True),
        sa.Column("site_id", sa.String(), nullable=False, index=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.String(), nullable=False),
        sa.Column("last_seen", sa.String(), nullable=False),
        sa.Column("devices_digest", sa.String(), nullable=False),
        sa.Column("decommissioned_on", sa.String(), nullable=True),
        sa.Column("agent_version", sa.String(), nullable=False),
    )
    op.create_table(
        "device",
        sa.Column("node_id", sa.String(), primary_key=True),
        sa.Column("uuid", sa.String(), primary_key=True, index=True),
        sa.Column("site_id", sa.String(), nullable=False, index=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("pci_device_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("tpp", sa.BigInteger(), nullable=True),
        sa.Column("eccn_class", sa.String(), nullable=True),
        sa.Column("agent_tpp", sa.Float(), nullable=True),
        sa.Column("tpp_mismatch", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("first_seen", sa.String(), nullable=False),
        sa.Column("gone_on", sa.String(), nullable=True),
        sa.Column("vanished", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "inventory_line",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("site_id", sa.String(), nullable=False, index=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("tpp", sa.BigInteger(), nullable=False),
        sa.Column("eccn_class", sa.String(), nullable=False),
        sa.Column("installed", sa.String(), nullable=False),
        sa.Column("removed", sa.String(), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "registry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(), nullable=False),
        sa.Column("loaded_at", sa.String(), nullable=False),
    )
    op.create_table(
        "token",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=True),
        sa.Column("site_id", sa.String(), nullable=True),
        sa.Column("operator", sa.String(), nullable=True),
        sa.Column("entity", sa.String(), nullable=True),
        sa.Column("token_sha256", sa.String(), nullable=False),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("revoked_at", sa.String(), nullable=True),
    )
    op.bulk_insert(
        state,
        [
            {
                "id": 1,
                "head_seq": 0,
                "head_hash": "0" * 64,
                "projection_version": 0,
                "auth_version": 0,
                "token_key": secrets.token_hex(32),
            }
        ],
    )


def downgrade() -> None:
    for name in ("token", "registry", "inventory_line", "device", "node", "event", "ledger_state"):
        op.drop_table(name)
