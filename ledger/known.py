"""Two times in every answer: `as_of` (the date the rules are read for) and `known_at` (the
state of the record used), and the provenance that ties an answer to that state.

`known_at` is `log_size=N` (the first N log entries) or an instant T, which means the longest
prefix of the signed log recorded at or before T: the first entry recorded after T ends it.
(Entries are appended in commit order, so `recorded_at` rises along the log, up to the clock
difference between ledger processes sharing one database.) Both name a prefix of the signed
log, whose entries never change, so an answer at a given `known_at` never changes either:
`PastRecords` folds that prefix in memory (`record.py`) and evaluates it with the same engine.
Without `known_at` an answer is the live one, from the projections, and its provenance says how
much of what it reflects is signed (`log_size`) and how much is appended but not yet
(`unsigned_entries`, signed within GPUCAP_LOG_INTEGRATE_INTERVAL_S).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

import gpucap
from gpucap.core.catalogue import Catalogue
from gpucap.core.data import shipped
from gpucap.core.engine import RulesetState
from gpucap.core.ruleset import RulePack
from gpucap.ledger import log
from gpucap.ledger.errors import RejectedError
from gpucap.ledger.evaluations import Basis, View, fresh_view
from gpucap.ledger.record import Record
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store

_LOG_SIZE = re.compile(r"log_size=([0-9]{1,18})")
_PAGE = 5000  # entries read per query while folding


@dataclass(frozen=True)
class KnownAt:
    """A parsed `known_at`: a log size, or an instant (`size` None) still to be resolved."""

    size: int | None = None
    instant: datetime | None = None

    def label(self) -> str:
        if self.size is not None:
            return f"log_size={self.size}"
        assert self.instant is not None
        return iso_instant(self.instant)


def parse_known_at(value: str | None, field: str = "known_at") -> KnownAt | None:
    """`log_size=N`, or an ISO 8601 instant with a UTC offset (`Z`, `+00:00`, `+02:00`, ...)."""
    if value is None or value == "":
        return None
    match = _LOG_SIZE.fullmatch(value)
    if match:
        return KnownAt(size=int(match.group(1)))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedError(
            field,
            f"expected an ISO 8601 instant (2026-11-30T12:00:00Z) or log_size=N, got {value!r}",
        ) from None
    if moment.tzinfo is None:
        raise RejectedError(field, f"{value!r} has no UTC offset: add Z (UTC) or +HH:MM")
    return KnownAt(instant=moment.astimezone(UTC))


def size_at(conn: Connection, signed: int, instant: datetime) -> int:
    """The longest prefix of the signed log (of `signed` entries) recorded at or before
    `instant`: a binary search on `recorded_at`, one indexed read per step."""
    mark = iso_instant(instant)
    lo, hi = 0, signed  # every entry below lo is at or before `mark`; hi is after or the end
    while lo < hi:
        mid = (lo + hi) // 2
        if log.recorded_at(conn, mid) <= mark:
            lo = mid + 1
        else:
            hi = mid
    return lo


def resolve(conn: Connection, known: KnownAt, now: datetime, field: str = "known_at") -> int:
    """The log size `known` names, within the signed log; RejectedError when it is beyond it
    or in the future (an answer about a state the log does not hold yet could still change)."""
    signed = log.tree(conn).size
    if known.size is not None:
        if known.size > signed:
            raise RejectedError(
                field, f"log_size={known.size} is beyond the signed log ({signed} entries)"
            )
        return known.size
    assert known.instant is not None
    if known.instant > now:
        raise RejectedError(field, f"{iso_instant(known.instant)} is in the future")
    return size_at(conn, signed, known.instant)


# -- provenance -------------------------------------------------------------------------------
@functools.cache
def file_digest(path: Path) -> str:
    """SHA-256 of a shipped data file (read once: shipped files do not change in a process)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def ruleset_path(ruleset_id: str) -> Path:
    return shipped("rulesets", f"{ruleset_id}.yaml")


@functools.cache
def catalogue_paths() -> tuple[Path, Path]:
    """The catalogue and the control thresholds it classes devices with."""
    return shipped("catalogue.yaml"), shipped("eccn-3a090.yaml")


def groups_path() -> Path:
    """The dated EAR country groups the packs' rules read."""
    return shipped("country-groups.yaml")


def ruleset_entry(state: RulesetState) -> dict[str, Any]:
    return {
        "id": state.id,
        "version": state.version,
        "digest": file_digest(ruleset_path(state.id)),
        "status": state.status,
        "in_force": state.in_force,
    }


class ProofCache:
    """Roots and consistency proofs by (size, signed size): both are fixed once signed, so a
    busy headroom route reads only the newest checkpoint per request."""

    _KEPT = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proofs: OrderedDict[tuple[int, int], tuple[str, list[str]]] = OrderedDict()

    def get(self, conn: Connection, size: int, signed: int) -> tuple[str, list[str]]:
        key = (size, signed)
        with self._lock:
            hit = self._proofs.get(key)
        if hit is not None:
            return hit
        proof = log.consistency(conn, size, signed) if size <= signed else []
        made = (
            base64.b64encode(log.root_at(conn, size)).decode(),
            [base64.b64encode(h).decode() for h in proof],
        )
        with self._lock:
            self._proofs[key] = made
            while len(self._proofs) > self._KEPT:
                self._proofs.popitem(last=False)
        return made


def provenance(
    conn: Connection,
    basis: Basis,
    rulesets: Sequence[RulesetState],
    generated_at: datetime,
    proofs: ProofCache | None = None,
) -> dict[str, Any]:
    """The provenance block of an answer computed from `basis`, read in `conn`'s snapshot."""
    current = log.tree(conn)
    size = basis.log_size
    root, proof = (proofs or ProofCache()).get(conn, size, current.size)
    catalogue, thresholds = catalogue_paths()
    out: dict[str, Any] = {
        "known_at": basis.known_at,
        "log_size": size,
        "root_hash": root,
        "checkpoint": current.note,
        "checkpoint_size": current.size,
        "consistency_proof": proof,
        "registry_digest": basis.registry_digest,
        "rulesets": [ruleset_entry(s) for s in rulesets],
        "catalogue_digest": file_digest(catalogue),
        "thresholds_digest": file_digest(thresholds),
        "country_groups_digest": file_digest(groups_path()),
        "gpucap_version": gpucap.__version__,
        "generated_at": iso_instant(generated_at),
    }
    if basis.unsigned:
        out["unsigned_entries"] = basis.unsigned
    return out


def short(prov: dict[str, Any]) -> str:
    """The provenance block in two lines, for the table formats."""
    packs = ", ".join(
        f"{r['id']} {r['version']} ({r['status']}, sha256 {r['digest'][:12]})"
        for r in prov["rulesets"]
    )
    unsigned = prov.get("unsigned_entries")
    pending = f" + {unsigned} not yet signed" if unsigned else ""
    registry = (prov["registry_digest"] or "none")[:12]
    return (
        f"known at {prov['known_at']}: log size {prov['log_size']}{pending}, root "
        f"{prov['root_hash']}, registry {registry}\n"
        f"rules {packs}; catalogue {prov['catalogue_digest'][:12]}; "
        f"gpucap {prov['gpucap_version']}; generated {prov['generated_at']}\n"
    )


# -- past states --------------------------------------------------------------------------
class PastRecords:
    """Log prefixes folded in memory, and their evaluations, for `known_at` answers.

    One record is kept and moved forward when a later size is asked for (folding only the new
    entries); an earlier size is folded anew and kept beside it. A record is used under the
    lock: the folds mutate it.
    """

    _KEPT = 2
    _VIEWS = 8

    def __init__(self, store: Store, catalogue: Catalogue) -> None:
        self._store, self._catalogue = store, catalogue
        self._lock = threading.Lock()
        self._records: OrderedDict[int, Record] = OrderedDict()
        self._views: OrderedDict[tuple[int, date, tuple[str, ...] | None], View] = OrderedDict()

    @contextmanager
    def record(self, size: int) -> Iterator[Record]:
        """The record of the first `size` entries, held for the caller."""
        with self._lock:
            base = max((s for s in self._records if s <= size), default=None)
            rec = self._records.pop(base) if base is not None else Record(self._catalogue)
            if rec.size < size:
                with self._store.read() as conn:
                    while rec.size < size:
                        end = min(size, rec.size + _PAGE)
                        rec.apply_all(log.entries(conn, rec.size, end))
            self._records[size] = rec
            while len(self._records) > self._KEPT:
                self._records.popitem(last=False)
            yield rec

    def view(
        self,
        size: int,
        as_of: date,
        pack: Callable[[str], RulePack],
        rulesets: tuple[str, ...] | None = None,
    ) -> View:
        """The evaluation on `as_of` of the first `size` entries (cached), under the packs its
        registry names or, given `rulesets`, those instead."""
        key = (size, as_of, rulesets)
        with self._lock:
            hit = self._views.get(key)
        if hit is not None:
            return hit
        with self.record(size) as rec:
            reg = rec.registry
            if reg is None:
                raise RejectedError(
                    "known_at", f"the log held no registry in its first {size} entries"
                )
            fleet = rec.fleet()
        if rulesets is not None:
            fleet = replace(fleet, ruleset=rulesets[0], rulesets=rulesets)
        basis = Basis(f"log_size={size}", size, 0, None if reg is None else reg.digest)
        view = fresh_view(fleet, [pack(pack_id) for pack_id in fleet.packs], as_of, basis)
        with self._lock:
            self._views[key] = view
            while len(self._views) > self._VIEWS:
                self._views.popitem(last=False)
        return view
