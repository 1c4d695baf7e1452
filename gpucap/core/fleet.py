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
    """An owner of compute; `nveu_countries` are the countries of its NVEU authorisation."""

    id: str
    headquarters: str
    status: EntityStatus = "none"
    nveu_countries: frozenset[str] = frozenset()


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

    @property
    def tpp(self) -> Fraction:
        """Total TPP of the line."""
        return self.tpp_per_device * self.count


@dataclass(frozen=True)
class Fleet:
    """Everything the engine needs besides the rule pack and the date."""

    ruleset: str
    entities: tuple[Entity, ...]
    sites: tuple[Site, ...]
    lines: tuple[Line, ...]
    countries: Mapping[str, CountryFacts] = field(default_factory=dict)
    as_of: date | None = None  # the date the scenario names, if any
