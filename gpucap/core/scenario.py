"""The scenario file (YAML; JSON is valid YAML) turned into a validated `Fleet`.

The file's shape is checked by pydantic models (unknown fields are errors); references between
sections, catalogue models and country codes are checked after. Every problem becomes one
`InputError` naming the field path, e.g. ``inventory[2].count: must be at least 1``.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gpucap.core.catalogue import Catalogue, default_catalogue
from gpucap.core.classify import INDETERMINATE, classify
from gpucap.core.data import parse_day, read_yaml
from gpucap.core.errors import InputError
from gpucap.core.fleet import CountryFacts, Entity, Fleet, Line, Site
from gpucap.core.ruleset import country_codes


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Country(_Model):
    gov_agreement: bool = False


class _Entity(_Model):
    id: Ident
    headquarters: Code
    status: Literal["none", "nveu", "uveu"] = "none"
    nveu_countries: list[Code] = Field(default_factory=list)


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


class _Scenario(_Model):
    ruleset: Ident
    as_of: Day | None = None
    countries: dict[str, _Country] = Field(default_factory=dict)
    entities: list[_Entity] = Field(default_factory=list)
    sites: list[_Site] = Field(default_factory=list)
    inventory: list[_Line] = Field(default_factory=list)


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
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'].rstrip('.').lower()} (got {err.get('input')!r})"


def _check_code(code: str, path: str, valid: frozenset[str]) -> None:
    if code not in valid:
        raise InputError(path, f"not an ISO 3166-1 alpha-2 country code: {code!r}")


def parse_scenario(doc: Any, catalogue: Catalogue | None = None, origin: str = "scenario") -> Fleet:
    """Validate a parsed scenario document and resolve every inventory line's TPP and class."""
    catalogue = catalogue or default_catalogue()
    if not isinstance(doc, dict):
        raise InputError("(top level)", f"{origin} must be a mapping with ruleset, entities, ...")
    try:
        raw = _Scenario.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(_loc(first["loc"]), _message(first)) from None
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
        entities[e.id] = Entity(e.id, e.headquarters, e.status, frozenset(e.nveu_countries))

    sites: dict[str, Site] = {}
    for i, s in enumerate(raw.sites):
        path = f"sites[{i}]"
        if s.id in sites:
            raise InputError(f"{path}.id", f"duplicate site id {s.id!r}")
        if s.entity not in entities:
            raise InputError(f"{path}.entity", f"no entity with id {s.entity!r}")
        _check_code(s.country, f"{path}.country", valid)
        sites[s.id] = Site(s.id, s.entity, s.country)

    resolved: dict[object, tuple[Fraction, str]] = {}
    lines = tuple(
        _line(item, f"inventory[{i}]", sites, catalogue, resolved)
        for i, item in enumerate(raw.inventory)
    )
    countries = {c: CountryFacts(c, f.gov_agreement) for c, f in raw.countries.items()}
    return Fleet(
        raw.ruleset, tuple(entities.values()), tuple(sites.values()), lines, countries, raw.as_of
    )


def _line(
    item: _Line,
    path: str,
    sites: dict[str, Site],
    catalogue: Catalogue,
    resolved: dict[object, tuple[Fraction, str]],
) -> Line:
    """One inventory line; `resolved` keeps the TPP and class of each model or inline TPP/area
    seen so far (thousands of lines share a few)."""
    if item.site not in sites:
        raise InputError(f"{path}.site", f"no site with id {item.site!r}")
    if item.removed is not None and item.removed <= item.installed:
        raise InputError(f"{path}.removed", "must be after installed")
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
    )


def load_scenario(path: Path, catalogue: Catalogue | None = None) -> Fleet:
    """Read and validate a scenario file."""
    return parse_scenario(read_yaml(path, error=InputError), catalogue, path.name)
