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


def tpp_number(value: Fraction | int) -> int | float:
    """An exact TPP figure as a JSON number."""
    return value.numerator if value.denominator == 1 else float(value)


def h100e_number(value: Fraction, h100e_tpp: Fraction) -> float:
    """A TPP figure in H100-equivalents, rounded to 3 decimals."""
    # float(value / h100e_tpp) without building the quotient Fraction: int / int is correctly
    # rounded, as Fraction.__float__ is, and a ratio's float does not depend on its reduction.
    num = value.numerator * h100e_tpp.denominator
    return round(num / (value.denominator * h100e_tpp.numerator), 3)


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


def evaluation_to_dict(
    ev: Evaluation, site_entries: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The `gpucap evaluate --format json` document.

    `site_entries`: the `site_to_dict` of each of `ev.sites`, when the caller has them already
    (the ledger reuses an unchanged site's entry from its previous document).
    """
    return {
        **evaluation_head(ev),
        "checks": [check_to_dict(c, ev.h100e_tpp) for c in ordered_checks(ev.checks)],
        "sites": site_entries
        if site_entries is not None
        else [site_to_dict(s, ev.h100e_tpp) for s in ev.sites],
    }


def evaluation_head(ev: Evaluation) -> dict[str, Any]:
    """The document's fields before `checks` and `sites`, in their order."""
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
    }


def _tpp_cell(tpp: float, h100e: float) -> str:
    return f"{tpp:,.0f} ({h100e:,.1f})"


def checks_table(checks: list[dict[str, Any]], width: int = 200) -> str:
    """Checks in their JSON form as a table for people: TPP with H100e in brackets."""
    table = Table(box=box.SIMPLE_HEAD)
    for name, justify in (
        ("status", "left"),
        ("rule", "left"),
        ("scope", "left"),
        ("used TPP (H100e)", "right"),
        ("limit", "right"),
        ("headroom TPP (H100e)", "right"),
        ("confidence", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]  # rich's JustifyMethod is a Literal
    for c in checks:
        if "limit_tpp" in c:
            limit = _tpp_cell(c["limit_tpp"], c["limit_h100e"])
        else:
            share = "n/a" if c.get("share") is None else f"{c['share']:.2%}"
            bound = "max" if c["kind"] == "max_share" else "min"
            limit = f"{share} ({bound} {c['limit_share']:.0%})"
        table.add_row(
            "BREACH" if c["status"] == "breach" else "ok",
            c["rule"],
            c["scope"],
            _tpp_cell(c["used_tpp"], c["used_h100e"]),
            limit,
            _tpp_cell(c["headroom_tpp"], c["headroom_h100e"]),
            c["source"]["confidence"],
        )
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def render_document(doc: dict[str, Any]) -> str:
    """An evaluation document (`evaluate --format json`, `/v1/headroom`) as text for people."""
    rs = doc["ruleset"]
    lines = [f"{rs['id']} on {doc['as_of']} ({rs['status']}): verdict {doc['verdict'].upper()}"]
    lines.append(checks_table(doc["checks"]))
    lines += [f"warning: {w}" for w in rs["warnings"]]
    lines += [f"note: {c['rule']} {c['scope']}: {c['note']}" for c in doc["checks"] if c["note"]]
    return "\n".join(lines) + "\n"


def render_table(ev: Evaluation) -> str:
    """The checks of an evaluation as text: breaches first, then warnings and notes."""
    return render_document(evaluation_to_dict(ev))
