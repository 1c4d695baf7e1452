"""The evaluation of the record at a projection version: one object per process owns it.

`Evaluations.view(as_of)` answers with the `View` of the version the database holds now (one
small query per call validates the cache), evaluated under each rule pack the registry names
(or those the caller names instead). Each pack has its own tally: a new version's is made from
the last tally of the same date and pack, where the line cache reads only the rows written since
and names the sites they touched (`linecache.py`), the engine re-adds only those sites
(`engine.retally`), and the pack's new `Document` takes over the unchanged sites' and checks'
JSON (`documents.py`). `Answers` joins the packs' documents into one answer, as
`report.document` joins evaluations. Everything here is a memo of the database's rows, never a
source: without a usable predecessor a pack's tally is made from scratch.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.engine import Evaluation, Tally, retally, tally
from gpucap.core.fleet import Entity, Fleet, Line, Site
from gpucap.core.report import document_head
from gpucap.core.ruleset import RulePack
from gpucap.ledger import db, heap, log
from gpucap.ledger.documents import Ask, Bodies, Document
from gpucap.ledger.linecache import LineSet, read_lines
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store
from gpucap.ledger.views import FleetIndex, verdict, with_observed

_VIEWS = 8  # views kept (all of the newest version: older ones are never asked for again)
_LASTS = 16  # (date, pack) pairs whose last tally is kept to make the next version's from
_BODIES = 256  # joined answer bodies kept per view of several packs
_SITES_MARK = b'], "sites": ['  # in a body, only ever where the checks end and the sites begin
_KEPT_ENTRIES = 3  # entries kept per entry of a view, before they are made afresh


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


class Answers:
    """The `/v1/headroom` answers of one or more packs' documents together: `report.document`'s
    shape (checks breaches first, then by pack in order, rule and scope; one sites list when
    every pack sees each site alike, else each pack's entries naming their pack). One pack's
    answers are its document's own. Several packs' entries and their JSON are kept by the
    identity of the pack documents' entries, which a later document takes over for what did
    not change, so `prior` (the answers of the same packs and date at an earlier version) hands
    them on and a body after a change encodes only the changed sites and checks again."""

    def __init__(
        self,
        documents: Sequence[Document],
        evaluations: Sequence[Evaluation],
        prior: Answers | None = None,
    ) -> None:
        assert len(documents) == len(evaluations) > 0, "one document per pack"
        self.documents = tuple(documents)
        self._evs = tuple(evaluations)
        self._ids = tuple(ev.ruleset.id for ev in evaluations)
        self._head: dict[str, Any] = {}
        self._alike = True
        self._full: dict[str, Any] | None = None
        self._bodies = Bodies(_BODIES)
        # id(entry of a pack's document) -> (that entry, its entry here, its JSON or None)
        self._entries: dict[int, tuple[dict[str, Any], dict[str, Any], bytes | None]] = {}
        if len(documents) == 1:
            return
        self._head = document_head(evaluations)
        first = evaluations[0]
        self._alike = all(
            ev.sites == first.sites and ev.h100e_tpp == first.h100e_tpp for ev in evaluations
        )
        bound = _KEPT_ENTRIES * sum(len(ev.sites) + len(ev.checks) for ev in evaluations)
        if prior is not None and prior._ids == self._ids and len(prior._entries) < bound:
            self._entries = dict(prior._entries)

    def full(self) -> dict[str, Any]:
        """The whole, unfiltered document."""
        if len(self.documents) == 1:
            return self.documents[0].full()
        if self._full is None:
            self._full = self._joined(None, None)
        return self._full

    def answer(self, entity: str | None, requested: tuple[str, str] | None) -> dict[str, Any]:
        """The document cut to what a caller limited to `entity` asked for (`views.filtered`)."""
        if len(self.documents) == 1:
            return self.documents[0].answer(entity, requested)
        if entity is None and requested is None:
            return dict(self.full())
        return self._joined(entity, requested)

    def body(self, entity: str | None, requested: tuple[str, str] | None) -> bytes:
        """`json.dumps(self.answer(entity, requested)).encode()`, cached."""
        if len(self.documents) == 1:
            return self.documents[0].body(entity, requested)
        key: Ask = (entity, requested)
        hit = self._bodies.get(key)
        if hit is not None:
            return hit
        head, checks, sites = self._parts(entity, requested)
        if self._alike:  # the first pack's sites: its document's joined JSON, uncopied
            first = self.documents[0].body(entity, requested)
            start = first.rindex(_SITES_MARK) + len(_SITES_MARK)
            site_json: bytes | memoryview = memoryview(first)[start:-2]
        else:
            site_json = b", ".join(
                self._json(entry, self._ids[k]) for k, own in enumerate(sites) for entry in own
            )
        out = b"".join(
            (
                json.dumps(head)[:-1].encode(),
                b', "checks": [',
                b", ".join(self._json(c, None) for c in checks),
                b'], "sites": [',
                site_json,
                b"]}",
            )
        )
        return self._bodies.put(key, out)

    def _parts(
        self, entity: str | None, requested: tuple[str, str] | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[list[dict[str, Any]]]]:
        """The head, the checks in document order, and each pack's site entries."""
        parts = [d.answer(entity, requested) for d in self.documents]
        # Each pack's checks are breaches first, then by rule and scope: so are the joined ones.
        checks = [c for p in parts for c in p["checks"] if c["status"] == "breach"]
        checks += [c for p in parts for c in p["checks"] if c["status"] != "breach"]
        head = dict(self._head)
        if entity is not None or requested is not None:
            head["verdict"] = verdict(c["status"] for c in checks)
        return head, checks, [p["sites"] for p in parts]

    def _joined(self, entity: str | None, requested: tuple[str, str] | None) -> dict[str, Any]:
        head, checks, sites = self._parts(entity, requested)
        if self._alike:
            joined = sites[0]
        else:
            joined = [self._entry(s, self._ids[k]) for k, own in enumerate(sites) for s in own]
        return {**head, "checks": checks, "sites": joined}

    def _entry(self, entry: dict[str, Any], pack: str | None) -> dict[str, Any]:
        """A pack document's entry as it stands here: a site's names its pack (`pack`)."""
        held = self._entries.get(id(entry))
        if held is not None and held[0] is entry:
            return held[1]
        mine = entry if pack is None else {"ruleset": pack, **entry}
        self._entries[id(entry)] = (entry, mine, None)
        return mine

    def _json(self, entry: dict[str, Any], pack: str | None) -> bytes:
        held = self._entries.get(id(entry))
        if held is not None and held[0] is entry and held[2] is not None:
            return held[2]
        mine = self._entry(entry, pack)
        out = json.dumps(mine).encode()
        self._entries[id(entry)] = (entry, mine, out)
        return out


@dataclass(frozen=True)
class View:
    """One cached evaluation: the engine's answer under each pack (in order), the packs, the
    fleet, each pack's look-ups, and the answers."""

    evaluations: tuple[Evaluation, ...]
    packs: tuple[RulePack, ...]
    fleet: Fleet
    indexes: tuple[FleetIndex, ...]
    document: Answers
    basis: Basis  # the state of the log it reflects, read in the snapshot it was made from

    @property
    def evaluation(self) -> Evaluation:
        """The first pack's evaluation."""
        return self.evaluations[0]

    @property
    def index(self) -> FleetIndex:
        """The first pack's look-ups (scopes are parsed with them)."""
        return self.indexes[0]

    @property
    def doc(self) -> dict[str, Any]:
        """The whole, unfiltered document."""
        return self.document.full()


def fresh_view(fleet: Fleet, packs: Sequence[RulePack], as_of: date, basis: Basis) -> View:
    """The view of `fleet` under `packs` evaluated from scratch (no cache)."""
    evaluations = tuple(tally(fleet, pack, as_of).evaluation for pack in packs)
    indexes = tuple(FleetIndex.of(fleet, pack.tiers.resolve) for pack in packs)
    documents = [Document(ev, ix) for ev, ix in zip(evaluations, indexes, strict=True)]
    answers = Answers(documents, evaluations)
    return View(evaluations, tuple(packs), fleet, indexes, answers, basis)


@dataclass(frozen=True)
class _RegistryParts:
    """What depends only on the registry: declared lines by site, and each pack's look-ups."""

    sites: tuple[Site, ...]
    entities: tuple[Entity, ...]
    declared: Mapping[str, tuple[Line, ...]]
    indexes: dict[str, tuple[RulePack, FleetIndex]] = field(default_factory=dict)

    def index(self, fleet: Fleet, pack: RulePack) -> FleetIndex:
        """`pack`'s look-ups over the registry (made once per registry and pack)."""
        held = self.indexes.get(pack.id)
        if held is None or held[0] is not pack:
            held = self.indexes[pack.id] = (pack, FleetIndex.of(fleet, pack.tiers.resolve))
        return held[1]


@dataclass(frozen=True)
class _Last:
    """The newest tally of one date and pack and what it was made from."""

    tally: Tally
    version: int
    by_site: Mapping[str, Mapping[str, Line]]
    document: Document


class Evaluations:
    """The cached views of one process, by (as_of, projection version, packs asked for)."""

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
        self._views: OrderedDict[tuple[date, int, tuple[str, ...] | None], View] = OrderedDict()
        self._last: OrderedDict[tuple[date, str], _Last] = OrderedDict()
        self._parts: _RegistryParts | None = None
        # Engine lines of the newest inventory read: a base that the next read patches.
        self.lineset: LineSet | None = None
        # `service.serving_policy` turns this on in serving processes (see heap.py).
        self.freeze = False

    def view(self, as_of: date, rulesets: tuple[str, ...] | None = None) -> View:
        """The view on `as_of` at the projection version the database holds now, under the
        registry's packs or, given `rulesets` (ids the caller checked), those instead."""
        key = (as_of, self._store.state().projection_version, rulesets)
        hit = self._cached(key)
        if hit is not None:
            return hit
        with self._making:
            view = self._cached(key) or self._make(as_of, rulesets)
        if self.freeze:
            heap.settle_after_evaluation()
        return view

    def _cached(self, key: tuple[date, int, tuple[str, ...] | None]) -> View | None:
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                self._views.move_to_end(key)
            return hit

    def _make(self, as_of: date, rulesets: tuple[str, ...] | None) -> View:
        with self._store.snapshot() as conn:
            registry = self._registry(conn)
            lineset, _ = read_lines(conn, self.lineset)
            basis = live_basis(conn, self._now())
        if self.lineset is None or self.lineset.version <= lineset.version:
            self.lineset = lineset
        # The version the lines were read at (a write may have landed since the first look).
        version = lineset.version
        hit = self._cached((as_of, version, rulesets))
        if hit is not None:
            return hit
        ids = rulesets or registry.packs
        packs = tuple(self._pack(pack_id) for pack_id in ids)
        parts = self._registry_parts(registry)
        fleet = with_observed(registry, lineset.lines.values())
        if rulesets is not None:
            fleet = replace(fleet, ruleset=ids[0], rulesets=ids)
        made = [self._tally(as_of, fleet, pack, parts, lineset) for pack in packs]
        prior = self._prior(as_of, rulesets)
        answers = Answers([m[1] for m in made], [m[0].evaluation for m in made], prior)
        indexes = tuple(parts.index(registry, pack) for pack in packs)
        evaluations = tuple(m[0].evaluation for m in made)
        view = View(evaluations, packs, fleet, indexes, answers, basis)
        with self._lock:
            # Versions only grow: an older version's views can never be asked for again, and
            # dropping them at once keeps the heap (and the garbage collector's passes) small.
            for stale in [k for k in self._views if k[1] < version]:
                del self._views[stale]
            self._views[(as_of, version, rulesets)] = view
            while len(self._views) > _VIEWS:
                self._views.popitem(last=False)
            for pack, (new, document) in zip(packs, made, strict=True):
                self._last[(as_of, pack.id)] = _Last(new, version, lineset.by_site, document)
                self._last.move_to_end((as_of, pack.id))
            while len(self._last) > _LASTS:
                self._last.popitem(last=False)
        return view

    def _prior(self, as_of: date, rulesets: tuple[str, ...] | None) -> Answers | None:
        """The answers of the newest view of the same date and packs, if one is kept."""
        with self._lock:
            for key in reversed(self._views):
                if key[0] == as_of and key[2] == rulesets:
                    return self._views[key].document
        return None

    def _tally(
        self, as_of: date, fleet: Fleet, pack: RulePack, parts: _RegistryParts, lineset: LineSet
    ) -> tuple[Tally, Document]:
        """One pack's tally and document: re-added from its last one where that fits."""
        index = parts.index(fleet, pack)
        last = self._last.get((as_of, pack.id))
        if last is None or not last.tally.fits(fleet, pack):
            made = tally(fleet, pack, as_of)
            return made, Document(made.evaluation, index)
        made = retally(last.tally, _changed(last, lineset, parts.declared))
        assert made.changed is not None  # a retally names the sites it changed
        return made, Document(made.evaluation, index, last.document, made.changed)

    def _registry_parts(self, fleet: Fleet) -> _RegistryParts:
        """The registry's look-ups, remade only when the registry (its parsed tuples) changed:
        they do not depend on the observed lines."""
        cached = self._parts
        if cached is not None and cached.sites is fleet.sites and cached.entities is fleet.entities:
            return cached
        declared: dict[str, list[Line]] = {}
        for line in fleet.lines:
            declared.setdefault(line.site, []).append(line)
        parts = _RegistryParts(
            fleet.sites,
            fleet.entities,
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
