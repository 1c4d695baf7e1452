"""Pure views over the ledger's projections: the engine's Fleet, scopes, and what-if fleets.

Scopes are the engine's strings: `country:XX`, `entity:E`, `entity:E/country:XX`,
`consignee:E/year:Y`, `site:S`, `licence:L`; a request may name `country:XX`, `entity:E` or
`site:S`. An operator limited to entity E sees the checks whose entity parts all name E, the
checks of E's sites and licences, and the country checks of the countries where E has sites. A
requested site or country takes in the checks of the sites there and of the licences that name
them (a site: only its entity's licences); a requested entity, those of its sites and licences.
The engine names a territory's checks by the country the rule pack treats it as (a site in HK
has `country:CN` checks), so every country here is compared after that resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from fractions import Fraction
from typing import Any, NoReturn

from gpucap.core.catalogue import Catalogue
from gpucap.core.classify import INDETERMINATE, classify
from gpucap.core.engine import Check, Evaluation
from gpucap.core.fleet import Fleet, Line, Site
from gpucap.core.report import ordered_checks, tpp_number
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.models import Placement, WhatIf

_ENTITY_KINDS = ("entity", "consignee")


def with_observed(registry: Fleet, observed: Iterable[Line]) -> Fleet:
    """The registry's fleet plus the observed lines."""
    return replace(registry, lines=registry.lines + tuple(observed))


def scope_parts(scope: str) -> dict[str, str]:
    """`entity:E/country:XX` -> {"entity": "E", "country": "XX"}."""
    parts: dict[str, str] = {}
    for part in scope.split("/"):
        kind, _, value = part.partition(":")
        parts[kind] = value
    return parts


def normal_scope(scope: str) -> str:
    """`scope` with its country codes upper-cased (`entity:E/country:ae` -> `.../country:AE`),
    as the engine writes them."""
    parts = scope.split("/")
    return "/".join("country:" + p[8:].upper() if p.startswith("country:") else p for p in parts)


@dataclass(frozen=True)
class FleetIndex:
    """Look-ups over a fleet's registry, built once per registry and pack (10,000s of sites).

    `countries` maps every code a site names, and every code those are treated as, to the
    country the engine's checks use (HK -> CN, CN -> CN); `site_country` is a site's resolved
    country; `entity_countries` holds both the raw and the resolved codes of an entity's sites.
    """

    sites: Mapping[str, Site]
    site_country: Mapping[str, str]
    entity_countries: Mapping[str, frozenset[str]]
    entities: frozenset[str]
    countries: Mapping[str, str]
    # Positions in `fleet.sites` (the engine's `Evaluation.sites` order) for scoped documents.
    site_pos: Mapping[str, int]
    pos_by_country: Mapping[str, tuple[int, ...]]  # by resolved country
    pos_by_entity: Mapping[str, tuple[int, ...]]
    # licence id -> (licensee, the sites it names, the resolved countries it names)
    licences: Mapping[str, tuple[str, frozenset[str], frozenset[str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, fleet: Fleet, resolve: Callable[[str], str]) -> FleetIndex:
        """`resolve` is the rule pack's `tiers.resolve` (territory -> the country it counts as)."""
        resolved = {c: resolve(c) for c in {s.country for s in fleet.sites}}
        by_entity: dict[str, set[str]] = {}
        at_country: dict[str, list[int]] = {}
        of_entity: dict[str, list[int]] = {}
        for i, s in enumerate(fleet.sites):
            by_entity.setdefault(s.entity, set()).update((s.country, resolved[s.country]))
            at_country.setdefault(resolved[s.country], []).append(i)
            of_entity.setdefault(s.entity, []).append(i)
        return cls(
            sites={s.id: s for s in fleet.sites},
            site_country={s.id: resolved[s.country] for s in fleet.sites},
            entity_countries={e: frozenset(c) for e, c in by_entity.items()},
            entities=frozenset(e.id for e in fleet.entities),
            countries={**{c: c for c in resolved.values()}, **resolved},
            site_pos={s.id: i for i, s in enumerate(fleet.sites)},
            pos_by_country={c: tuple(p) for c, p in at_country.items()},
            pos_by_entity={e: tuple(p) for e, p in of_entity.items()},
            licences={
                lic.id: (lic.licensee, lic.sites, frozenset(resolve(c) for c in lic.countries))
                for lic in fleet.licences
            },
        )

    def licence_at(self, licence: str, site_id: str) -> bool:
        """Whether a licence is held by the site's entity and names the site or its country."""
        held = self.licences.get(licence)
        site = self.sites.get(site_id)
        if held is None or site is None or held[0] != site.entity:
            return False
        return site_id in held[1] or self.site_country[site_id] in held[2]

    def licence_in(self, licence: str, country: str) -> bool:
        """Whether a licence names a (resolved) country or a site in it."""
        held = self.licences.get(licence)
        if held is None:
            return False
        return country in held[2] or any(self.site_country.get(s) == country for s in held[1])


def can_see(scope: str, entity: str | None, index: FleetIndex) -> bool:
    """Whether an operator limited to `entity` (None: everything) may see a check's scope."""
    if entity is None:
        return True
    parts = scope_parts(scope)
    owners = [parts[k] for k in _ENTITY_KINDS if k in parts]
    if owners:
        return all(o == entity for o in owners)
    if "licence" in parts:  # a licence is its licensee's
        held = index.licences.get(parts["licence"])
        return held is not None and held[0] == entity
    if "site" in parts:
        site = index.sites.get(parts["site"])
        return site is not None and site.entity == entity
    if "country" in parts:
        return parts["country"] in index.entity_countries.get(entity, frozenset())
    return False


def parse_request_scope(
    scope: str, index: FleetIndex, entity: str | None = None
) -> tuple[str, str]:
    """Validate a requested scope; RejectedError (422) when it names nothing in the registry.

    A country is answered as the country the rule pack treats it as: `country:HK` is
    `country:CN`, whose checks bind a site in HK. Its code is case-insensitive (`country:ae`).
    For an operator limited to `entity`, a scope that names nothing is refused exactly like one
    it may not see (403): otherwise the difference would tell it which other entities, sites and
    countries exist.
    """
    kind, sep, value = scope.partition(":")
    if not sep or kind not in ("country", "entity", "site") or not value:
        raise RejectedError("scope", "expected country:XX, entity:E or site:S")
    if kind == "country":
        value = value.upper()
        if value not in index.countries:
            _unknown(entity, kind, value, f"no site in country {value!r} in the registry")
        return kind, index.countries[value]
    known = index.entities if kind == "entity" else index.sites
    if value not in known:
        _unknown(entity, kind, value, f"no {kind} {value!r} in the registry")
    return kind, value


def _unknown(entity: str | None, kind: str, value: str, reason: str) -> NoReturn:
    if entity is not None:
        raise _forbidden(entity, kind, value)
    raise RejectedError("scope", reason)


def _forbidden(entity: str, kind: str, value: str) -> AuthError:
    return AuthError(
        403, "scope_forbidden", f"operator token for {entity!r} may not see {kind}:{value}"
    )


def matches(scope: str, requested: tuple[str, str], index: FleetIndex) -> bool:
    """Whether a check belongs to a requested scope (a site: its entity's and country's checks).

    A requested country is a resolved one (see `parse_request_scope`).
    """
    kind, value = requested
    parts = scope_parts(scope)
    if "licence" in parts:
        licence = parts["licence"]
        if kind == "country":
            return index.licence_in(licence, value)
        if kind == "entity":
            held = index.licences.get(licence)
            return held is not None and held[0] == value
        return index.licence_at(licence, value)
    if "site" in parts:
        checked = index.sites.get(parts["site"])
        if checked is None:
            return False
        if kind == "country":
            return index.site_country[checked.id] == value
        return (checked.entity if kind == "entity" else checked.id) == value
    if kind == "country":
        return parts.get("country") == value
    if kind == "entity":
        return any(parts.get(k) == value for k in _ENTITY_KINDS)
    site = index.sites[value]
    country = index.site_country[value]
    owners = [parts[k] for k in _ENTITY_KINDS if k in parts]
    if owners:
        return all(o == site.entity for o in owners) and parts.get("country", country) == country
    return parts.get("country") == country


def require_visible(requested: tuple[str, str], entity: str | None, index: FleetIndex) -> None:
    """AuthError(403) when an entity-limited operator asks for a scope it may not see."""
    if entity is None:
        return
    kind, value = requested
    if kind == "entity":
        ok = value == entity
    elif kind == "site":
        site = index.sites.get(value)
        ok = site is not None and site.entity == entity
    else:
        ok = value in index.entity_countries.get(entity, frozenset())
    if not ok:
        raise _forbidden(entity, kind, value)


@dataclass(frozen=True)
class Cut:
    """What one caller sees of what it asked for: the one definition of the checks and sites of
    a scoped answer (`entity`: the token's entity limit; `requested`: a parsed scope)."""

    index: FleetIndex
    entity: str | None
    requested: tuple[str, str] | None

    @property
    def everything(self) -> bool:
        return self.entity is None and self.requested is None

    def check(self, scope: str) -> bool:
        """Whether a check of this scope is in the answer."""
        if not can_see(scope, self.entity, self.index):
            return False
        return self.requested is None or matches(scope, self.requested, self.index)

    def site(self, site_id: str, entity: str) -> bool:
        """Whether a site (its id and entity) is in the answer."""
        if self.entity is not None and entity != self.entity:
            return False
        if self.requested is None:
            return True
        kind, value = self.requested
        if kind == "country":  # `value` is resolved; a site names its own code
            return self.index.site_country.get(site_id) == value
        return (entity if kind == "entity" else site_id) == value


def verdict(statuses: Iterable[str]) -> str:
    """A document's verdict over the statuses of the checks in it."""
    return "breach" if any(s == "breach" for s in statuses) else "ok"


def scoped(
    doc: Mapping[str, Any], checks: list[dict[str, Any]], sites: list[dict[str, Any]]
) -> dict[str, Any]:
    """An `evaluation_to_dict` document (or its head) with only these checks and sites, and the
    verdict over them."""
    return {
        **doc,
        "verdict": verdict(c["status"] for c in checks),
        "checks": checks,
        "sites": sites,
    }


def filtered(
    doc: Mapping[str, Any],
    index: FleetIndex,
    entity: str | None,
    requested: tuple[str, str] | None,
) -> dict[str, Any]:
    """An `evaluation_to_dict` document cut to the checks and sites the caller may see and
    asked for (`Cut`); the verdict is recomputed over what is left."""
    cut = Cut(index, entity, requested)
    if cut.everything:
        return dict(doc)
    return scoped(
        doc,
        [c for c in doc["checks"] if cut.check(str(c["scope"]))],
        [s for s in doc["sites"] if cut.site(str(s["id"]), str(s["entity"]))],
    )


def _resolve(item: Placement, path: str, catalogue: Catalogue) -> tuple[Fraction, str, str | None]:
    if item.model is not None:
        acc = catalogue.get(item.model)
        if acc is None:
            raise RejectedError(f"{path}.model", f"unknown model {item.model!r}")
        return Fraction(acc.tpp), acc.eccn_class, acc.id
    assert item.tpp is not None
    cls = classify(Fraction(item.tpp), None, True, catalogue.thresholds).eccn_class
    if cls == INDETERMINATE:
        raise RejectedError(f"{path}.tpp", "performance density decides its class; give a model")
    return Fraction(item.tpp), cls, None


def _active(line: Line, on: date) -> bool:
    return line.installed <= on and (line.removed is None or line.removed > on)


def whatif_fleet(fleet: Fleet, req: WhatIf, as_of: date, catalogue: Catalogue) -> Fleet:
    """The fleet after the request's additions (installed on `as_of`) and removals (on `as_of`)."""
    sites = {s.id for s in fleet.sites}
    lines = list(fleet.lines)
    for name, items in (("add", req.add), ("remove", req.remove)):
        for i, item in enumerate(items):
            path = f"{name}[{i}]"
            if item.site not in sites:
                raise RejectedError(f"{path}.site", f"no site {item.site!r} in the registry")
            tpp, cls, model = _resolve(item, path, catalogue)
            if name == "add":
                lines.append(Line(item.site, item.count, tpp, cls, as_of, None, "standard", model))
                continue
            left = item.count
            for j, ln in enumerate(lines):
                if left == 0:
                    break
                same = ln.model == model if model is not None else ln.tpp_per_device == tpp
                if ln.site != item.site or not same or not _active(ln, as_of):
                    continue
                take = min(left, ln.count)
                left -= take
                gone = replace(ln, count=take, removed=as_of)
                lines[j] = replace(ln, count=ln.count - take)
                lines.append(gone)
            if left:
                raise RejectedError(
                    f"{path}.count", f"only {item.count - left} such devices at {item.site}"
                )
    return replace(fleet, lines=tuple(ln for ln in lines if ln.count > 0))


def whatif_answer(
    before: Evaluation,
    after: Evaluation,
    visible: Callable[[Check], bool],
    to_dict: Callable[[Check], dict[str, Any]],
) -> dict[str, Any]:
    """`allowed`: no check (visible or not) breaches after the change where it got worse.

    `binding`: when not allowed, the visible check that blocks with the least headroom left;
    otherwise the visible check the change moved with the least headroom left (None if none).
    """
    old = {(c.rule, c.scope): c for c in before.checks}
    moved, blocking = [], []
    for c in after.checks:
        prior = old.get((c.rule, c.scope))
        if prior is not None and prior.headroom_tpp == c.headroom_tpp:
            continue
        blocks = c.status == "breach" and (prior is None or c.headroom_tpp < prior.headroom_tpp)
        if blocks:
            blocking.append(c)
        if visible(c):
            moved.append(c)
    allowed = not blocking
    shown = [c for c in blocking if visible(c)] if blocking else moved
    binding = min(shown, key=lambda c: c.headroom_tpp, default=None)
    return {
        "allowed": allowed,
        "binding": None
        if binding is None
        else {
            "rule": binding.rule,
            "scope": binding.scope,
            "headroom_tpp": tpp_number(binding.headroom_tpp),
        },
        "before": [to_dict(c) for c in ordered_checks(before.checks) if visible(c)],
        "after": [to_dict(c) for c in ordered_checks(after.checks) if visible(c)],
    }
