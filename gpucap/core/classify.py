"""ECCN 3A090 classification: the one audited function that turns TPP and die area into a class.

The thresholds are data (`gpucap/data/eccn-3a090.yaml`); this module only applies them in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

from gpucap.core.data import read_yaml, require_mapping, shipped
from gpucap.core.errors import DataError

NOT_CONTROLLED = "not_controlled"
INDETERMINATE = "indeterminate"  # a density prong decides, but the die area is unknown


@dataclass(frozen=True)
class Paragraph:
    """One threshold paragraph: inclusive minimums, exclusive maximums, None when unbounded."""

    paragraph: str
    eccn_class: str
    tpp_min: Fraction | None = None
    tpp_max: Fraction | None = None
    pd_min: Fraction | None = None
    pd_max: Fraction | None = None
    datacenter_only: bool = False

    @property
    def uses_density(self) -> bool:
        return self.pd_min is not None or self.pd_max is not None


@dataclass(frozen=True)
class Thresholds:
    """An ECCN threshold table with its provenance."""

    id: str
    source: str
    confidence: str
    paragraphs: tuple[Paragraph, ...]


@dataclass(frozen=True)
class Classification:
    """The class of one accelerator, the paragraph that decided it, and its density (TPP/mm2)."""

    eccn_class: str
    paragraph: str | None
    performance_density: Fraction | None


def _bound(raw: dict[str, Any], key: str, path: str) -> Fraction | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{path}.{key}", f"expected a number, got {value!r}")
    return Fraction(str(value))


def parse_thresholds(doc: Any, origin: str = "eccn") -> Thresholds:
    """Validate a parsed threshold file."""
    top = require_mapping(doc, origin)
    rows = top.get("paragraphs")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{origin}.paragraphs", "expected a non-empty list")
    paragraphs = []
    for i, row in enumerate(rows):
        path = f"{origin}.paragraphs[{i}]"
        raw = require_mapping(row, path)
        for key in ("paragraph", "class"):
            if not isinstance(raw.get(key), str):
                raise DataError(f"{path}.{key}", "expected a string")
        paragraphs.append(
            Paragraph(
                paragraph=raw["paragraph"],
                eccn_class=raw["class"],
                tpp_min=_bound(raw, "tpp_min", path),
                tpp_max=_bound(raw, "tpp_max", path),
                pd_min=_bound(raw, "pd_min", path),
                pd_max=_bound(raw, "pd_max", path),
                datacenter_only=bool(raw.get("datacenter_only", False)),
            )
        )
    for key in ("id", "source", "confidence"):
        if not isinstance(top.get(key), str):
            raise DataError(f"{origin}.{key}", "expected a string")
    return Thresholds(top["id"], top["source"], top["confidence"], tuple(paragraphs))


@cache
def default_thresholds() -> Thresholds:
    """The shipped ECCN 3A090 table (read once, on first use)."""
    path = shipped("eccn-3a090.yaml")
    return parse_thresholds(read_yaml(path), str(Path(path).name))


def _within(value: Fraction, low: Fraction | None, high: Fraction | None) -> bool:
    return (low is None or value >= low) and (high is None or value < high)


def classify(
    tpp: Fraction | int,
    die_area_mm2: Fraction | float | None,
    datacenter: bool,
    thresholds: Thresholds,
) -> Classification:
    """Classify one IC: the first matching paragraph wins; none matching is `not_controlled`.

    Density is TPP / die area (mm2). When a density prong would decide and the die area is
    unknown, the answer is `indeterminate` rather than a guess.
    """
    tpp = Fraction(tpp)
    density = None
    if die_area_mm2 is not None and die_area_mm2 > 0:
        density = tpp / Fraction(str(die_area_mm2))
    for rule in thresholds.paragraphs:
        if rule.datacenter_only and not datacenter:
            continue
        if not _within(tpp, rule.tpp_min, rule.tpp_max):
            continue
        if not rule.uses_density:
            return Classification(rule.eccn_class, rule.paragraph, density)
        if density is None:
            return Classification(INDETERMINATE, None, None)
        if _within(density, rule.pd_min, rule.pd_max):
            return Classification(rule.eccn_class, rule.paragraph, density)
    return Classification(NOT_CONTROLLED, None, density)
