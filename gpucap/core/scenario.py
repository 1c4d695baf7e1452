"""The scenario file (YAML; JSON is valid YAML) turned into a validated `Fleet`.

The file's shape is checked by pydantic models (unknown fields are errors); references between
sections (entity parents, licences, shipments), catalogue models, ECCN classes and country codes
are checked after. Every problem becomes one `InputError` naming the field path, e.g.
``inventory[2].count: must be at least 1``. What only a rule can judge (a licence naming a site
of another entity, a shipment to a site its licence does not cover) is not an input error: the
rules report it. Over 400 lines: every section of the format is checked here, in one place, so
that each error names its field path the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from gpucap.core.catalogue import Catalogue, default_catalogue
from gpucap.core.classify import INDETERMINATE, classify
from gpucap.core.data import parse_day, read_yaml
from gpucap.core.errors import InputError
from gpucap.core.fleet import CountryFacts, Entity, Fleet, Licence, Line, Shipment, Site
from gpucap.core.ruleset import RulePack, country_codes, load_ruleset
from gpucap.core.text import control_character


@lru_cache(maxsize=4096)
def _day_text(text: str) -> date:
    return parse_day(text)


def _day(value: Any) -> date:
    """`parse_day`, read once per distinct text: a large inventory repeats its dates."""
    return _day_text(value) if type(value) is str else parse_day(value)


Day = Annotated[date, BeforeValidator(_day)]
Ident = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
Code = Annotated[str, Field(min_length=2, max_length=2)]


def _serial(text: str) -> str:
    reason = control_character(text)
    if reason is not None:
        raise ValueError(f"contains a {reason}")
    if text != text.strip():
        raise ValueError("must not begin or end with whitespace")
    return text


def _free_text(text: str) -> str:
    reason = control_character(text, free_text=True)
    if reason is not None:
        raise ValueError(f"contains a {reason}")
    return text


# A device serial as NVML reports it, matched exactly (the ledger attributes devices by it).
Serial = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_serial)]
FreeText = Annotated[str, Field(max_length=2000), AfterValidator(_free_text)]
Tpp = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Country(_Model):
    gov_agreement: bool = False


class _Entity(_Model):
    id: Ident
    headquarters: Code
    status: Literal["none", "nveu", "uveu"] = "none"
    nveu_countries: list[Code] = Field(default_factory=list)
    parent: Ident | None = None


class _Site(_Model):
    id: Ident
    entity: Ident
    country: Code


class _Line(_Model):
    site: Ident
    model: str | None = None
    tpp: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    die_area_mm2: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    datacenter: bool | None = None
    count: Annotated[int, Field(ge=1)]
    installed: Day
    removed: Day | None = None
    basis: Literal["standard", "lpp"] = "standard"
    licence: Ident | None = None


class _Licence(_Model):
    id: Ident
    licensee: Ident
    sites: list[Ident] = Field(default_factory=list)
    countries: list[Code] = Field(default_factory=list)
    limit_tpp: Tpp | None = None
    limit_units: Annotated[int, Field(ge=1)] | None = None
    unit_model: str | None = None
    valid_from: Day
    valid_until: Day | None = None
    classes: list[str] | None = None
    conditions: FreeText | None = None


class _Shipment(_Model):
    id: Ident
    licence: Ident
    site: Ident
    shipped: Day
    model: str
    serials: Annotated[list[Serial], Field(min_length=1)]


class _Scenario(_Model):
    ruleset: Ident | None = None
    rulesets: list[Ident] | None = None
    as_of: Day | None = None
    countries: dict[str, _Country] = Field(default_factory=dict)
    entities: list[_Entity] = Field(default_factory=list)
    sites: list[_Site] = Field(default_factory=list)
    licences: list[_Licence] = Field(default_factory=list)
    inventory: list[_Line] = Field(default_factory=list)
    shipments: list[_Shipment] = Field(default_factory=list)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part):
            continue  # pydantic's validator frames, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind == "too_short":
        return f"must list at least {ctx.get('min_length')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "string_type" and type(err.get("input")) in (int, float):
        return f"expected text, got the number {err['input']!r} (quote it)"
    return f"{err['msg'].rstrip('.').lower()} (got {err.get('input')!r})"


def _check_code(code: str, path: str, valid: frozenset[str]) -> None:
    if code not in valid:
        raise InputError(path, f"not an ISO 3166-1 alpha-2 country code: {code!r}")


def parse_scenario(doc: Any, catalogue: Catalogue | None = None, origin: str = "scenario") -> Fleet:
    """Validate a parsed scenario document and resolve every inventory line's TPP and class and
    every licence's unit TPP."""
    catalogue = catalogue or default_catalogue()
    if not isinstance(doc, dict):
        raise InputError("(top level)", f"{origin} must be a mapping with ruleset, entities, ...")
    try:
        raw = _Scenario.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(_loc(first["loc"]), _message(first)) from None
    packs = _pack_ids(raw)
    valid = country_codes()
    for code in raw.countries:
        _check_code(code, f"countries.{code}", valid)

    entities: dict[str, Entity] = {}
    for i, e in enumerate(raw.entities):
        path = f"entities[{i}]"
        if e.id in entities:
            raise InputError(f"{path}.id", f"duplicate entity id {e.id!r}")
        _check_code(e.headquarters, f"{path}.headquarters", valid)
        for j, code in enumerate(e.nveu_countries):
            _check_code(code, f"{path}.nveu_countries[{j}]", valid)
        if e.status == "nveu" and not e.nveu_countries:
            raise InputError(f"{path}.nveu_countries", "an NVEU entity needs at least one country")
        if e.status != "nveu" and e.nveu_countries:
            raise InputError(f"{path}.nveu_countries", "only an entity with status nveu has them")
        entities[e.id] = Entity(
            e.id, e.headquarters, e.status, frozenset(e.nveu_countries), e.parent
        )
    _check_parents(entities)

    sites: dict[str, Site] = {}
    for i, s in enumerate(raw.sites):
        path = f"sites[{i}]"
        if s.id in sites:
            raise InputError(f"{path}.id", f"duplicate site id {s.id!r}")
        if s.entity not in entities:
            raise InputError(f"{path}.entity", f"no entity with id {s.entity!r}")
        _check_code(s.country, f"{path}.country", valid)
        sites[s.id] = Site(s.id, s.entity, s.country)

    licences: dict[str, Licence] = {}
    for i, item in enumerate(raw.licences):
        path = f"licences[{i}]"
        if item.id in licences:
            raise InputError(f"{path}.id", f"duplicate licence id {item.id!r}")
        licences[item.id] = _licence(item, path, entities, sites, catalogue, valid)

    resolved: dict[object, tuple[Fraction, str]] = {}
    lines = tuple(
        _line(item, f"inventory[{i}]", sites, licences, catalogue, resolved)
        for i, item in enumerate(raw.inventory)
    )
    shipments = _shipments(raw.shipments, sites, licences, catalogue)
    countries = {c: CountryFacts(c, f.gov_agreement) for c, f in raw.countries.items()}
    return Fleet(
        packs[0],
        tuple(entities.values()),
        tuple(sites.values()),
        lines,
        countries,
        raw.as_of,
        rulesets=packs if raw.rulesets is not None else (),
        licences=tuple(licences.values()),
        shipments=shipments,
    )


def _pack_ids(raw: _Scenario) -> tuple[str, ...]:
    """The ids of `ruleset` or `rulesets` (exactly one of the two), in order."""
    if raw.rulesets is None:
        if raw.ruleset is None:
            raise InputError("ruleset", "required field is missing (or give rulesets: [ID, ...])")
        return (raw.ruleset,)
    if raw.ruleset is not None:
        raise InputError("rulesets", "give ruleset or rulesets, not both")
    if not raw.rulesets:
        raise InputError("rulesets", "must list at least one rule pack")
    _unique(raw.rulesets, "rulesets", "rule pack")
    return tuple(raw.rulesets)


def _unique(items: Sequence[str], path: str, what: str) -> None:
    """InputError naming the second mention of any item listed twice."""
    seen: set[str] = set()
    for j, item in enumerate(items):
        if item in seen:
            raise InputError(f"{path}[{j}]", f"{what} {item!r} is listed twice")
        seen.add(item)


def _check_parents(entities: dict[str, Entity]) -> None:
    """Every parent names an entity and no chain of parents comes back to where it started.
    Each entity is walked once: a chain stops at an entity already known to end."""
    position = {e: i for i, e in enumerate(entities)}
    for e in entities.values():
        if e.parent is not None and e.parent not in entities:
            raise InputError(
                f"entities[{position[e.id]}].parent", f"no entity with id {e.parent!r}"
            )
    ends: set[str] = set()
    for e in entities.values():
        chain: dict[str, int] = {}
        at: str | None = e.id
        while at is not None and at not in ends:
            if at in chain:
                cycle = list(chain)[chain[at] :]
                k = min(range(len(cycle)), key=lambda n: position[cycle[n]])
                cycle = cycle[k:] + cycle[:k]
                raise InputError(
                    f"entities[{position[cycle[0]]}].parent",
                    "parent cycle: " + " -> ".join([*cycle, cycle[0]]),
                )
            chain[at] = len(chain)
            at = entities[at].parent
        ends.update(chain)


def _licence(
    item: _Licence,
    path: str,
    entities: dict[str, Entity],
    sites: dict[str, Site],
    catalogue: Catalogue,
    valid: frozenset[str],
) -> Licence:
    """One licence, its references checked and its unit TPP resolved. A site of an entity other
    than the licensee is accepted: the rules report what such a licence does not cover."""
    if item.licensee not in entities:
        raise InputError(f"{path}.licensee", f"no entity with id {item.licensee!r}")
    if not item.sites and not item.countries:
        raise InputError(path, "give sites or countries (or both): where the licence applies")
    for j, site in enumerate(item.sites):
        if site not in sites:
            raise InputError(f"{path}.sites[{j}]", f"no site with id {site!r}")
    _unique(item.sites, f"{path}.sites", "site")
    for j, code in enumerate(item.countries):
        _check_code(code, f"{path}.countries[{j}]", valid)
    _unique(item.countries, f"{path}.countries", "country")
    if item.valid_until is not None and item.valid_until < item.valid_from:
        raise InputError(f"{path}.valid_until", "must not be before valid_from")
    if item.limit_tpp is not None and item.limit_units is not None:
        raise InputError(path, "give either limit_tpp or limit_units, not both")
    if item.limit_tpp is None and item.limit_units is None:
        raise InputError(path, "give limit_tpp or limit_units (with unit_model): the quantity")
    unit_tpp = None
    if item.limit_units is not None:
        if item.unit_model is None:
            raise InputError(f"{path}.unit_model", "required with limit_units")
        acc = catalogue.get(item.unit_model)
        if acc is None:
            raise InputError(
                f"{path}.unit_model", f"unknown model {item.unit_model!r} (see gpucap catalogue)"
            )
        unit_tpp = Fraction(acc.tpp)
    elif item.unit_model is not None:
        raise InputError(f"{path}.unit_model", "only with limit_units (limit_tpp is in TPP)")
    classes = None
    if item.classes is not None:
        known = sorted({p.eccn_class for p in catalogue.thresholds.paragraphs})
        if not item.classes:
            raise InputError(f"{path}.classes", "must list at least 1 (or leave it out)")
        for j, name in enumerate(item.classes):
            if name not in known:
                raise InputError(
                    f"{path}.classes[{j}]",
                    f"not an ECCN class: {name!r} (known: {', '.join(known)})",
                )
        _unique(item.classes, f"{path}.classes", "class")
        classes = frozenset(item.classes)
    return Licence(
        id=item.id,
        licensee=item.licensee,
        sites=frozenset(item.sites),
        countries=frozenset(item.countries),
        valid_from=item.valid_from,
        valid_until=item.valid_until,
        limit_tpp=None if item.limit_tpp is None else Fraction(str(item.limit_tpp)),
        limit_units=item.limit_units,
        unit_model=item.unit_model if item.limit_units is not None else None,
        unit_tpp=unit_tpp,
        classes=classes,
        conditions=item.conditions,
    )


def _shipments(
    items: list[_Shipment],
    sites: dict[str, Site],
    licences: dict[str, Licence],
    catalogue: Catalogue,
) -> tuple[Shipment, ...]:
    """The shipments, each serial listed once in all of them (a serial names one device, and
    the ledger attributes an observed device to the licence of its shipment)."""
    out: dict[str, Shipment] = {}
    listed: dict[str, str] = {}  # serial -> where it was first listed
    for i, item in enumerate(items):
        path = f"shipments[{i}]"
        if item.id in out:
            raise InputError(f"{path}.id", f"duplicate shipment id {item.id!r}")
        if item.licence not in licences:
            raise InputError(f"{path}.licence", f"no licence with id {item.licence!r}")
        if item.site not in sites:
            raise InputError(f"{path}.site", f"no site with id {item.site!r}")
        if catalogue.get(item.model) is None:
            raise InputError(
                f"{path}.model", f"unknown model {item.model!r} (see gpucap catalogue)"
            )
        for j, serial in enumerate(item.serials):
            where = f"{path}.serials[{j}]"
            first = listed.get(serial)
            if first is not None:
                raise InputError(where, f"serial {serial!r} is listed twice (first at {first})")
            listed[serial] = where
        out[item.id] = Shipment(
            item.id, item.licence, item.site, item.shipped, item.model, tuple(item.serials)
        )
    return tuple(out.values())


def _line(
    item: _Line,
    path: str,
    sites: dict[str, Site],
    licences: dict[str, Licence],
    catalogue: Catalogue,
    resolved: dict[object, tuple[Fraction, str]],
) -> Line:
    """One inventory line; `resolved` keeps the TPP and class of each model or inline TPP/area
    seen so far (thousands of lines share a few)."""
    if item.site not in sites:
        raise InputError(f"{path}.site", f"no site with id {item.site!r}")
    if item.removed is not None and item.removed <= item.installed:
        raise InputError(f"{path}.removed", "must be after installed")
    if item.licence is not None and item.licence not in licences:
        raise InputError(f"{path}.licence", f"no licence with id {item.licence!r}")
    if item.model is not None:
        if item.tpp is not None or item.die_area_mm2 is not None or item.datacenter is not None:
            raise InputError(path, "give either model or tpp/die_area_mm2/datacenter, not both")
        known = resolved.get(item.model)
        if known is None:
            acc = catalogue.get(item.model)
            if acc is None:
                raise InputError(
                    f"{path}.model", f"unknown model {item.model!r} (see gpucap catalogue)"
                )
            known = resolved[item.model] = (Fraction(acc.tpp), acc.eccn_class)
        tpp, eccn_class = known
    else:
        if item.tpp is None:
            raise InputError(path, "give either model or tpp")
        datacenter = True if item.datacenter is None else item.datacenter
        key = (item.tpp, item.die_area_mm2, datacenter)
        known = resolved.get(key)
        if known is None:
            per_device = Fraction(str(item.tpp))
            thresholds = catalogue.thresholds
            found = classify(per_device, item.die_area_mm2, datacenter, thresholds)
            known = resolved[key] = (per_device, found.eccn_class)
        tpp, eccn_class = known
        if eccn_class == INDETERMINATE:
            raise InputError(
                f"{path}.die_area_mm2",
                f"needed to classify TPP {item.tpp:g}: performance density decides",
            )
    return Line(
        site=item.site,
        count=item.count,
        tpp_per_device=tpp,
        eccn_class=eccn_class,
        installed=item.installed,
        removed=item.removed,
        basis=item.basis,
        model=item.model,
        licence=item.licence,
    )


def load_scenario(path: Path, catalogue: Catalogue | None = None) -> Fleet:
    """Read and validate a scenario file."""
    return parse_scenario(read_yaml(path, error=InputError), catalogue, path.name)


def load_packs(ids: Sequence[str], path: str, indexed: bool = True) -> tuple[RulePack, ...]:
    """The shipped packs `ids`, in order. An unknown or repeated id is an InputError naming
    `path` (``rulesets[1]``; with `indexed` false, `path` alone: ``--ruleset``)."""
    packs = []
    for j, pack_id in enumerate(ids):
        where = f"{path}[{j}]" if indexed else path
        if pack_id in ids[:j]:
            raise InputError(where, f"rule pack {pack_id!r} is given twice")
        try:
            packs.append(load_ruleset(pack_id))
        except InputError as exc:
            raise InputError(where, exc.reason) from None
    return tuple(packs)


def fleet_packs(fleet: Fleet) -> tuple[RulePack, ...]:
    """The packs a fleet names (`ruleset` or `rulesets`), errors naming the file's field."""
    if fleet.rulesets:
        return load_packs(fleet.rulesets, "rulesets")
    return load_packs((fleet.ruleset,), "ruleset", indexed=False)
