"""The `/v1/headroom` answers of one cached evaluation, built in parts and on demand.

An answer is a selection of the evaluation's checks and sites: `views.Cut` decides what is in
it, and indexes by country, entity and site (checks: per document; sites: per registry, in
`FleetIndex`) find the candidates, so a scoped answer never walks the whole fleet. A selection
is rendered as a document (`answer`) or as the bytes `json.dumps` makes of that document
(`body`), joined from per-check and per-site JSON fragments and cached per (token entity,
scope). A document made after a change takes over its predecessor's entries and fragments for
the sites and checks the engine handed back unchanged (the same objects).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

from gpucap.core.engine import Check, Evaluation
from gpucap.core.report import check_to_dict, evaluation_head, ordered_checks, site_to_dict
from gpucap.ledger.views import Cut, FleetIndex, scope_parts, scoped, verdict

_BODIES = 256  # cached answer bodies per document (the whole fleet's, and scoped ones)

_BLOCK = 64  # sites per joined block of the whole document's JSON
Ask = tuple[str | None, tuple[str, str] | None]  # (token entity, requested scope)


class Bodies:
    """Answer bodies by (entity, requested), the least recently used dropped past `limit`;
    safe across the threads that answer requests."""

    def __init__(self, limit: int = _BODIES) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._held: OrderedDict[Ask, bytes] = OrderedDict()

    def get(self, key: Ask) -> bytes | None:
        with self._lock:
            hit = self._held.get(key)
            if hit is not None:
                self._held.move_to_end(key)
            return hit

    def put(self, key: Ask, body: bytes) -> bytes:
        with self._lock:
            self._held[key] = body
            while len(self._held) > self._limit:
                self._held.popitem(last=False)
        return body


class Document:
    """One evaluation's answers; safe to share between threads (a part is built twice at
    worst, equal either way).

    `prior`: the document of the evaluation this one's was made from (same registry), and
    `changed` the positions in `ev.sites` whose totals are new since (`Tally.changed`).
    """

    def __init__(
        self,
        ev: Evaluation,
        index: FleetIndex,
        prior: Document | None = None,
        changed: Sequence[int] = (),
    ) -> None:
        # `index` positions are those of the registry's sites, which `ev.sites` follows.
        assert len(ev.sites) == len(index.site_pos), "evaluation and index of different fleets"
        self._ev, self._index = ev, index
        self._head = evaluation_head(ev)
        self._full: dict[str, Any] | None = None
        self._bodies = Bodies()
        if prior is not None and (prior._index is not index or prior._ev.h100e_tpp != ev.h100e_tpp):
            prior = None
        if prior is not None and prior._ev.checks is ev.checks:  # the engine kept every check
            self._checks: list[Check] = prior._checks
        else:
            self._checks = ordered_checks(ev.checks)
        self._scopes = [c.scope for c in self._checks]
        self._by_country: dict[str, list[int]]
        self._by_owner: dict[str, list[int]]
        self._with_site: list[int]
        same_places = prior is not None and prior._scopes == self._scopes
        if prior is not None and same_places:
            self._by_country, self._by_owner = prior._by_country, prior._by_owner
            self._with_site = prior._with_site
        else:
            self._by_country, self._by_owner, self._with_site = _check_index(self._scopes)
        n_sites, n_checks = len(ev.sites), len(self._checks)
        self._site_dicts: list[dict[str, Any] | None] = [None] * n_sites
        self._site_json: list[bytes | None] = [None] * n_sites
        # The JSON of `_BLOCK` consecutive sites' entries, joined: the whole document is joined
        # from these, so after a change only the changed sites' blocks are joined again.
        self._site_blocks: list[bytes | None] = [None] * -(-n_sites // _BLOCK)
        self._check_dicts: list[dict[str, Any] | None] = [None] * n_checks
        self._check_json: list[bytes | None] = [None] * n_checks
        if prior is not None:
            self._take_over(prior, changed, same_places)

    def _take_over(self, prior: Document, changed: Sequence[int], same_places: bool) -> None:
        """The prior document's entries for the sites and checks that did not change."""
        self._site_dicts, self._site_json = list(prior._site_dicts), list(prior._site_json)
        self._site_blocks = list(prior._site_blocks)
        for i in changed:
            self._site_dicts[i] = self._site_json[i] = self._site_blocks[i // _BLOCK] = None
        if same_places:  # the same checks in the same places, mostly
            same = [a is b for a, b in zip(prior._checks, self._checks, strict=True)]
            self._check_dicts = [
                d if k else None for d, k in zip(prior._check_dicts, same, strict=True)
            ]
            self._check_json = [
                j if k else None for j, k in zip(prior._check_json, same, strict=True)
            ]
            return
        known = {id(c): i for i, c in enumerate(prior._checks)}
        for j, check in enumerate(self._checks):
            at = known.get(id(check))
            if at is not None and prior._checks[at] is check:  # `prior` holds it: same object
                self._check_dicts[j] = prior._check_dicts[at]
                self._check_json[j] = prior._check_json[at]

    # -- answers --------------------------------------------------------------------------
    def full(self) -> dict[str, Any]:
        """The whole `evaluation_to_dict` document."""
        if self._full is None:
            self._full = {
                **self._head,
                "checks": [self._check(i) for i in range(len(self._checks))],
                "sites": [self._site(i) for i in range(len(self._ev.sites))],
            }
        return self._full

    def answer(self, entity: str | None, requested: tuple[str, str] | None) -> dict[str, Any]:
        """`views.filtered(self.full(), index, entity, requested)`, built from the parts in it."""
        if entity is None and requested is None:
            return dict(self.full())
        checks, sites = self._select(entity, requested)
        return scoped(self._head, [self._check(i) for i in checks], [self._site(i) for i in sites])

    def body(self, entity: str | None, requested: tuple[str, str] | None) -> bytes:
        """`json.dumps(self.answer(entity, requested)).encode()`, cached."""
        key: Ask = (entity, requested)
        hit = self._bodies.get(key)
        if hit is not None:
            return hit
        if entity is None and requested is None:
            checks: Sequence[int] = range(len(self._checks))
            head = self._head
            sites = self._blocks()
        else:
            checks, positions = self._select(entity, requested)
            head = {**self._head, "verdict": verdict(self._checks[i].status for i in checks)}
            sites = [self._site_json[i] or self._site_fragment(i) for i in positions]
        check_json = [self._check_json[i] or self._check_fragment(i) for i in checks]
        pieces = [json.dumps(head)[:-1].encode(), b', "checks": [', b", ".join(check_json)]
        pieces.append(b'], "sites": [')
        for k, part in enumerate(sites):  # one copy of the (megabytes of) sites' JSON
            if k:
                pieces.append(b", ")
            pieces.append(part)
        pieces.append(b"]}")
        return self._bodies.put(key, b"".join(pieces))

    # -- selection ------------------------------------------------------------------------
    def _select(
        self, entity: str | None, requested: tuple[str, str] | None
    ) -> tuple[list[int], list[int]]:
        """Positions of the checks and sites in one scoped answer, in document order."""
        cut = Cut(self._index, entity, requested)
        checks = [i for i in self._check_candidates(cut) if cut.check(self._checks[i].scope)]
        totals = self._ev.sites
        sites = [i for i in self._site_candidates(cut) if cut.site(totals[i].id, totals[i].entity)]
        return checks, sites

    def _check_candidates(self, cut: Cut) -> list[int]:
        """Positions of every check the answer may hold (a superset, in document order)."""
        index = self._index
        found = set(self._with_site)
        if cut.requested is None:
            assert cut.entity is not None
            found.update(self._by_owner.get(cut.entity, ()))
            for country in index.entity_countries.get(cut.entity, ()):
                found.update(self._by_country.get(country, ()))
            return sorted(found)
        kind, value = cut.requested
        if kind == "country":
            found.update(self._by_country.get(value, ()))
        elif kind == "entity":
            found.update(self._by_owner.get(value, ()))
        else:
            found.update(self._by_country.get(index.site_country[value], ()))
            found.update(self._by_owner.get(index.sites[value].entity, ()))
        return sorted(found)

    def _site_candidates(self, cut: Cut) -> tuple[int, ...]:
        """Positions in `Evaluation.sites` of every site the answer may hold (a superset)."""
        index = self._index
        if cut.requested is None:
            assert cut.entity is not None
            return index.pos_by_entity.get(cut.entity, ())
        kind, value = cut.requested
        if kind == "country":
            return index.pos_by_country.get(value, ())
        if kind == "entity":
            return index.pos_by_entity.get(value, ())
        return (index.site_pos[value],)

    # -- entries and fragments ------------------------------------------------------------
    def _check(self, i: int) -> dict[str, Any]:
        out = self._check_dicts[i]
        if out is None:
            ev = self._ev
            out = self._check_dicts[i] = check_to_dict(self._checks[i], ev.h100e_tpp, ev.ruleset.id)
        return out

    def _site(self, i: int) -> dict[str, Any]:
        out = self._site_dicts[i]
        if out is None:
            out = self._site_dicts[i] = site_to_dict(self._ev.sites[i], self._ev.h100e_tpp)
        return out

    def _check_fragment(self, i: int) -> bytes:
        out = self._check_json[i] = json.dumps(self._check(i)).encode()
        return out

    def _site_fragment(self, i: int) -> bytes:
        out = self._site_json[i] = json.dumps(self._site(i)).encode()
        return out

    def _blocks(self) -> list[bytes]:
        """Every block of site entries' JSON, joined where this document has not yet."""
        blocks = self._site_blocks
        for k in [k for k, b in enumerate(blocks) if b is None]:
            held = self._site_json[k * _BLOCK : (k + 1) * _BLOCK]
            start = k * _BLOCK
            blocks[k] = b", ".join(j or self._site_fragment(start + i) for i, j in enumerate(held))
        return cast(list[bytes], list(blocks))  # blocks are only ever filled in


def _check_index(
    scopes: Sequence[str],
) -> tuple[dict[str, list[int]], dict[str, list[int]], list[int]]:
    """Positions of checks (by their scopes) by the country and by the owners (entity,
    consignee) their scope names, and those naming a site or a licence."""
    by_country: dict[str, list[int]] = {}
    by_owner: dict[str, list[int]] = {}
    with_site: list[int] = []
    for i, scope in enumerate(scopes):
        parts = scope_parts(scope)
        if "country" in parts:
            by_country.setdefault(parts["country"], []).append(i)
        for kind in ("entity", "consignee"):
            if kind in parts:
                by_owner.setdefault(parts[kind], []).append(i)
        if "site" in parts or "licence" in parts:  # few: always candidates, `Cut` decides
            with_site.append(i)
    return by_country, by_owner, with_site
