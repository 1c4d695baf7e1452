"""The hash-chained `event` table becomes the first leaves of a Merkle transparency log.

The old chain is verified first, with the rule it was written under (row n's hash is
sha256(prev_hash "\\n" canonical{seq, recorded_at, kind, actor, body_sha256})); a broken chain
refuses the migration naming the first bad row, and nothing changes. Each event then becomes
one pending `log_entry`, in seq order, whose leaf also records the old seq and hash
(`"chain": {"seq", "hash"}`), so that a head recorded with `verify --expect-head` stays
checkable. The ledger integrates them into the tree and signs the first checkpoint when it
next runs (`gpucap ledger migrate` does it at once). Nodes gain `presence_day` (and, on
PostgreSQL, room on each page for in-place heartbeat updates); the log's Ed25519 signing key and
the ledger's id are generated here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import sqlalchemy as sa
from alembic import op
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpucap.ledger.errors import LogBrokenError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_GENESIS = "0" * 64
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _old_hash(row: Any, prev: str) -> str:
    leaf = _canonical(
        {
            "seq": row.seq,
            "recorded_at": row.recorded_at,
            "kind": row.kind,
            "actor": row.actor,
            "body_sha256": hashlib.sha256(row.body.encode("utf-8")).hexdigest(),
        }
    )
    return hashlib.sha256(f"{prev}\n{leaf}".encode()).hexdigest()


def _verified_events(conn: Any) -> list[Any]:
    """Every event row in order, after checking the chain and the recorded head."""
    rows = conn.execute(
        sa.text(
            "SELECT seq, recorded_at, kind, actor, body, prev_hash, hash FROM event ORDER BY seq"
        )
    ).all()
    head_seq, head_hash = conn.execute(
        sa.text("SELECT head_seq, head_hash FROM ledger_state WHERE id = 1")
    ).one()
    prev, expected = _GENESIS, 1

    def broken(seq: int, reason: str) -> LogBrokenError:
        return LogBrokenError(f"event[{seq}]", f"{reason}; the log was not migrated")

    for row in rows:
        if row.seq != expected:
            raise broken(expected, f"row missing or out of order (found {row.seq})")
        if row.prev_hash != prev:
            raise broken(row.seq, "prev_hash does not match the previous row's hash")
        if _old_hash(row, row.prev_hash) != row.hash:
            raise broken(row.seq, "content does not match its hash (row altered)")
        prev, expected = row.hash, expected + 1
    if expected - 1 != head_seq or prev != head_hash:
        raise broken(min(expected, head_seq + 1), "the chain does not end at the recorded head")
    return list(rows)


def upgrade() -> None:
    conn = op.get_bind()
    events = _verified_events(conn)
    entry = op.create_table(
        "log_entry",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("idx", sa.BigInteger(), nullable=True, unique=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("recorded_at", sa.String(), nullable=False),
        sa.Column("leaf", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_log_entry_pending",
        "log_entry",
        ["id"],
        sqlite_where=sa.text("idx IS NULL"),
        postgresql_where=sa.text("idx IS NULL"),
    )
    op.create_table(
        "tree_node",
        sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "checkpoint",
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.String(), nullable=False),
    )
    state = op.create_table(
        "log_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.String(), nullable=False),
        sa.Column("ledger_id", sa.String(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
    )
    key_pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    op.bulk_insert(
        state,
        [
            {
                "id": 1,
                "size": 0,
                "root": hashlib.sha256(b"").digest(),
                "note": "",
                "signed_at": "",
                "ledger_id": secrets.token_hex(8),
                "key_pem": key_pem,
            }
        ],
    )
    if events:
        op.bulk_insert(
            entry,
            [
                {
                    "kind": row.kind,
                    "recorded_at": row.recorded_at,
                    "leaf": _canonical(
                        {
                            "actor": row.actor,
                            "body": json.loads(row.body),
                            "chain": {"hash": row.hash, "seq": row.seq},
                            "kind": row.kind,
                            "recorded_at": row.recorded_at,
                        }
                    ),
                }
                for row in events
            ],
        )
    op.drop_table("event")
    with op.batch_alter_table("ledger_state") as batch:
        batch.drop_column("head_seq")
        batch.drop_column("head_hash")
    with op.batch_alter_table("node") as batch:
        batch.add_column(sa.Column("presence_day", sa.String(), nullable=False, server_default=""))
    if conn.dialect.name == "postgresql":
        # Heartbeats rewrite node rows all day without touching an indexed column: free space on
        # each page lets PostgreSQL update them in place (HOT), without new index entries.
        op.execute("ALTER TABLE node SET (fillfactor = 50)")


def downgrade() -> None:
    raise NotImplementedError("the transparency log cannot be turned back into the old chain")
