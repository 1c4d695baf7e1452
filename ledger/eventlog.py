"""The tamper-evident event log: every accepted report, registry change and decommission.

Row n's hash is sha256 over the previous row's hash and the canonical encoding of row n's own
content (seq, recorded_at, kind, actor, sha256 of the body). The body is stored as the exact
canonical JSON bytes that were hashed. `verify_rows` is a pure walk: it names the first row whose
seq, link or hash is wrong, and compares the end of the chain with the head recorded in
`ledger_state` (which catches a deleted or appended tail row). What it cannot catch alone is a
rewrite of the whole chain *and* the head by someone with write access; record the printed head
hash elsewhere (a ticket, a second system) and compare it with `--expect-head` to close that gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.ledger.errors import ChainBrokenError
from gpucap.ledger.store import HotSql, bump
from gpucap.ledger.tables import table

GENESIS_HASH = "0" * 64
_INSERT = HotSql(
    "INSERT INTO event (seq, recorded_at, kind, actor, body, prev_hash, hash) "
    "VALUES (:seq, :recorded_at, :kind, :actor, :body, :prev_hash, :hash)"
)


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(seq: int, recorded_at: str, kind: str, actor: str, body: str, prev_hash: str) -> str:
    """The hash of one row given its content and its predecessor's hash (hex sha256)."""
    leaf = canonical(
        {
            "seq": seq,
            "recorded_at": recorded_at,
            "kind": kind,
            "actor": actor,
            "body_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        }
    )
    return hashlib.sha256(f"{prev_hash}\n{leaf}".encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """The end of the chain: number of rows and the last row's hash."""

    seq: int
    hash: str


def append(
    conn: Connection, head: Head, kind: str, actor: str, body: Any, recorded_at: str
) -> Head:
    """Append one event inside a write transaction (the caller holds the writer lock)."""
    seq = head.seq + 1
    text = canonical(body)
    digest = row_hash(seq, recorded_at, kind, actor, text, head.hash)
    _INSERT.run(
        conn,
        {
            "seq": seq,
            "recorded_at": recorded_at,
            "kind": kind,
            "actor": actor,
            "body": text,
            "prev_hash": head.hash,
            "hash": digest,
        },
    )
    bump(conn, head_seq=seq, head_hash=digest)
    return Head(seq, digest)


@dataclass(frozen=True)
class EventRow:
    seq: int
    recorded_at: str
    kind: str
    actor: str
    body: str
    prev_hash: str
    hash: str


def verify_rows(rows: Iterable[EventRow], recorded_head: Head) -> Head:
    """Walk the chain from genesis; raise ChainBrokenError at the first bad row, else its head."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for row in rows:
        if row.seq != expected_seq:
            if row.seq > expected_seq:
                raise ChainBrokenError(expected_seq, f"row missing (next row found is {row.seq})")
            raise ChainBrokenError(row.seq, "row out of order")
        if row.prev_hash != expected_prev:
            raise ChainBrokenError(row.seq, "prev_hash does not match the previous row's hash")
        actual = row_hash(row.seq, row.recorded_at, row.kind, row.actor, row.body, row.prev_hash)
        if actual != row.hash:
            raise ChainBrokenError(row.seq, "content does not match its hash (row altered)")
        expected_prev = row.hash
        expected_seq += 1
    last = Head(expected_seq - 1, expected_prev)
    if last.seq > recorded_head.seq:
        raise ChainBrokenError(recorded_head.seq + 1, "row beyond the recorded head (row inserted)")
    if last.seq < recorded_head.seq:
        raise ChainBrokenError(last.seq + 1, "rows missing before the recorded head (tail deleted)")
    if last.hash != recorded_head.hash:
        raise ChainBrokenError(last.seq, "last row's hash differs from the recorded head")
    return last


def read_rows(conn: Connection, batch: int = 5000) -> Iterable[EventRow]:
    """All event rows in seq order, fetched in batches (the log may be large)."""
    event_t = table("event")
    after = -(2**62)  # below any seq an inserted row could carry
    while True:
        rows = conn.execute(
            sa.select(event_t).where(event_t.c.seq > after).order_by(event_t.c.seq).limit(batch)
        ).all()
        if not rows:
            return
        for r in rows:
            yield EventRow(r.seq, r.recorded_at, r.kind, r.actor, r.body, r.prev_hash, r.hash)
        after = rows[-1].seq


def count_rows(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table("event"))).scalar_one())
