"""The fleet the engine evaluates: countries, entities, sites and inventory lines.

Plain frozen values. The scenario file (`scenario.py`) and the ledger both build a `Fleet`; the
engine (`engine.py`) reads one. TPP is a `Fraction` so that share arithmetic is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from typing import Literal

EntityStatus = Literal["none", "nveu", "uveu"]
Basis = Literal["standard", "lpp"]
ENTITY_STATUSES: tuple[EntityStatus, ...] = ("none", "nveu", "uveu")
BASES: tuple[Basis, ...] = ("standard", "lpp")


@dataclass(frozen=True)
class CountryFacts:
    """Per-country facts a rule pack may ask about."""

    code: str
    gov_agreement: bool = False


@dataclass(frozen=True)
class Entity:
    """An owner of compute; `nveu_countries` are the countries of its NVEU authorisation;
    `parent` the id of the entity that controls it (chains end at an entity without one)."""

    id: str
    headquarters: str
    status: EntityStatus = "none"
    nveu_countries: frozenset[str] = frozenset()
    parent: str | None = None


@dataclass(frozen=True)
class Site:
    """A datacentre location of one entity, in one country (ISO 3166-1 alpha-2)."""

    id: str
    entity: str
    country: str


@dataclass(frozen=True)
class Line:
    """`count` identical devices at a site, present from `installed` (inclusive) until `removed`.

    `tpp_per_device` and `eccn_class` are resolved already (from the catalogue or given inline).
    """

    site: str
    count: int
    tpp_per_device: Fraction
    eccn_class: str
    installed: date
    removed: date | None = None
    basis: Basis = "standard"
    model: str | None = None
    licence: str | None = None  # the licence the line is deployed under (declared or by serial)
    observed: bool = False  # its licence comes from shipped serials seen by the ledger

    @property
    def tpp(self) -> Fraction:
        """Total TPP of the line."""
        return self.tpp_per_device * self.count


@dataclass(frozen=True)
class Licence:
    """An export licence held by `licensee` for the sites it names and/or the sites in the
    countries it names, valid from `valid_from` through `valid_until` (inclusive; None: open).

    The quantity is `limit_tpp`, or `limit_units` devices of the catalogue model `unit_model`,
    whose TPP (`unit_tpp`) the scenario resolves. `classes` None: the pack's licensable classes.
    A named site may belong to an entity other than the licensee: valid input, which the rules
    report as not covered.
    """

    id: str
    licensee: str
    sites: frozenset[str]
    countries: frozenset[str]
    valid_from: date
    valid_until: date | None = None
    limit_tpp: Fraction | None = None
    limit_units: int | None = None
    unit_model: str | None = None
    unit_tpp: Fraction | None = None
    classes: frozenset[str] | None = None
    conditions: str | None = None


@dataclass(frozen=True)
class Shipment:
    """Devices shipped under a licence to a site, by serial."""

    id: str
    licence: str
    site: str
    shipped: date
    model: str
    serials: tuple[str, ...]


@dataclass(frozen=True)
class Fleet:
    """Everything the engine needs besides the rule packs and the date.

    `ruleset` is the first of `rulesets`, the packs evaluated together (in the order given)."""

    ruleset: str
    entities: tuple[Entity, ...]
    sites: tuple[Site, ...]
    lines: tuple[Line, ...]
    countries: Mapping[str, CountryFacts] = field(default_factory=dict)
    as_of: date | None = None  # the date the scenario names, if any
    rulesets: tuple[str, ...] = ()  # () means (ruleset,)
    licences: tuple[Licence, ...] = ()
    shipments: tuple[Shipment, ...] = ()

    @property
    def packs(self) -> tuple[str, ...]:
        """The ids of the packs to evaluate, in order."""
        return self.rulesets or (self.ruleset,)
