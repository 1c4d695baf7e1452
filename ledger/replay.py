"""The projections as a pure consequence of the log: rebuild them, or check them.

`rebuild` drops `node`, `device` and `registry`, zeroes `inventory_line`, and replays every entry
(integrated ones by index, then pending ones by arrival) in one transaction. Heartbeats are not
in the log, so a node's liveness (`last_seq`, `last_seen`) is kept where the live row is ahead
of the replay. `compare` replays the log into a scratch database and names the first projection
row that differs from it (`gpucap ledger verify --projections`). Every row is read and written
through `db` and `log`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Connection

from gpucap.core.catalogue import Catalogue
from gpucap.ledger import db, ingest, log
from gpucap.ledger.errors import LedgerError, LogBrokenError
from gpucap.ledger.models import Report, loc_path
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store

# The projection tables an auditor's replay must reproduce, with their key columns, and the
# columns that are liveness rather than history (the live value may only be ahead).
_COMPARED = {
    "registry": ("digest",),
    "node": ("node_id",),
    "device": ("node_id", "uuid"),
    "inventory_line": ("key",),
}
_LIVENESS = {"last_seq", "last_seen", "agent_version", "presence_day"}
_IGNORED = {"version"}  # which version wrote a line is bookkeeping, not history


def apply_entry(txn: ingest.Txn, where: str, leaf: str, catalogue: Catalogue) -> None:
    """Fold one log entry into the projections (the same folds as the live write path)."""
    entry = json.loads(leaf)
    kind, body, recorded_at = entry["kind"], entry["body"], entry["recorded_at"]
    if kind == "registry":
        ingest.apply_registry(txn, body["doc"], body["origin"], recorded_at)
    elif kind == "report":
        report = _recorded_report(where, body)
        p = ingest.prepare(report, catalogue)
        node = db.node_for_update(txn.conn, report.node_id, lock=False)
        _set_node(txn.conn, report.node_id, report.site_id, report.seq, recorded_at)
        db.set_node(txn.conn, report.node_id, agent_version=report.agent_version)
        if node is not None and node.devices_digest == p.digest:
            return  # a heartbeat the hash-chain version logged: it changed no device row
        db.set_node(txn.conn, report.node_id, devices_digest=p.digest)
        day = recorded_at[:10]
        ingest.apply_devices(
            txn,
            report.node_id,
            report.site_id,
            p.facts,
            day,
            txn.shipped(),
            existing=node is not None,
        )
    elif kind == "presence":
        _set_node(txn.conn, body["node_id"], body["site_id"], body["seq"], recorded_at)
    elif kind == "decommission":
        ingest.apply_decommission(txn, body["node_id"], body["on"])


def _recorded_report(where: str, body: Any) -> Report:
    """A report entry's body as a Report; a body today's model refuses (one accepted by an
    older, laxer ledger) is one error naming the entry and field, and nothing is rebuilt."""
    try:
        return Report.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LedgerError(
            where, f"report no longer valid: {loc_path(first['loc'])}: {first['msg']}"
        ) from None


def _set_node(conn: Connection, node_id: str, site_id: str, seq: int, at: str) -> bool:
    """Advance (or create) a node's row from an entry; True if it existed."""
    values = {"last_seq": seq, "last_seen": at, "presence_day": at[:10]}
    if not db.node_exists(conn, node_id):
        db.new_node(conn, node_id, site_id, at, **values)
        return False
    db.set_node(conn, node_id, **values)
    return True


def rebuild(store: Store, catalogue: Catalogue) -> int:
    """Drop every projection and replay the log into it; returns the entries replayed."""
    n = 0
    with ingest.transaction(store) as txn:
        conn = txn.conn
        live = db.liveness(conn)
        db.clear_projections(conn, txn.new_version())
        for where, leaf in log.in_order(conn):
            apply_entry(txn, where, leaf, catalogue)
            n += 1
        for node_id, (last_seq, _seen, _version) in db.liveness(conn).items():
            old = live.get(node_id)
            if old is not None and old[0] > last_seq:
                db.set_node(conn, node_id, last_seq=old[0], last_seen=old[1], agent_version=old[2])
    return n


def compare(store: Store, catalogue: Catalogue) -> int:
    """Replay the log into a scratch database and compare; LogBrokenError names the first
    projection row that differs. Returns the entries replayed."""
    with tempfile.TemporaryDirectory(prefix="gpucap-verify-") as tmp:
        scratch = Store.open(Settings(db_url=f"sqlite:///{Path(tmp) / 'replay.db'}"))
        try:
            n = 0
            # One snapshot for the replay and the comparison: a serving ledger's later writes
            # are neither replayed nor compared.
            with store.snapshot() as live:
                with ingest.transaction(scratch) as txn:
                    for where, leaf in log.in_order(live):
                        apply_entry(txn, where, leaf, catalogue)
                        n += 1
                with scratch.read() as replayed:
                    for name, keys in _COMPARED.items():
                        _compare_table(name, keys, live, replayed)
        finally:
            scratch.close()
    return n


def _rows(
    conn: Connection, name: str, keys: tuple[str, ...]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for r in db.projection_rows(conn, name):
        row = {k: v for k, v in r.items() if k not in _IGNORED}
        out[tuple(row[k] for k in keys)] = row
    return out


def _compare_table(
    name: str, keys: tuple[str, ...], live: Connection, replayed: Connection
) -> None:
    have, want = _rows(live, name, keys), _rows(replayed, name, keys)
    for key in sorted(set(have) | set(want), key=str):
        where = f"{name}[{'/'.join(map(str, key))}]"
        if key not in want:
            raise LogBrokenError(where, "in the projection but not made by the log")
        if key not in have:
            raise LogBrokenError(where, "made by the log but missing from the projection")
        for column, expected in want[key].items():
            actual = have[key][column]
            if column in _LIVENESS and name == "node":
                if column == "last_seq" and actual < expected:
                    raise LogBrokenError(where, f"last_seq {actual} is behind the log's {expected}")
                continue
            if actual != expected:
                raise LogBrokenError(
                    where, f"{column} is {actual!r} in the projection, {expected!r} from the log"
                )
