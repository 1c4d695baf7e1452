"""`gpucap ledger verify`: the stored log recomputed from its entries, with database access.

Level 0 is recomputed from the entries' leaf bytes, every higher level from the level below
(streamed in index order, so memory stays O(batch) at any size), and the root of the stored
tree must equal the signed checkpoint's; every kept checkpoint must verify and match the tree
at its size. The first problem is a LogBrokenError naming the entry, tree node or checkpoint:
an altered, deleted, inserted or reordered entry, an altered node, a forged signature. The
rows are read through `log`, which owns the log's tables; this module only checks them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gpucap.ledger import log, merkle, note
from gpucap.ledger.errors import LogBrokenError, VerificationError
from gpucap.ledger.store import Store

_BATCH = 10000


@dataclass(frozen=True)
class Verified:
    size: int
    root: bytes
    checkpoints: int
    pending: int


def verify_stored(store: Store, verifier: note.Verifier) -> Verified:
    with store.snapshot() as conn:
        current = log.tree(conn)
        signed = _open(current.note, verifier, "checkpoint (latest)")
        if (signed.size, signed.root) != (current.size, current.root):
            raise LogBrokenError("log_state", "the tree size or root differs from its checkpoint")
        size = signed.size
        leaves = log.integrated_leaves(conn, _BATCH)
        level0 = log.level_nodes(conn, 0, _BATCH)
        _check_level0(leaves, level0, size)
        for level in range(1, size.bit_length()):
            below = log.level_nodes(conn, level - 1, _BATCH)
            here = log.level_nodes(conn, level, _BATCH)
            _check_level(level, below, here, size >> level)
        stored = log.nodes_per_level(conn)
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
        for cp in log.kept_checkpoints(conn):
            checkpoint = _open(cp.note, verifier, f"checkpoint[{cp.size}]")
            if checkpoint.size != cp.size or checkpoint.root != bytes(cp.root):
                raise LogBrokenError(f"checkpoint[{cp.size}]", "row differs from its signed note")
            if cp.size > size or log.root_at(conn, cp.size) != checkpoint.root:
                raise LogBrokenError(
                    f"checkpoint[{cp.size}]", "the tree at this size differs from the checkpoint"
                )
            kept += 1
        pending = log.pending_count(conn)
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
