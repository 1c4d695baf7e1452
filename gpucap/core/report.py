"""Projections of an `Evaluation`: the JSON document and the table for people.

JSON numbers: TPP is exact (an integer where it is whole); H100e and shares are floats, H100e
rounded to 3 decimals.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gpucap.core.engine import Check, Evaluation, SiteTotal


def tpp_number(value: Fraction) -> int | float:
    """An exact TPP figure as a JSON number."""
    return value.numerator if value.denominator == 1 else float(value)


def h100e_number(value: Fraction, h100e_tpp: Fraction) -> float:
    """A TPP figure in H100-equivalents, rounded to 3 decimals."""
    return round(float(value / h100e_tpp), 3)


def check_to_dict(check: Check, h100e_tpp: Fraction) -> dict[str, Any]:
    """One check as JSON: caps carry limit_tpp, share rules share and limit_share."""
    out: dict[str, Any] = {
        "rule": check.rule,
        "kind": check.kind,
        "scope": check.scope,
        "status": check.status,
        "used_tpp": tpp_number(check.used_tpp),
        "used_h100e": h100e_number(check.used_tpp, h100e_tpp),
    }
    if check.limit_tpp is not None:
        out["limit_tpp"] = tpp_number(check.limit_tpp)
        out["limit_h100e"] = h100e_number(check.limit_tpp, h100e_tpp)
    else:
        out["share"] = None if check.share is None else float(check.share)
        out["limit_share"] = float(check.limit_share or 0)
        out["total_tpp"] = tpp_number(check.total_tpp or Fraction(0))
    out["headroom_tpp"] = tpp_number(check.headroom_tpp)
    out["headroom_h100e"] = h100e_number(check.headroom_tpp, h100e_tpp)
    out["source"] = {
        "paragraph": check.provenance.paragraph,
        "reference": check.provenance.source,
        "confidence": check.provenance.confidence,
    }
    out["note"] = check.note
    return out


def site_to_dict(site: SiteTotal, h100e_tpp: Fraction) -> dict[str, Any]:
    return {
        "id": site.id,
        "entity": site.entity,
        "country": site.country,
        "treated_as": site.treated_as,
        "tier": site.tier,
        "installed_tpp": tpp_number(site.installed_tpp),
        "installed_h100e": h100e_number(site.installed_tpp, h100e_tpp),
        "counted_devices": site.counted_devices,
        "other_devices": site.other_devices,
    }


def ordered_checks(checks: tuple[Check, ...] | list[Check]) -> list[Check]:
    """Breaches first, then by rule and scope (stable, deterministic)."""
    return sorted(checks, key=lambda c: (c.status != "breach", c.rule, c.scope))


def evaluation_to_dict(ev: Evaluation) -> dict[str, Any]:
    """The `gpucap evaluate --format json` document."""
    state = ev.ruleset
    return {
        "ruleset": {
            "id": state.id,
            "version": state.version,
            "title": state.title,
            "citation": state.citation,
            "status": state.status,
            "status_since": state.status_since.isoformat() if state.status_since else None,
            "in_force": state.in_force,
            "warnings": list(state.warnings),
        },
        "as_of": ev.as_of.isoformat(),
        "verdict": ev.verdict,
        "h100e_tpp": tpp_number(ev.h100e_tpp),
        "checks": [check_to_dict(c, ev.h100e_tpp) for c in ordered_checks(ev.checks)],
        "sites": [site_to_dict(s, ev.h100e_tpp) for s in ev.sites],
    }


def _tpp_cell(value: Fraction, h100e_tpp: Fraction) -> str:
    return f"{float(value):,.0f} ({float(value / h100e_tpp):,.1f})"


def render_table(ev: Evaluation, width: int = 200) -> str:
    """The checks as a table for people: breaches first, TPP with H100e in brackets."""
    table = Table(
        title=f"{ev.ruleset.id} on {ev.as_of} ({ev.ruleset.status}): verdict {ev.verdict.upper()}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name, justify in (
        ("status", "left"),
        ("rule", "left"),
        ("scope", "left"),
        ("used TPP (H100e)", "right"),
        ("limit", "right"),
        ("headroom TPP (H100e)", "right"),
        ("confidence", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for c in ordered_checks(ev.checks):
        if c.limit_tpp is not None:
            limit = _tpp_cell(c.limit_tpp, ev.h100e_tpp)
        else:
            share = "n/a" if c.share is None else f"{float(c.share):.2%}"
            bound = "max" if c.kind == "max_share" else "min"
            limit = f"{share} ({bound} {float(c.limit_share or 0):.0%})"
        table.add_row(
            "[bold red]BREACH[/]" if c.status == "breach" else "ok",
            c.rule,
            c.scope,
            _tpp_cell(c.used_tpp, ev.h100e_tpp),
            limit,
            _tpp_cell(c.headroom_tpp, ev.h100e_tpp),
            c.provenance.confidence,
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(table)
    for warning in ev.ruleset.warnings:
        console.print(f"warning: {warning}", soft_wrap=True)
    for c in ordered_checks(ev.checks):
        if c.note:
            console.print(f"note: {c.rule} {c.scope}: {c.note}", soft_wrap=True)
    return buffer.getvalue()
