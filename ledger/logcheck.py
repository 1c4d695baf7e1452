"""`gpucap ledger verify`: the stored log recomputed from its entries, with database access.

Level 0 is recomputed from the entries' leaf bytes, every higher level from the level below
(streamed in index order, so memory stays O(batch) at any size), and the root of the stored
tree must equal the signed checkpoint's; every kept checkpoint must verify and match the tree
at its size. The first problem is a LogBrokenError naming the entry, tree node or checkpoint:
an altered, deleted, inserted or reordered entry, an altered node, a forged signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.ledger import log, merkle, note
from gpucap.ledger.errors import LogBrokenError, VerificationError
from gpucap.ledger.store import Store
from gpucap.ledger.tables import table

_BATCH = 10000


@dataclass(frozen=True)
class Verified:
    size: int
    root: bytes
    checkpoints: int
    pending: int


def _stream(conn: Connection, query: Any, column: Any) -> Iterator[Any]:
    """Rows of `query` in `column` order, fetched in keyset pages."""
    after = -1
    while True:
        rows = conn.execute(query.where(column > after).order_by(column).limit(_BATCH)).all()
        yield from rows
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def verify_stored(store: Store, verifier: note.Verifier) -> Verified:
    entry_t, node_t, cp_t = table("log_entry"), table("tree_node"), table("checkpoint")
    with store.snapshot() as conn:
        current = log.tree(conn)
        signed = _open(current.note, verifier, "checkpoint (latest)")
        if (signed.size, signed.root) != (current.size, current.root):
            raise LogBrokenError("log_state", "the tree size or root differs from its checkpoint")
        size = signed.size
        leaves = _stream(
            conn,
            sa.select(entry_t.c.idx, entry_t.c.leaf).where(entry_t.c.idx.is_not(None)),
            entry_t.c.idx,
        )
        level0 = _stream(
            conn, sa.select(node_t.c.idx, node_t.c.hash).where(node_t.c.level == 0), node_t.c.idx
        )
        _check_level0(leaves, level0, size)
        for level in range(1, size.bit_length()):
            below = _stream(
                conn,
                sa.select(node_t.c.idx, node_t.c.hash).where(node_t.c.level == level - 1),
                node_t.c.idx,
            )
            here = _stream(
                conn,
                sa.select(node_t.c.idx, node_t.c.hash).where(node_t.c.level == level),
                node_t.c.idx,
            )
            _check_level(level, below, here, size >> level)
        stored: dict[int, int] = dict(
            conn.execute(sa.select(node_t.c.level, sa.func.count()).group_by(node_t.c.level)).all()
        )
        for level in sorted(set(stored) | set(range(size.bit_length()))):
            want = size >> level
            if stored.get(level, 0) != want:
                raise LogBrokenError(
                    f"tree_node[{level},{want}]",
                    f"{stored.get(level, 0)} nodes stored at level {level}, {want} in the "
                    "signed tree (node inserted beyond it)",
                )
        root = log.root_at(conn, size)
        if root != signed.root:
            raise LogBrokenError(
                f"entries[0:{size}]", "the recomputed root differs from the signed checkpoint's"
            )
        kept = 0
        for cp in conn.execute(sa.select(cp_t).order_by(cp_t.c.size)):
            checkpoint = _open(cp.note, verifier, f"checkpoint[{cp.size}]")
            if checkpoint.size != cp.size or checkpoint.root != bytes(cp.root):
                raise LogBrokenError(f"checkpoint[{cp.size}]", "row differs from its signed note")
            if cp.size > size or log.root_at(conn, cp.size) != checkpoint.root:
                raise LogBrokenError(
                    f"checkpoint[{cp.size}]", "the tree at this size differs from the checkpoint"
                )
            kept += 1
        pending = int(
            conn.execute(
                sa.select(sa.func.count()).select_from(entry_t).where(entry_t.c.idx.is_(None))
            ).scalar_one()
        )
    return Verified(size, root, kept, pending)


def _open(text: str, verifier: note.Verifier, where: str) -> note.Checkpoint:
    if not text:
        raise LogBrokenError(where, "no signed checkpoint yet (run gpucap ledger migrate)")
    try:
        return note.open_checkpoint(text, verifier)
    except VerificationError as exc:
        raise LogBrokenError(where, f"signature or format does not verify: {exc}") from None


def _check_level0(leaves: Iterator[Any], nodes: Iterator[Any], size: int) -> None:
    """Entries 0..size-1 each with its leaf hash at level 0, and nothing beyond."""
    for expected in range(size):
        entry, node = next(leaves, None), next(nodes, None)
        if entry is None or entry[0] != expected:
            raise LogBrokenError(f"entry[{expected}]", "missing (entry deleted or moved)")
        if node is None or node[0] != expected:
            raise LogBrokenError(f"tree_node[0,{expected}]", "missing")
        if merkle.leaf_hash(entry[1].encode("utf-8")) != bytes(node[1]):
            raise LogBrokenError(
                f"entry[{expected}]", "does not match its leaf hash (entry altered or reordered)"
            )
    extra = next(leaves, None)
    if extra is not None:
        raise LogBrokenError(f"entry[{extra[0]}]", "beyond the signed tree (entry inserted)")


def _check_level(level: int, below: Iterator[Any], here: Iterator[Any], count: int) -> None:
    for i in range(count):
        left, right, node = next(below, None), next(below, None), next(here, None)
        if node is None or node[0] != i:
            raise LogBrokenError(f"tree_node[{level},{i}]", "missing")
        if left is None or right is None or (left[0], right[0]) != (2 * i, 2 * i + 1):
            raise LogBrokenError(f"tree_node[{level - 1},{2 * i}]", "missing")
        if merkle.node_hash(bytes(left[1]), bytes(right[1])) != bytes(node[1]):
            raise LogBrokenError(
                f"tree_node[{level},{i}]", "does not match its children (node altered)"
            )
