"""Small builders for engine tests."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from gpucap.core.fleet import Basis, CountryFacts, Entity, EntityStatus, Fleet, Line, Site

H100 = Fraction(15832)
PACK = "us-bis-ai-diffusion-2025"


def line(
    site: str,
    count: int,
    installed: date,
    removed: date | None = None,
    *,
    tpp: Fraction = H100,
    basis: Basis = "standard",
    eccn_class: str = "3A090.a",
) -> Line:
    return Line(site, count, tpp, eccn_class, installed, removed, basis, None)


def fleet(
    entities: list[tuple[str, str, EntityStatus, tuple[str, ...]]],
    sites: list[tuple[str, str, str]],
    lines: list[Line],
    agreements: tuple[str, ...] = (),
) -> Fleet:
    return Fleet(
        PACK,
        tuple(Entity(e, hq, st, frozenset(nc)) for e, hq, st, nc in entities),
        tuple(Site(*s) for s in sites),
        tuple(lines),
        {c: CountryFacts(c, True) for c in agreements},
    )
