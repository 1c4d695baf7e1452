"""Projections of evaluations: the JSON document and the table for people.

One document holds the evaluations of one or more rule packs on one date (`document`): each
check names its pack (`ruleset`), `rulesets` holds each pack's state in order and `ruleset` the
first's, and the verdict is `breach` when any check of any pack is. A single-pack document has
the same shape (`evaluation_to_dict`), so that every consumer reads one format.

JSON numbers: a TPP figure is an integer where it is whole, else the nearest float; H100e is
rounded to 3 decimals; shares are the nearest floats. The engine's arithmetic is exact
(fractions), and the figures a division makes, which a float cannot hold, have an exact
companion, a reduced fraction as a string (`exact_text`): `headroom_tpp_exact` on every check,
`share_exact` and `limit_share_exact` on share rules. The table rounds: whole TPP, H100e to two
decimals (`gpucap.core.output`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gpucap.core.engine import Check, Evaluation, SiteTotal
from gpucap.core.output import h100e_text, tpp_text


def tpp_number(value: Fraction | int) -> int | float:
    """An exact TPP figure as a JSON number."""
    return value.numerator if value.denominator == 1 else float(value)


def exact_text(value: Fraction) -> str:
    """An exact figure as text: `n` when whole, else `n/d` in lowest terms (`-1085800/93`)."""
    return str(value)


def h100e_number(value: Fraction, h100e_tpp: Fraction) -> float:
    """A TPP figure in H100-equivalents, rounded to 3 decimals."""
    # float(value / h100e_tpp) without building the quotient Fraction: int / int is correctly
    # rounded, as Fraction.__float__ is, and a ratio's float does not depend on its reduction.
    num = value.numerator * h100e_tpp.denominator
    return round(num / (value.denominator * h100e_tpp.numerator), 3)


def check_to_dict(check: Check, h100e_tpp: Fraction, ruleset: str | None = None) -> dict[str, Any]:
    """One check as JSON: caps carry limit_tpp, share rules share and limit_share; `ruleset`,
    the id of the pack it belongs to, comes first (documents always give it)."""
    out: dict[str, Any] = {} if ruleset is None else {"ruleset": ruleset}
    out |= {
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
        limit_share = check.limit_share or Fraction(0)
        out["share"] = None if check.share is None else float(check.share)
        out["share_exact"] = None if check.share is None else exact_text(check.share)
        out["limit_share"] = float(limit_share)
        out["limit_share_exact"] = exact_text(limit_share)
        out["total_tpp"] = tpp_number(check.total_tpp or Fraction(0))
    if check.tolerated_tpp is not None:  # headquarters_control: reported, not counted
        out["tolerated_tpp"] = tpp_number(check.tolerated_tpp)
        out["tolerated_h100e"] = h100e_number(check.tolerated_tpp, h100e_tpp)
    out["headroom_tpp"] = tpp_number(check.headroom_tpp)
    out["headroom_tpp_exact"] = exact_text(check.headroom_tpp)
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
    """The `gpucap evaluate --format json` document of one pack: `document([ev])`."""
    return document([ev], site_entries)


def document(
    evaluations: Sequence[Evaluation], site_entries: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The document of the evaluations of one or more packs on one date, in the order given.

    Checks: breaches first, then by pack (in order), rule and scope. Sites: one list when every
    pack sees each site alike (tier, treated_as, counted TPP and devices), else one entry per
    pack and site, pack by pack, each naming its pack (`ruleset`). `site_entries`: the sites
    section, when the caller has it already (the ledger reuses an unchanged site's entry).
    """
    head = document_head(evaluations)
    keyed = [
        ((c.status != "breach", k, c.rule, c.scope), c, ev)
        for k, ev in enumerate(evaluations)
        for c in ev.checks
    ]
    keyed.sort(key=lambda item: item[0])
    checks = [check_to_dict(c, ev.h100e_tpp, ev.ruleset.id) for _, c, ev in keyed]
    sites = sites_section(evaluations) if site_entries is None else site_entries
    return {**head, "checks": checks, "sites": sites}


def sites_section(evaluations: Sequence[Evaluation]) -> list[dict[str, Any]]:
    """The document's `sites` (see `document`)."""
    first = evaluations[0]
    if all(ev.sites == first.sites and ev.h100e_tpp == first.h100e_tpp for ev in evaluations):
        return [site_to_dict(s, first.h100e_tpp) for s in first.sites]
    return [
        {"ruleset": ev.ruleset.id, **site_to_dict(s, ev.h100e_tpp)}
        for ev in evaluations
        for s in ev.sites
    ]


def ruleset_to_dict(ev: Evaluation) -> dict[str, Any]:
    """One pack's state on the date; `h100e_tpp` is the reference its checks' H100e use."""
    state = ev.ruleset
    return {
        "id": state.id,
        "version": state.version,
        "title": state.title,
        "citation": state.citation,
        "status": state.status,
        "status_since": state.status_since.isoformat() if state.status_since else None,
        "in_force": state.in_force,
        "warnings": list(state.warnings),
        "h100e_tpp": tpp_number(ev.h100e_tpp),
    }


def document_head(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    """The document's fields before `checks` and `sites`, in their order. `h100e_tpp` is the
    first pack's (as `ruleset` is its state)."""
    if not evaluations:
        raise ValueError("a document needs at least one evaluation")
    first = evaluations[0]
    if any(ev.as_of != first.as_of for ev in evaluations):
        raise ValueError("a document's evaluations are of one date")
    states = [ruleset_to_dict(ev) for ev in evaluations]
    breach = any(ev.verdict == "breach" for ev in evaluations)
    return {
        "ruleset": dict(states[0]),
        "rulesets": states,
        "as_of": first.as_of.isoformat(),
        "verdict": "breach" if breach else "ok",
        "h100e_tpp": tpp_number(first.h100e_tpp),
    }


def evaluation_head(ev: Evaluation) -> dict[str, Any]:
    """The head of one pack's document: `document_head([ev])`."""
    return document_head([ev])


def _tpp_cell(check: dict[str, Any], figure: str, h100e_tpp: float | None) -> str:
    """`used`, `limit` or `headroom` TPP of a check with its H100e in brackets. Given the
    document's `h100e_tpp`, H100e is computed from the exact TPP and rounded once (the JSON's
    3-decimal H100e, rounded again, would be off by 0.01 for about one figure in twenty)."""
    tpp = check[f"{figure}_tpp"]
    if h100e_tpp is None:
        h100e = check[f"{figure}_h100e"]
    else:
        exact = Fraction(check.get(f"{figure}_tpp_exact") or tpp)
        h100e = float(exact / Fraction(h100e_tpp))
    return f"{tpp_text(tpp)} ({h100e_text(h100e)})"


def checks_table(
    checks: list[dict[str, Any]], width: int = 200, h100e_tpp: float | None = None
) -> str:
    """Checks in their JSON form as a table for people: whole TPP with H100e (two decimals) in
    brackets; `h100e_tpp`: the document's reference TPP, when it has one."""
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
            limit = _tpp_cell(c, "limit", h100e_tpp)
        else:
            share = "n/a" if c.get("share") is None else f"{c['share']:.2%}"
            bound = "max" if c["kind"] == "max_share" else "min"
            limit = f"{share} ({bound} {c['limit_share']:.0%})"
        table.add_row(
            "BREACH" if c["status"] == "breach" else "ok",
            c["rule"],
            c["scope"],
            _tpp_cell(c, "used", h100e_tpp),
            limit,
            _tpp_cell(c, "headroom", h100e_tpp),
            c["source"]["confidence"],
        )
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def render_document(doc: dict[str, Any]) -> str:
    """An evaluation document (`evaluate --format json`, `/v1/headroom`) as text for people:
    with several packs, a block per pack (its status, verdict, checks, warnings and notes)."""
    states = doc.get("rulesets") or [doc["ruleset"]]  # an answer from before `rulesets`
    if len(states) == 1:
        rs = states[0]
        head = f"{rs['id']} on {doc['as_of']} ({rs['status']}): verdict {doc['verdict'].upper()}"
        return "\n".join([head, *_pack_block(rs, doc["checks"], doc)]) + "\n"
    lines = [f"{len(states)} rule packs on {doc['as_of']}: verdict {doc['verdict'].upper()}"]
    for rs in states:
        checks = [c for c in doc["checks"] if c.get("ruleset") == rs["id"]]
        verdict = "BREACH" if any(c["status"] == "breach" for c in checks) else "OK"
        lines += ["", f"{rs['id']} ({rs['status']}): verdict {verdict}"]
        lines += _pack_block(rs, checks, doc)
    return "\n".join(lines) + "\n"


def _pack_block(rs: dict[str, Any], checks: list[dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    """One pack's table, warnings and notes."""
    lines = [checks_table(checks, h100e_tpp=rs.get("h100e_tpp", doc.get("h100e_tpp")))]
    lines += [f"warning: {w}" for w in rs["warnings"]]
    lines += [f"note: {c['rule']} {c['scope']}: {c['note']}" for c in checks if c["note"]]
    return lines


def render_table(ev: Evaluation) -> str:
    """The checks of an evaluation as text: breaches first, then warnings and notes."""
    return render_document(evaluation_to_dict(ev))
