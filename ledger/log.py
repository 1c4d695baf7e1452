"""The transparency log: append, integrate, prove and sign (docs/log.md has the formats).

An entry is appended inside the transaction that changes what it records, as a pending row
(`log_entry.idx` NULL) keyed by the database's own sequence: appending takes no ledger-wide lock,
and an entry exists exactly when its change committed. The integrator (one at a time across
processes: it locks `log_state`) gives pending entries the next leaf indices in arrival order,
stores the hash of every perfect subtree that completes (`tree_node`), and signs a C2SP
checkpoint of the new tree, all in one transaction, so a crash between acknowledging an entry
and integrating it loses nothing: the entry stays pending until the next integration.

A leaf is the exact UTF-8 bytes of `log_entry.leaf`: canonical JSON (keys sorted, no spaces,
non-ASCII kept) of `{"actor", "body", "kind", "recorded_at"}`; entries migrated from the old
hash chain also carry `"chain": {"hash", "seq"}`. Verifiers hash the bytes as stored or served
and never re-serialise them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from gpucap.core.errors import InputError
from gpucap.ledger import merkle, note
from gpucap.ledger.errors import LogBrokenError
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import HotSql, Store
from gpucap.ledger.tables import table

KINDS = (
    "registry",
    "report",
    "presence",
    "decommission",
    "token_issued",
    "token_revoked",
)
MAX_ENTRIES_PER_READ = 1000  # GET /v1/log/entries
_INTEGRATE_BATCH = 20000  # entries per integration transaction
_PROOFS_ONE_BY_ONE = 256  # more inclusion proofs than this are made from one read of the tree

_APPEND = HotSql(
    "INSERT INTO log_entry (kind, recorded_at, leaf) VALUES (:kind, :recorded_at, :leaf)"
)
_PENDING = HotSql(
    "SELECT id, leaf FROM log_entry WHERE idx IS NULL ORDER BY id LIMIT :limit",
)
_ANY_PENDING = HotSql("SELECT 1 FROM log_entry WHERE idx IS NULL LIMIT 1")
_RECORDED_AT = HotSql("SELECT recorded_at FROM log_entry WHERE idx = :idx")
_PENDING_COUNT = HotSql("SELECT count(*) FROM log_entry WHERE idx IS NULL")
_OLDEST_PENDING = HotSql("SELECT min(recorded_at) FROM log_entry WHERE idx IS NULL")
_SET_IDX = HotSql("UPDATE log_entry SET idx = :idx WHERE id = :id AND idx IS NULL")
_INSERT_NODE = HotSql("INSERT INTO tree_node (level, idx, hash) VALUES (:level, :idx, :hash)")
_STATE = HotSql(
    "SELECT size, root, note, signed_at, ledger_id, key_pem FROM log_state WHERE id = 1"
)
_LOCK_STATE = HotSql("SELECT size FROM log_state WHERE id = 1 FOR UPDATE")
_SET_STATE = HotSql(
    "UPDATE log_state SET size = :size, root = :root, note = :note, signed_at = :signed_at "
    "WHERE id = 1"
)
_LAST_KEPT = HotSql("SELECT max(signed_at) FROM checkpoint")
_KEEP = HotSql(
    "INSERT INTO checkpoint (size, root, note, signed_at) VALUES (:size, :root, :note, :signed_at)"
)


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def leaf_text(kind: str, actor: str, body: Any, recorded_at: str) -> str:
    """The leaf of one entry, as text (its UTF-8 encoding is what is hashed)."""
    return canonical({"actor": actor, "body": body, "kind": kind, "recorded_at": recorded_at})


def append(conn: Connection, kind: str, actor: str, body: Any, recorded_at: str) -> None:
    """Append one entry inside the caller's write transaction (pending until integrated)."""
    assert kind in KINDS, kind
    leaf = leaf_text(kind, actor, body, recorded_at)
    _APPEND.run(conn, {"kind": kind, "recorded_at": recorded_at, "leaf": leaf})


@dataclass(frozen=True)
class Signer:
    """The log's origin (also its key name) and Ed25519 signing key."""

    origin: str
    key: Ed25519PrivateKey

    @property
    def verifier_key(self) -> str:
        return note.verifier_key(self.origin, self.key.public_key())

    def sign(self, size: int, root: bytes) -> str:
        return note.sign_checkpoint(self.origin, size, root, self.origin, self.key)


def load_signer(store: Store, origin: str | None, key_file: Path | None) -> Signer:
    """The signer every process on one database shares: the key kept in the database (or
    `key_file`), the origin given (or `gpucap-ledger/<ledger id>`)."""
    with store.read() as conn:
        state = _STATE.one(conn)
    signed_note, ledger_id, key_pem = state[2], state[4], state[5]
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError("GPUCAP_LOG_KEY_FILE", f"cannot read {key_file}: {exc}") from None
        key = note.load_private_key_pem(text, "GPUCAP_LOG_KEY_FILE")
    else:
        key = note.load_private_key_pem(key_pem, "log_state.key_pem")
    # A log's origin is fixed once it has signed: take it from the newest checkpoint, so that an
    # admin command run without the server's GPUCAP_LOG_ORIGIN still verifies and signs alike.
    signed_origin = signed_note.split("\n", 1)[0] if signed_note else None
    if origin is not None and signed_origin is not None and origin != signed_origin:
        raise InputError(
            "GPUCAP_LOG_ORIGIN",
            f"the log was signed as {signed_origin!r}; its origin cannot change to {origin!r}",
        )
    return Signer(signed_origin or origin or f"gpucap-ledger/{ledger_id}", key)


@dataclass(frozen=True)
class Tree:
    """The integrated tree: size, root and the newest signed checkpoint over it."""

    size: int
    root: bytes
    note: str
    signed_at: str


def tree(conn: Connection) -> Tree:
    row = _STATE.one(conn)
    return Tree(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]))


def has_pending(conn: Connection) -> bool:
    return _ANY_PENDING.one(conn) is not None


def pending_count(conn: Connection) -> int:
    """Entries appended and not yet integrated (few: they are signed within seconds)."""
    return int(_PENDING_COUNT.one(conn)[0])


def oldest_pending(conn: Connection) -> str | None:
    """`recorded_at` of the oldest entry not yet integrated, or None when all are signed."""
    row = _OLDEST_PENDING.one(conn)
    return None if row is None or row[0] is None else str(row[0])


def integrate(store: Store, signer: Signer, now: datetime, keep_s: float) -> int:
    """Integrate every pending entry and sign the new tree; the number integrated.

    A checkpoint is also kept in `checkpoint` when the newest kept one is older than `keep_s`
    (the latest is always in `log_state`). The first call on a new log signs the empty tree.
    """
    total = 0
    while True:
        with store.write() as conn:
            if not store.is_sqlite:
                _LOCK_STATE.one(conn)  # one integrator at a time, across processes
            current = tree(conn)
            pending = _PENDING.all(conn, {"limit": _INTEGRATE_BATCH})
            if not pending and current.note:
                return total
            size, root = _extend(conn, current.size, pending)
            signed_at = iso_instant(now)
            text = signer.sign(size, root)
            values = {"size": size, "root": root, "note": text, "signed_at": signed_at}
            _SET_STATE.run(conn, values)
            last = _LAST_KEPT.one(conn)[0]
            if last is None or last < iso_instant(now - timedelta(seconds=keep_s)):
                _KEEP.run(conn, values)
        total += len(pending)
        if len(pending) < _INTEGRATE_BATCH:
            return total


def _extend(conn: Connection, size: int, pending: Sequence[Any]) -> tuple[int, bytes]:
    """Give `pending` (id, leaf) rows the next indices and store the completed subtrees."""
    frontier = _frontier(conn, size)
    leaves = [merkle.leaf_hash(leaf.encode("utf-8")) for _id, leaf in pending]
    nodes, frontier, new_size = merkle.append(frontier, size, leaves)
    for offset, (entry_id, _leaf) in enumerate(pending):
        if _SET_IDX.run(conn, {"idx": size + offset, "id": entry_id}) != 1:
            raise RuntimeError(f"log_entry {entry_id} was integrated by someone else")
    if nodes:
        _INSERT_NODE.many(conn, [{"level": n.level, "idx": n.index, "hash": n.hash} for n in nodes])
    return new_size, merkle.root_from_frontier(frontier)


def _frontier(conn: Connection, size: int) -> list[merkle.Node]:
    wanted = merkle.frontier_nodes(size)
    found = read_nodes(conn, wanted)
    return [merkle.Node(lv, i, found[(lv, i)]) for lv, i in wanted]


def read_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored hashes of the given (level, index) perfect subtrees, in one query."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    # An OR of key equalities, not a row-value IN: SQLite answers the IN with a full scan
    # (seconds at 10,000,000 entries), the ORs with one index search each. The statement text
    # is built once per number of keys (a proof needs about 2 log2 n of them).
    params = {f"l{k}": lv for k, (lv, _i) in enumerate(wanted)}
    params.update({f"i{k}": i for k, (_lv, i) in enumerate(wanted)})
    rows = _nodes_statement(len(wanted)).all(conn, params)
    found = {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}
    missing = [k for k in wanted if k not in found]
    if missing:
        level, idx = missing[0]
        raise LogBrokenError(f"tree_node[{level},{idx}]", "missing from the stored tree")
    return found


@functools.lru_cache(maxsize=256)
def _nodes_statement(n: int) -> HotSql:
    terms = " OR ".join(f"(level = :l{k} AND idx = :i{k})" for k in range(n))
    return HotSql(f"SELECT level, idx, hash FROM tree_node WHERE {terms}")  # noqa: S608 (no input)


def recorded_at(conn: Connection, index: int) -> str:
    """`recorded_at` of integrated entry `index`."""
    return str(_RECORDED_AT.one(conn, {"idx": index})[0])


def entries_page(
    conn: Connection, start: int, end: int, kind: str | None, limit: int
) -> list[tuple[int, str]]:
    """Up to `limit` integrated entries with start <= index < end (of one kind), in order."""
    t = table("log_entry")
    select = sa.select(t.c.idx, t.c.leaf).where(t.c.idx >= start, t.c.idx < end)
    if kind is not None:
        select = select.where(t.c.kind == kind)
    rows = conn.execute(select.order_by(t.c.idx).limit(limit)).all()
    return [(int(r[0]), str(r[1])) for r in rows]


def entries(conn: Connection, start: int, end: int) -> list[tuple[int, str]]:
    """Integrated entries with start <= index < end, as (index, leaf text)."""
    t = table("log_entry")
    rows = conn.execute(
        sa.select(t.c.idx, t.c.leaf).where(t.c.idx >= start, t.c.idx < end).order_by(t.c.idx)
    ).all()
    return [(int(r[0]), str(r[1])) for r in rows]


def inclusion(conn: Connection, index: int, size: int) -> tuple[bytes, list[bytes]]:
    """(leaf hash, audit path) of leaf `index` in the tree of `size` (0 <= index < size)."""
    found = read_nodes(conn, [(0, index), *merkle.inclusion_nodes(index, size)])
    return found[(0, index)], merkle.inclusion_proof(index, size, found)


def inclusions(
    conn: Connection, indices: Sequence[int], size: int
) -> Iterator[tuple[int, bytes, list[bytes]]]:
    """(index, leaf hash, audit path) of many leaves in the tree of `size`: one query per leaf
    for a few, one read of the whole stored tree for many (an evidence bundle's entries)."""
    if len(indices) <= _PROOFS_ONE_BY_ONE:
        for index in indices:
            yield (index, *inclusion(conn, index, size))
        return
    t = table("tree_node")
    rows = conn.execute(sa.select(t.c.level, t.c.idx, t.c.hash))
    found = {(int(level), int(idx)): bytes(h) for level, idx, h in rows}
    for index in indices:
        if (0, index) not in found:
            raise LogBrokenError(f"tree_node[0,{index}]", "missing from the stored tree")
        yield index, found[(0, index)], merkle.inclusion_proof(index, size, found)


def consistency(conn: Connection, first: int, second: int) -> list[bytes]:
    """The consistency proof from the tree of `first` leaves to the tree of `second` (empty
    when `first` is 0 or equals `second`: RFC 9162 needs no hashes then)."""
    if first == 0 or first == second:
        return []
    found = read_nodes(conn, merkle.consistency_nodes(first, second))
    return merkle.consistency_proof(first, second, found)


def root_at(conn: Connection, size: int) -> bytes:
    """The root of the tree of `size` leaves, from the stored perfect subtrees."""
    return merkle.root_from_frontier(_frontier(conn, size))


def in_order(conn: Connection, batch: int = 2000) -> Iterator[tuple[str, str]]:
    """(where, leaf text) of every entry: integrated ones by index, then pending ones by
    arrival (the order a replay applies them in), fetched in pages."""
    t = table("log_entry")
    after = -1
    while True:
        rows = conn.execute(
            sa.select(t.c.idx, t.c.leaf).where(t.c.idx > after).order_by(t.c.idx).limit(batch)
        ).all()
        for idx, leaf in rows:
            yield f"entry[{idx}]", leaf
        if len(rows) < batch:
            break
        after = rows[-1][0]
    pending = conn.execute(
        sa.select(t.c.id, t.c.leaf).where(t.c.idx.is_(None)).order_by(t.c.id)
    ).all()  # few: they are signed within seconds; fetched whole before the caller writes
    for entry_id, leaf in pending:
        yield f"pending entry (id {entry_id})", leaf


def leaves_of_kind(conn: Connection, kind: str) -> list[str]:
    """The leaf text of every entry of `kind`, integrated or pending, in arrival order."""
    t = table("log_entry")
    rows = conn.execute(sa.select(t.c.leaf).where(t.c.kind == kind).order_by(t.c.id))
    return [str(leaf) for (leaf,) in rows]


def _pages(conn: Connection, query: Any, column: Any, batch: int) -> Iterator[Any]:
    """Rows of `query` in `column` order, fetched in keyset pages of `batch`."""
    after = -1
    while True:
        rows = conn.execute(query.where(column > after).order_by(column).limit(batch)).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1][0]


def integrated_leaves(conn: Connection, batch: int) -> Iterator[tuple[int, str]]:
    """(index, leaf text) of every integrated entry by index, fetched in pages of `batch`
    (memory stays O(batch) at any size)."""
    t = table("log_entry")
    query = sa.select(t.c.idx, t.c.leaf).where(t.c.idx.is_not(None))
    for idx, leaf in _pages(conn, query, t.c.idx, batch):
        yield int(idx), str(leaf)


def level_nodes(conn: Connection, level: int, batch: int) -> Iterator[tuple[int, bytes]]:
    """(index, hash) of every stored node at `level` by index, fetched in pages of `batch`."""
    t = table("tree_node")
    query = sa.select(t.c.idx, t.c.hash).where(t.c.level == level)
    for idx, h in _pages(conn, query, t.c.idx, batch):
        yield int(idx), bytes(h)


def nodes_per_level(conn: Connection) -> dict[int, int]:
    """level -> stored nodes at it (a tree of n leaves has n >> level)."""
    t = table("tree_node")
    rows = conn.execute(sa.select(t.c.level, sa.func.count()).group_by(t.c.level)).all()
    return {int(level): int(n) for level, n in rows}


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint kept for history (a `checkpoint` row)."""

    size: int
    root: bytes
    note: str
    signed_at: str


def kept_checkpoints(conn: Connection) -> list[KeptCheckpoint]:
    """Every kept checkpoint, smallest tree first (few: at most one per `checkpoint_keep_s`)."""
    t = table("checkpoint")
    rows = conn.execute(sa.select(t).order_by(t.c.size))
    return [KeptCheckpoint(int(r.size), bytes(r.root), str(r.note), str(r.signed_at)) for r in rows]
