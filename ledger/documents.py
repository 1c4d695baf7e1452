"""The `/v1/headroom` document of one cached evaluation, built in parts and on demand.

A scoped answer (a `scope`, or an entity-limited token) builds only the checks and sites that
can be in it, found through indexes by country, entity and site made once per evaluation (checks)
or per registry (sites, in `FleetIndex`); the whole-fleet document is built on its first request.
Answers are exactly those of `views.filtered` over the whole document.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from typing import Any

from gpucap.core.engine import Check, Evaluation, SiteTotal
from gpucap.core.report import check_to_dict, evaluation_head, ordered_checks, site_to_dict
from gpucap.ledger.views import FleetIndex, can_see, filtered, matches, scope_parts


class SiteDocs:
    """The JSON entries of recent documents' sites, by the identity of their SiteTotal (the
    engine's memo hands back the same SiteTotal for an unchanged site). Entries are shared
    between documents and never modified."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._h100e_tpp: Fraction | None = None
        self._entries: dict[int, tuple[SiteTotal, dict[str, Any]]] = {}

    def entries(self, ev: Evaluation) -> list[dict[str, Any]]:
        """`site_to_dict` of each of `ev.sites`, reusing earlier documents' where it can; keeps
        only these afterwards."""
        with self._lock:
            same = self._h100e_tpp == ev.h100e_tpp
            known = self._entries if same else {}
        out: list[dict[str, Any]] = []
        used: dict[int, tuple[SiteTotal, dict[str, Any]]] = {}
        for site in ev.sites:
            hit = known.get(id(site))
            # `known` holds its SiteTotals alive, so an id found there is that object's.
            if hit is not None and hit[0] is site:
                entry = hit[1]
            else:
                entry = site_to_dict(site, ev.h100e_tpp)
            used[id(site)] = (site, entry)
            out.append(entry)
        with self._lock:
            self._h100e_tpp, self._entries = ev.h100e_tpp, used
        return out

    def entry(self, site: SiteTotal, h100e_tpp: Fraction, limit: int) -> dict[str, Any]:
        """One site's entry, kept for later documents (all dropped past `limit` entries)."""
        with self._lock:
            if self._h100e_tpp != h100e_tpp or len(self._entries) >= limit:
                self._h100e_tpp, self._entries = h100e_tpp, {}
            hit = self._entries.get(id(site))
            if hit is not None and hit[0] is site:
                return hit[1]
            entry = site_to_dict(site, h100e_tpp)
            self._entries[id(site)] = (site, entry)
            return entry


class Document:
    """One evaluation's document; safe to share between threads (parts built twice at worst,
    equal either way)."""

    def __init__(self, ev: Evaluation, index: FleetIndex, site_docs: SiteDocs) -> None:
        # `index` positions are those of the registry's sites, which `ev.sites` follows.
        assert len(ev.sites) == len(index.site_pos), "evaluation and index of different fleets"
        self._ev, self._index, self._site_docs = ev, index, site_docs
        self._checks: list[Check] = ordered_checks(ev.checks)
        self._check_dicts: list[dict[str, Any] | None] = [None] * len(self._checks)
        self._full: dict[str, Any] | None = None
        self._head = evaluation_head(ev)
        # Positions in `_checks` by the country and the owners (entity, consignee) their scope
        # names; checks naming a site go to `_with_site` (the engine makes none today).
        by_country: dict[str, list[int]] = {}
        by_owner: dict[str, list[int]] = {}
        self._with_site: list[int] = []
        for i, check in enumerate(self._checks):
            parts = scope_parts(check.scope)
            if "country" in parts:
                by_country.setdefault(parts["country"], []).append(i)
            for kind in ("entity", "consignee"):
                if kind in parts:
                    by_owner.setdefault(parts[kind], []).append(i)
            if "site" in parts:
                self._with_site.append(i)
        self._by_country, self._by_owner = by_country, by_owner

    def full(self) -> dict[str, Any]:
        """The whole `evaluation_to_dict` document."""
        if self._full is None:
            self._full = {
                **self._head,
                "checks": [self._check(i) for i in range(len(self._checks))],
                "sites": self._site_docs.entries(self._ev),
            }
        return self._full

    def answer(self, entity: str | None, requested: tuple[str, str] | None) -> dict[str, Any]:
        """`views.filtered(self.full(), index, entity, requested)`, built from the parts in it."""
        if entity is None and requested is None:
            return dict(self.full())
        if self._full is not None:
            return filtered(self._full, self._index, entity, requested)
        index = self._index
        checks = [
            self._check(i)
            for i in self._check_candidates(entity, requested)
            if can_see(self._checks[i].scope, entity, index)
            and (requested is None or matches(self._checks[i].scope, requested, index))
        ]
        sites = self._ev.sites
        limit = 2 * len(sites) + 1024
        h100e = self._ev.h100e_tpp
        return {
            **self._head,
            "verdict": "breach" if any(c["status"] == "breach" for c in checks) else "ok",
            "checks": checks,
            "sites": [
                self._site_docs.entry(sites[i], h100e, limit)
                for i in self._site_positions(entity, requested)
                if entity is None or sites[i].entity == entity
            ],
        }

    def _check(self, i: int) -> dict[str, Any]:
        out = self._check_dicts[i]
        if out is None:
            out = check_to_dict(self._checks[i], self._ev.h100e_tpp)
            self._check_dicts[i] = out
        return out

    def _check_candidates(self, entity: str | None, requested: tuple[str, str] | None) -> list[int]:
        """Positions of every check the answer may hold (a superset, in document order)."""
        index = self._index
        if requested is None:
            assert entity is not None
            found = set(self._by_owner.get(entity, ()))
            for country in index.entity_countries.get(entity, ()):
                found.update(self._by_country.get(country, ()))
            found.update(self._with_site)
            return sorted(found)
        kind, value = requested
        if kind == "country":
            return self._by_country.get(value, [])
        if kind == "entity":
            return self._by_owner.get(value, [])
        site = index.sites[value]
        found = set(self._by_country.get(index.site_country[value], ()))
        found.update(self._by_owner.get(site.entity, ()))
        return sorted(found)

    def _site_positions(
        self, entity: str | None, requested: tuple[str, str] | None
    ) -> tuple[int, ...]:
        """Positions in `Evaluation.sites` of the sites asked for (before the token's limit)."""
        index = self._index
        if requested is None:
            assert entity is not None
            return index.pos_by_entity.get(entity, ())
        kind, value = requested
        if kind == "country":
            return index.pos_by_country.get(value, ())
        if kind == "entity":
            return index.pos_by_entity.get(value, ())
        return (index.site_pos[value],)
