"""The evaluation of the record at a projection version: one object per process owns it.

`Evaluations.view(as_of)` answers with the `View` of the version the database holds now (one
small query per call validates the cache). A new version's view is made from the last view of
the same date: the line cache reads only the rows written since and names the sites they touched
(`linecache.py`), the engine re-adds only those sites (`engine.retally`), and the new `Document`
takes over the unchanged sites' and checks' JSON (`documents.py`). Everything here is a memo of
the database's rows, never a source: without a usable predecessor a view is made from scratch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.engine import Evaluation, Tally, retally, tally
from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.ruleset import RulePack
from gpucap.ledger import db, heap, log
from gpucap.ledger.documents import Document
from gpucap.ledger.linecache import LineSet, read_lines
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store
from gpucap.ledger.views import FleetIndex, with_observed

_VIEWS = 8  # views kept (all of the newest version: older ones are never asked for again)
_DATES = 4  # dates whose last tally is kept to make the next version's from


@dataclass(frozen=True)
class Basis:
    """What an answer was computed from: the instant, the signed log size it reflects, entries
    appended but not yet signed that it also reflects (live answers only) and the registry."""

    known_at: str
    log_size: int
    unsigned: int
    registry_digest: str | None


def live_basis(conn: Connection, now: datetime) -> Basis:
    """The basis of an answer read from the projections in `conn`'s snapshot."""
    return Basis(
        iso_instant(now), log.tree(conn).size, log.pending_count(conn), db.registry_digest(conn)
    )


@dataclass(frozen=True)
class View:
    """One cached evaluation: the engine's answer, its fleet, look-ups, and the answers."""

    evaluation: Evaluation
    fleet: Fleet
    index: FleetIndex
    document: Document
    basis: Basis  # the state of the log it reflects, read in the snapshot it was made from

    @property
    def doc(self) -> dict[str, Any]:
        """The whole, unfiltered document."""
        return self.document.full()


@dataclass(frozen=True)
class _RegistryParts:
    """What depends only on the registry and its pack: look-ups and declared lines by site."""

    sites: tuple[Site, ...]
    entities: tuple[Entity, ...]
    pack: RulePack
    index: FleetIndex
    declared: Mapping[str, tuple[Line, ...]]


@dataclass(frozen=True)
class _Last:
    """The newest view of one date and what it was made from."""

    tally: Tally
    version: int
    by_site: Mapping[str, Mapping[str, Line]]
    document: Document


class Evaluations:
    """The cached views of one process, by (as_of, projection version)."""

    def __init__(
        self,
        store: Store,
        registry: Callable[[Connection], Fleet],
        pack: Callable[[str], RulePack],
        now: Callable[[], datetime],
    ) -> None:
        self._store, self._registry, self._pack, self._now = store, registry, pack, now
        self._lock = threading.Lock()  # the dicts below
        self._making = threading.Lock()  # one view made at a time; a second asker then finds it
        self._views: OrderedDict[tuple[date, int], View] = OrderedDict()
        self._last: OrderedDict[date, _Last] = OrderedDict()
        self._parts: _RegistryParts | None = None
        # Engine lines of the newest inventory read: a base that the next read patches.
        self.lineset: LineSet | None = None
        # `service.serving_policy` turns this on in serving processes (see heap.py).
        self.freeze = False

    def view(self, as_of: date) -> View:
        """The view on `as_of` at the projection version the database holds now."""
        key = (as_of, self._store.state().projection_version)
        hit = self._cached(key)
        if hit is not None:
            return hit
        with self._making:
            view = self._cached(key) or self._make(as_of)
        if self.freeze:
            heap.settle_after_evaluation()
        return view

    def _cached(self, key: tuple[date, int]) -> View | None:
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                self._views.move_to_end(key)
            return hit

    def _make(self, as_of: date) -> View:
        with self._store.snapshot() as conn:
            registry = self._registry(conn)
            lineset, _ = read_lines(conn, self.lineset)
            basis = live_basis(conn, self._now())
        if self.lineset is None or self.lineset.version <= lineset.version:
            self.lineset = lineset
        # The version the lines were read at (a write may have landed since the first look).
        version = lineset.version
        hit = self._cached((as_of, version))
        if hit is not None:
            return hit
        pack = self._pack(registry.ruleset)
        parts = self._registry_parts(registry, pack)
        fleet = with_observed(registry, lineset.lines.values())
        last = self._last.get(as_of)
        if last is None or not last.tally.fits(fleet, pack):
            made = tally(fleet, pack, as_of)
            document = Document(made.evaluation, parts.index)
        else:
            made = retally(last.tally, _changed(last, lineset, parts.declared))
            assert made.changed is not None  # a retally names the sites it changed
            document = Document(made.evaluation, parts.index, last.document, made.changed)
        view = View(made.evaluation, fleet, parts.index, document, basis)
        with self._lock:
            # Versions only grow: an older version's views can never be asked for again, and
            # dropping them at once keeps the heap (and the garbage collector's passes) small.
            for stale in [k for k in self._views if k[1] < version]:
                del self._views[stale]
            self._views[(as_of, version)] = view
            while len(self._views) > _VIEWS:
                self._views.popitem(last=False)
            self._last[as_of] = _Last(made, version, lineset.by_site, document)
            self._last.move_to_end(as_of)
            while len(self._last) > _DATES:
                self._last.popitem(last=False)
        return view

    def _registry_parts(self, fleet: Fleet, pack: RulePack) -> _RegistryParts:
        """The registry's look-ups, remade only when the registry (its parsed tuples) or the
        pack changed: they do not depend on the observed lines."""
        cached = self._parts
        if (
            cached is not None
            and cached.sites is fleet.sites
            and cached.entities is fleet.entities
            and cached.pack is pack
        ):
            return cached
        declared: dict[str, list[Line]] = {}
        for line in fleet.lines:
            declared.setdefault(line.site, []).append(line)
        parts = _RegistryParts(
            fleet.sites,
            fleet.entities,
            pack,
            FleetIndex.of(fleet, pack.tiers.resolve),
            {site: tuple(lines) for site, lines in declared.items()},
        )
        self._parts = parts
        return parts


def _changed(
    last: _Last, lineset: LineSet, declared: Mapping[str, tuple[Line, ...]]
) -> dict[str, tuple[Line, ...]]:
    """Every site whose lines may differ from those `last` was made from, with its lines now
    (declared, then observed)."""
    sites = lineset.sites_changed_since(last.version)
    if sites is None:  # the patches remembered do not reach back: compare each site's dict
        old, new = last.by_site, lineset.by_site
        sites = frozenset(s for s in new.keys() | old.keys() if old.get(s) is not new.get(s))
    return {site: declared.get(site, ()) + lineset.site_lines(site) for site in sites}
