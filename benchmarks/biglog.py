"""A transparency log of millions of entries in the real schema, built in minutes (log_bench).

`Store.open` migrates a SQLite file; leaf 0 is a real entry (an operator token) integrated by
`log.integrate`; the other leaves are synthetic leaf hashes whose perfect subtrees
`merkle.append` computes, written to `tree_node` in one transaction with the matching
`log_state` and a checkpoint signed with the ledger's key. There are no `log_entry` rows beyond
leaf 0: proofs, roots and integration read only `tree_node` and `log_state` (so `gpucap ledger
verify` would report the missing entries).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gpucap.ledger import log, merkle, tokens
from gpucap.ledger.settings import Settings, iso_instant
from gpucap.ledger.store import Store

_FILL_CHUNK = 1 << 20  # leaves per merkle.append call and executemany


def schema_key() -> str:
    """A digest of the schema the migrations create now, so that a cached log built by an
    older migration is not reused."""
    with tempfile.TemporaryDirectory() as tmp:
        Store.open(Settings(db_url=f"sqlite:///{tmp}/schema.db")).close()
        with sqlite3.connect(f"{tmp}/schema.db") as db:
            rows = db.execute("SELECT coalesce(sql, '') FROM sqlite_master ORDER BY name")
            text = "\n".join(r[0] for r in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_log(entries: int, cache_dir: Path) -> tuple[Path, str]:
    """The log file of `entries` leaves and an operator token for it, built once per size and
    schema in `cache_dir`."""
    path = cache_dir / f"gpucap-log-bench-{entries}-{schema_key()}.db"
    token_file = path.with_suffix(".token")
    if path.exists() and token_file.exists():
        return path, token_file.read_text(encoding="utf-8").strip()
    t0 = time.perf_counter()
    building = path.with_suffix(".building")
    for stale in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        stale.unlink(missing_ok=True)
    settings = Settings(db_url=f"sqlite:///{building}", sqlite_synchronous="OFF")
    store = Store.open(settings)
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    try:
        _id, token = tokens.issue(store, "operator", start, None, operator="bench")
        signer = log.load_signer(store, None, None)
        log.integrate(store, signer, start, 60)  # leaf 0: a real entry, integrated for real
        with store.read() as conn:
            leaf0 = log.read_nodes(conn, [(0, 0)])[(0, 0)]
    finally:
        store.close()
    frontier, size = [merkle.Node(0, 0, leaf0)], 1
    db = sqlite3.connect(building, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")  # a fresh file: no WAL needed to fill it
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-400000")
        db.execute("BEGIN")
        while size < entries:
            end = min(entries, size + _FILL_CHUNK)
            leaves = [merkle.leaf_hash(b"synthetic entry %d" % i) for i in range(size, end)]
            nodes, frontier, size = merkle.append(frontier, size, leaves)
            db.executemany(
                "INSERT INTO tree_node (level, idx, hash) VALUES (?, ?, ?)",
                [(n.level, n.index, n.hash) for n in nodes],
            )
        root = merkle.root_from_frontier(frontier)
        db.execute(
            "UPDATE log_state SET size = ?, root = ?, note = ?, signed_at = ? WHERE id = 1",
            (size, root, signer.sign(size, root), iso_instant(start)),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
    os.replace(building, path)
    Path(f"{building}-writer.lock").unlink(missing_ok=True)  # Store's lock file for the old name
    token_file.write_text(token + "\n", encoding="utf-8")
    print(
        f"  built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s"
    )
    return path, token
