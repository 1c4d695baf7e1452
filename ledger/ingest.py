"""The write paths: reports (in batches), registry changes and decommissions.

A report whose devices are unchanged is a heartbeat: one compare-and-set on its node's row
(`last_seq < seq`, same devices digest, same site, not decommissioned, already present today)
that advances `last_seq`/`last_seen` and appends nothing. Anything else takes the slow path,
which locks the node row and decides: a duplicate (seq not above `last_seq`), a refusal, the
day's first report (one `presence` entry), or a changed inventory (the projections change and
one `report` entry is appended, in the same transaction). Several reports share one
transaction (`ingest_batch`, fed by the group committer); a report that is refused changes
nothing, because every check runs before its first write.

A device takes the licence whose shipment to its site lists its serial, from the registry's
serial map (built once per registry, `SiteCache`); a registry change re-keys, in its own
transaction, only the devices whose serials it moved (by the serial index).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpucap.core.catalogue import Catalogue
from gpucap.core.errors import GpucapError, InputError
from gpucap.core.fleet import Fleet
from gpucap.core.scenario import parse_scenario
from gpucap.ledger import db, log, tokens
from gpucap.ledger.errors import RejectedError, UnavailableError
from gpucap.ledger.fold import (
    NOTHING_SHIPPED,
    Change,
    DeviceFacts,
    Shipped,
    digest,
    fold_decommission,
    fold_report,
    moved_serials,
    rekey,
    resolve,
    shipped_serials,
)
from gpucap.ledger.models import Report
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store, bump_projection, projection_version


@dataclass(frozen=True)
class Outcome:
    """The answer to one report: accepted with its seq, or a duplicate (nothing changed)."""

    status: Literal["accepted", "duplicate"]
    seq: int


@dataclass(frozen=True)
class Prepared:
    """A report checked on its own and resolved against the catalogue (no database needed)."""

    report: Report
    facts: tuple[DeviceFacts, ...]
    digest: str


def prepare(report: Report, catalogue: Catalogue) -> Prepared:
    """RejectedError for a report inconsistent in itself; else its resolved facts."""
    report.check_consistent()
    facts = tuple(resolve(d, catalogue) for d in report.devices)
    return Prepared(report, facts, digest(facts))


class Txn:
    """One write transaction: its connection, the inventory-line changes it queued, and the one
    projection version it commits them at.

    The version is taken by `finish`, just before commit, after every node row the transaction
    locks: so on PostgreSQL the shared `ledger_state` row is always locked last and briefly, and
    transactions that lock node rows in ascending order (see `ingest_batch`) cannot deadlock.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.version: int | None = None
        self.appended = 0  # log entries appended
        self._lines: list[Change] = []
        self._touched = False
        # The registry digest whose serial map the reports' device rows were keyed with (None:
        # not checked); see `finish`.
        self.keyed_with: str | None = None
        self._shipped: Shipped | None = None  # the replay's map, kept by `apply_registry`

    def shipped(self) -> Shipped:
        """The current registry's serial map (the replay's; read once per transaction)."""
        if self._shipped is None:
            reg = db.registry(self.conn)
            self._shipped = NOTHING_SHIPPED if reg is None else shipped_serials(json.loads(reg.doc))
        return self._shipped

    def keep_shipped(self, shipped: Shipped) -> None:
        """The map of the registry this transaction just recorded."""
        self._shipped = shipped

    def new_version(self) -> int:
        """Take the version now (a rebuild, which must stamp rows with it as it goes)."""
        if self.version is None:
            self.version = bump_projection(self.conn)
        return self.version

    def changed(self, change: Change) -> None:
        """Write a change's device rows now; its line deltas at `finish`."""
        if change.empty:
            return
        db.write_devices(self.conn, change)
        self._lines.append(change)

    def touch(self) -> None:
        """Say the projections changed without line deltas (registry, decommission, devices)."""
        self._touched = True

    def finish(self) -> None:
        if self._lines or self._touched:
            version = self.new_version()
            if self.keyed_with is not None and db.registry_digest(self.conn) != self.keyed_with:
                # PostgreSQL: a registry change committed while this batch ran (the version
                # bump waited for it), so its re-keying did not see these device rows.
                raise UnavailableError("registry", "the registry changed during this write")
            for change in self._lines:
                db.write_lines(self.conn, change, version)
            self._lines.clear()

    def append(self, kind: str, actor: str, body: Any, recorded_at: str) -> None:
        log.append(self.conn, kind, actor, body, recorded_at)
        self.appended += 1


@contextmanager
def transaction(store: Store) -> Iterator[Txn]:
    """A write transaction whose queued line changes are written, at one new projection
    version, just before it commits."""
    with store.write() as conn:
        txn = Txn(conn)
        yield txn
        txn.finish()


def registry_sites(conn: Connection) -> dict[str, str] | None:
    """site id -> entity of the current registry, or None when no registry was loaded."""
    reg = db.registry(conn)
    if reg is None:
        return None
    doc = json.loads(reg.doc)
    return {str(s["id"]): str(s["entity"]) for s in doc.get("sites", [])}


class SiteCache:
    """site id -> entity of the registry, kept across batches of one process.

    Every registry change bumps `projection_version` in its transaction, so while the version
    a batch reads is the one last checked, the cached sites are current; when it moved, one
    small SELECT of the registry digest says whether to re-read the document. Only the group
    committer's thread touches it.
    """

    def __init__(self) -> None:
        self._state: tuple[int, str | None, Mapping[str, str], Shipped] = (-1, None, {}, {})

    def sites(self, conn: Connection) -> Mapping[str, str]:
        version = projection_version(conn)
        seen, digest_seen, sites, shipped = self._state
        if version != seen:
            current = db.registry_digest(conn)
            if current != digest_seen or current is None:
                reg = db.registry(conn)
                doc = {} if reg is None else json.loads(reg.doc)
                sites = {str(s["id"]): str(s["entity"]) for s in doc.get("sites", [])}
                shipped = shipped_serials(doc)
            self._state = (version, current, sites, shipped)
        return sites

    @property
    def digest(self) -> str | None:
        """The registry digest of the last `sites` answer."""
        return self._state[1]

    @property
    def shipped(self) -> Shipped:
        """serial -> (licence, site) of the registry of the last `sites` answer."""
        return self._state[3]


Result = Outcome | GpucapError


def ingest_batch(
    store: Store, batch: Sequence[Prepared], now: datetime, sites: SiteCache
) -> tuple[list[Result], int]:
    """Store a batch of reports in one transaction: (one result per report, entries appended).

    Reports are written in ascending node order (and a node's in arrival order), so that two
    processes' batches lock node rows in the same order. When the transaction fails as a whole
    (a lost connection, a statement the database refuses), each report is retried alone, so
    that one cannot fail the others; a report the database refuses alone is a RejectedError.
    """
    recorded_at = iso_instant(now)
    order = sorted(range(len(batch)), key=lambda i: batch[i].report.node_id)
    results: list[Result | None] = [None] * len(batch)
    try:
        with transaction(store) as txn:
            known = sites.sites(txn.conn)
            shipped = sites.shipped
            if not store.is_sqlite:  # SQLite has one writer: no registry change can interleave
                txn.keyed_with = sites.digest
            for i in order:
                results[i] = _one(txn, batch[i], known, shipped, recorded_at, store.is_sqlite)
        return [r for r in results if r is not None], txn.appended
    except (sa.exc.DBAPIError, UnavailableError) as exc:
        if len(batch) == 1:
            return [_failure(exc)], 0
    retried: list[Result] = []
    appended = 0
    for p in batch:
        one, n = ingest_batch(store, [p], now, sites)
        retried += one
        appended += n
    return retried, appended


def _failure(exc: Exception) -> GpucapError:
    """What one report's failed transaction means to its sender: a refusal when the database
    will never store it (the agent must not retry it forever), else unavailable (retry)."""
    if isinstance(exc, UnavailableError):
        return exc
    orig = getattr(exc, "orig", exc)
    if isinstance(exc, sa.exc.DataError):
        return RejectedError("(body)", f"the database cannot store this report: {orig}")
    return UnavailableError("db", f"database error: {orig}")


def _one(
    txn: Txn,
    p: Prepared,
    sites: Mapping[str, str],
    shipped: Shipped,
    recorded_at: str,
    is_sqlite: bool,
) -> Result:
    r = p.report
    day = recorded_at[:10]
    params = {
        "node_id": r.node_id,
        "site_id": r.site_id,
        "seq": r.seq,
        "now": recorded_at,
        "digest": p.digest,
        "agent_version": r.agent_version,
        "day": day,
    }
    if r.site_id in sites and db.heartbeat(txn.conn, params):
        return Outcome("accepted", r.seq)
    node = db.node_for_update(txn.conn, r.node_id, lock=not is_sqlite)
    try:
        _check(node, r, sites)
    except RejectedError as exc:
        return exc
    if node is not None and r.seq <= node.last_seq:
        return Outcome("duplicate", r.seq)
    if node is None:
        if not db.insert_node(txn.conn, params):  # another process enrolled it just now
            return _one(txn, p, sites, shipped, recorded_at, is_sqlite)
    elif node.devices_digest == p.digest:
        # A heartbeat the compare-and-set missed: the day's first report (one presence entry),
        # or one that raced another process's (or a clock behind the one that set the day).
        if day > node.presence_day:
            db.update_node(txn.conn, params)
            body = {"node_id": r.node_id, "site_id": r.site_id, "seq": r.seq, "devices": p.digest}
            txn.append("presence", f"node:{r.node_id}", body, recorded_at)
        else:
            db.update_node(txn.conn, {**params, "day": node.presence_day})
        return Outcome("accepted", r.seq)
    else:
        db.update_node(txn.conn, params)
    apply_devices(txn, r.node_id, r.site_id, p.facts, day, shipped, existing=node is not None)
    body = r.model_dump(mode="json", by_alias=True)
    txn.append("report", f"node:{r.node_id}", body, recorded_at)
    return Outcome("accepted", r.seq)


def _check(node: db.NodeRow | None, r: Report, sites: Mapping[str, str]) -> None:
    """Refusals, in the order a user expects them (a duplicate is never refused)."""
    if node is not None and r.seq <= node.last_seq:
        return
    if r.site_id not in sites:
        raise RejectedError("site_id", f"no site {r.site_id!r} in the registry")
    if node is not None and node.decommissioned_on is not None:
        raise RejectedError(
            "node_id",
            f"node {r.node_id!r} was decommissioned on {node.decommissioned_on}; "
            "a node id is never reused: enrol the machine under a new node id",
        )
    if node is not None and node.site_id != r.site_id:
        raise RejectedError(
            "site_id",
            f"node {r.node_id!r} reports for site {node.site_id!r}; "
            "decommission it before moving it",
        )


def apply_devices(
    txn: Txn,
    node_id: str,
    site_id: str,
    facts: Sequence[DeviceFacts],
    day: str,
    shipped: Shipped,
    *,
    existing: bool = True,
) -> None:
    """Fold a node's reported devices into the device rows and inventory lines (licences by
    serial from the registry's `shipped`)."""
    rows = db.devices(txn.conn, node_id) if existing else {}
    change = fold_report(node_id, site_id, rows, facts, day, shipped)
    txn.changed(change)
    if not change.empty:
        txn.touch()  # device rows change what reconciliation sees even when no line moves


def decommission(
    store: Store, node_id: str, now: datetime, actor: str, reason: str | None = None
) -> tuple[int, int]:
    """Close a node: its devices stop counting for installed-base rules from today, and its
    node tokens are revoked in the same transaction; returns (devices closed, tokens revoked).
    The entry carries `reason` only when one is given (older entries have none)."""
    if reason is not None:
        check_reason(reason)
    recorded_at = iso_instant(now)
    with transaction(store) as txn:
        node = db.node_for_update(txn.conn, node_id, lock=not store.is_sqlite)
        _check_decommission(node, node_id)
        n = apply_decommission(txn, node_id, recorded_at[:10])
        body: dict[str, str] = {"node_id": node_id, "on": recorded_at[:10]}
        if reason is not None:
            body["reason"] = reason
        txn.append("decommission", actor, body, recorded_at)
        revoked = tokens.revoke_node_tokens(txn.conn, node_id, recorded_at, actor)
        txn.appended += revoked
    return n, revoked


def decommission_preview(store: Store, node_id: str, now: datetime) -> tuple[int, int]:
    """The (devices closed, tokens revoked) `decommission` would make now, refusing what it
    would refuse; writes nothing."""
    with store.snapshot() as conn:
        node = db.node_for_update(conn, node_id, lock=False)
        _check_decommission(node, node_id)
        closed = fold_decommission(db.devices(conn, node_id), iso_instant(now)[:10]).rows
        return len(closed), len(db.unrevoked_node_tokens(conn, node_id))


def _check_decommission(node: db.NodeRow | None, node_id: str) -> None:
    if node is None:
        raise RejectedError("node", f"no node {node_id!r} has reported")
    if node.decommissioned_on is not None:
        raise RejectedError("node", f"node {node_id!r} was decommissioned already")


def check_reason(reason: str) -> None:
    """InputError naming --reason for a reason the log should not hold: empty, a control
    character other than tab and newline (NUL included), or text that is not UTF-8."""
    if not reason.strip():
        raise InputError("--reason", "must not be empty")
    for i, ch in enumerate(reason):
        if (ord(ch) < 0x20 and ch not in "\t\n") or "\ud800" <= ch <= "\udfff":
            what = "not UTF-8" if ord(ch) >= 0x20 else f"control character U+{ord(ch):04X}"
            raise InputError("--reason", f"{what} at position {i}")


def apply_decommission(txn: Txn, node_id: str, on: str) -> int:
    db.set_node(txn.conn, node_id, decommissioned_on=on)
    change = fold_decommission(db.devices(txn.conn, node_id), on)
    txn.changed(change)
    txn.touch()  # a decommission changes what reconciliation and the metrics see
    return len(change.rows)


def load_registry_doc(doc: Any, origin: str, catalogue: Catalogue) -> Fleet:
    """Validate a registry document (the scenario format); InputError names the bad field."""
    return parse_scenario(doc, catalogue, origin)


def set_registry(store: Store, doc: Any, origin: str, now: datetime, actor: str) -> bool:
    """Record a registry document if it differs from the current one; True if it changed."""
    text = log.canonical(doc)
    new_digest = hashlib.sha256(text.encode()).hexdigest()
    recorded_at = iso_instant(now)
    with transaction(store) as txn:
        if not store.is_sqlite:
            db.lock_state(txn.conn)  # two processes recording one new registry: one at a time
        current = db.registry_digest(txn.conn)
        if current == new_digest:
            return False
        apply_registry(txn, json.loads(text), origin, recorded_at)
        body = {"origin": origin, "doc": json.loads(text), "previous_digest": current}
        txn.append("registry", actor, body, recorded_at)
    return True


def apply_registry(txn: Txn, doc: Any, origin: str, recorded_at: str) -> None:
    """Record a registry and re-key the devices whose serials it ships differently: one
    indexed read of those devices, so the cost follows the shipments changed, not the fleet."""
    text = log.canonical(doc)
    digest_ = hashlib.sha256(text.encode()).hexdigest()
    before = txn.shipped()
    after = shipped_serials(doc)
    db.replace_registry(txn.conn, digest_, text, origin, recorded_at)
    txn.keep_shipped(after)
    moved = moved_serials(before, after)
    if moved:
        txn.changed(rekey(db.devices_with_serials(txn.conn, moved), after))
    txn.touch()
