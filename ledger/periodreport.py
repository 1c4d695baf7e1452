"""`gpucap report` and `GET /v1/report`: the period report a compliance officer files.

For each step of a period and each check the caller may see: used, limit (or share and limit
share), headroom and status, as known now: every step is the `/v1/headroom` answer for that
date (`Ledger.view(as_of)`, one cached view per date), with the same scope parsing and the same
refusals (an unknown scope 422, a scope the token may not see 403). The shape follows Slurm's
sreport: a header naming the period, the scope and the rule packs, then rows. Every rule pack
the answers evaluate is reported: `rulesets` holds each one's state on the last step, `ruleset`
the first's, each check names its pack, and the warnings are those of every pack.

Steps: `day` is every date from `from` to `to`; `week` is `from` and every 7 days after it;
`month` is `from` and the same day of each following month, clamped to a shorter month's last
day (Jan 31 -> Feb 28 -> Mar 31: the clamp never carries into later months). `to` is always the
last step. At most MAX_STEPS steps. Bad input is a RejectedError naming the query parameter
(HTTP 422) or the flag (exit 2).

No `from __future__ import annotations` here: FastAPI reads the route's annotations at run
time, and the route's types are imported inside `report_routes` so that `gpucap` does not load
the web stack to build its parser.
"""

import argparse
import calendar
import csv
import io
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from gpucap.core import output
from gpucap.core.data import parse_day
from gpucap.ledger.errors import AuthError, RejectedError

if TYPE_CHECKING:
    from fastapi import APIRouter, Request

    from gpucap.ledger.evaluations import View
    from gpucap.ledger.known import KnownAt
    from gpucap.ledger.service import Ledger
    from gpucap.ledger.tokens import Principal

MAX_STEPS = 3660  # ten years of daily steps
STEPS = ("day", "week", "month")
_ADVERB = {"day": "daily", "week": "weekly", "month": "monthly"}
_PASSES = 3  # evaluations of the period while writes keep changing the record under it
# A check's fields in the report, as `check_to_dict` names them (caps: limit_tpp; share rules:
# share, limit_share and total_tpp).
CHECK_FIELDS = (
    "ruleset",
    "rule",
    "scope",
    "kind",
    "status",
    "used_tpp",
    "limit_tpp",
    "share",
    "limit_share",
    "total_tpp",
    "headroom_tpp",
    "headroom_h100e",
    "share_exact",
    "limit_share_exact",
    "headroom_tpp_exact",
)
CSV_FIELDS = ("as_of", *CHECK_FIELDS)
_ON_STEP = "\0 on the step's date"  # stands for " on D" in a warning while steps are folded


@dataclass(frozen=True)
class Period:
    """A report's dates: `start` to `end` inclusive, one evaluation per date of `days`."""

    start: date
    end: date
    step: str
    days: tuple[date, ...]


def _add_months(day: date, months: int) -> date:
    """`day` moved by whole months, its day of month clamped to the target month's length."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _stepped(start: date, end: date, step: str) -> Iterator[date]:
    """The step dates from `start` up to `end`, without the closing `end`."""
    for k in itertools.count():
        try:
            if step == "day":
                day = start + timedelta(days=k)
            elif step == "week":
                day = start + timedelta(days=7 * k)
            else:
                day = _add_months(start, k)
        except (OverflowError, ValueError):  # past 9999-12-31
            return
        if day > end:
            return
        yield day


def step_dates(start: date, end: date, step: str, limit: int = MAX_STEPS) -> tuple[date, ...]:
    """The report's dates, `end` last; at most `limit + 1` of them (more are refused anyway),
    none when `start` is after `end`."""
    days = list(itertools.islice(_stepped(start, end, step), limit + 1))
    if days and days[-1] != end and len(days) <= limit:
        days.append(end)
    return tuple(days)


def parse_period(start: str | None, end: str | None, step: str | None, prefix: str = "") -> Period:
    """The period of `from`, `to` and `step` (default day); RejectedError naming the field, as
    `prefix + name` (the CLI names its flags: `--from`)."""

    def day(value: str | None, name: str) -> date:
        if value is None:
            raise RejectedError(prefix + name, "required")
        try:
            return parse_day(value)
        except ValueError as exc:
            raise RejectedError(prefix + name, str(exc)) from None

    first, last = day(start, "from"), day(end, "to")
    if first > last:
        raise RejectedError(prefix + "from", f"{first} is after {prefix}to ({last})")
    kind = "day" if step is None else step
    if kind not in STEPS:
        raise RejectedError(prefix + "step", f"expected one of {', '.join(STEPS)}, got {kind!r}")
    days = step_dates(first, last, kind)
    if len(days) > MAX_STEPS:
        raise RejectedError(
            prefix + "to",
            f"the period from {first} to {last} has more than {MAX_STEPS} {_ADVERB[kind]} steps "
            "(the limit): shorten it or take a longer step",
        )
    return Period(first, last, kind, days)


# -- the report --------------------------------------------------------------------------------
def assemble(
    scope: str | None, period: Period, answers: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The report of one `/v1/headroom` answer per step (in `period.days` order)."""
    assert len(answers) == len(period.days), "one answer per step"
    steps = []
    # Distinct warnings in the order first seen; one that names its step's date ("... on D") is
    # one warning over the steps that give it, with the first and last of them.
    seen: dict[str, tuple[str, str]] = {}
    first_breach, breached = None, 0
    for doc in answers:
        as_of = doc["as_of"]
        checks = [{k: c[k] for k in CHECK_FIELDS if k in c} for c in doc["checks"]]
        steps.append({"as_of": as_of, "checks": checks})
        for state in doc.get("rulesets") or [doc["ruleset"]]:
            for text in state["warnings"]:
                key = text.replace(f" on {as_of}", _ON_STEP)
                seen[key] = (seen.get(key, (as_of, as_of))[0], as_of)
        if any(c["status"] == "breach" for c in checks):
            breached += 1
            first_breach = first_breach or as_of
    states = answers[-1].get("rulesets") or [answers[-1]["ruleset"]]
    packs = [{k: rs[k] for k in ("id", "version", "status", "in_force")} for rs in states]
    return {
        "scope": scope or None,
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "step": period.step,
        "ruleset": dict(packs[0]),
        "rulesets": packs,
        "warnings": [
            key.replace(_ON_STEP, f" on {a}" if a == b else f" from {a} to {b}")
            for key, (a, b) in seen.items()
        ],
        "steps": steps,
        "summary": {"steps": len(steps), "breached_steps": breached, "first_breach": first_breach},
    }


def report_answer(
    led: "Ledger",
    principal: "Principal",
    scope: str | None,
    period: Period,
    known: "KnownAt | None" = None,
) -> dict[str, Any]:
    """The `/v1/report` document for one caller: each step as `/v1/headroom` answers it, as
    known now (or at `known`), with the provenance of the record it was computed from.

    Every step comes from one version of the record: a write that changes it while the period
    is evaluated starts the evaluation again (`_PASSES` at most; the last one stands).
    """
    from gpucap.ledger.views import normal_scope

    scope = normal_scope(scope) if scope else scope  # `country:ae` is reported as `country:AE`
    for _ in range(_PASSES):
        version = led.store.state().projection_version
        answers, last = _answers(led, principal, scope or None, period.days, known)
        if led.store.state().projection_version == version:
            break
    return {**assemble(scope, period, answers), "provenance": led.provenance(last)}


def _answers(
    led: "Ledger",
    principal: "Principal",
    scope: str | None,
    days: Sequence[date],
    known: "KnownAt | None",
) -> tuple[list[dict[str, Any]], "View"]:
    from gpucap.ledger.views import parse_request_scope, require_visible

    answers = []
    index: object = None
    requested = None
    view = None
    for day in days:
        view = led.view_known(day, known)
        if scope is not None and view.index is not index:  # one index per registry
            index = view.index
            try:
                requested = parse_request_scope(scope, view.index, principal.entity)
            except AuthError as exc:
                led.refuse(exc)
                raise
            try:
                require_visible(requested, principal.entity, view.index)
            except AuthError as exc:
                led.refuse(exc)
                raise
        answers.append(view.document.answer(principal.entity, requested))
    assert view is not None  # a period has at least one step
    return answers, view


# -- renderings --------------------------------------------------------------------------------
def report_csv(report: Mapping[str, Any], headers: bool = True) -> str:
    """One row per (step, check) under a header of CSV_FIELDS (a field a check lacks is empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    if headers:
        writer.writeheader()
    for step in report["steps"]:
        for check in step["checks"]:
            writer.writerow({"as_of": step["as_of"], **check})
    return out.getvalue()


def _limit_cell(check: Mapping[str, Any]) -> str:
    if "limit_tpp" in check:
        return output.tpp_text(check["limit_tpp"])
    share = "n/a" if check.get("share") is None else f"{check['share']:.2%}"
    bound = "max" if check["kind"] == "max_share" else "min"
    return f"{share} ({bound} {check['limit_share']:.0%})"


def report_table(report: Mapping[str, Any], width: int = 200, headers: bool = True) -> str:
    """The report for people: the header, then one block per check with a row per step (under
    its column headings unless `headers` is False); TPP whole, H100e to two decimals."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    summary = report["summary"]
    first = summary["first_breach"]
    lines = [
        f"Period report {report['from']} to {report['to']}, by {report['step']} "
        f"({summary['steps']} steps)",
        f"Scope: {report['scope'] or 'everything this token may see'}",
    ]
    for rs in report.get("rulesets") or [report["ruleset"]]:
        force = "in force" if rs["in_force"] else "not in force"
        lines.append(
            f"Rule pack: {rs['id']} version {rs['version']}, {rs['status']} ({force}) "
            f"on {report['to']}"
        )
    lines += [
        f"Breached: {summary['breached_steps']} of {summary['steps']} steps"
        + (f", first on {first}" if first else ""),
    ]
    rule = "-" * max(len(line) for line in lines)
    several = len(report.get("rulesets") or ()) > 1
    # Blocks by (pack, rule, scope): a pack's position keeps the packs in their order.
    order = {rs["id"]: k for k, rs in enumerate(report.get("rulesets") or ())}
    blocks: dict[tuple[int, str, str, str], list[tuple[str, Mapping[str, Any]]]] = {}
    kinds: dict[tuple[int, str, str, str], str] = {}
    for step in report["steps"]:
        for c in step["checks"]:
            pack = str(c.get("ruleset", ""))
            key = (order.get(pack, 0), pack, c["rule"], c["scope"])
            blocks.setdefault(key, []).append((step["as_of"], c))
            kinds[key] = c["kind"]
    ever = {key for key, rows in blocks.items() if any(c["status"] == "breach" for _, c in rows)}
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    for key in sorted(blocks, key=lambda k: (k not in ever, k)):
        table = Table(box=box.SIMPLE_HEAD, title_justify="left", show_header=headers)
        for name, justify in (
            ("as of", "left"),
            ("status", "left"),
            ("used TPP", "right"),
            ("limit", "right"),
            ("headroom TPP (H100e)", "right"),
        ):
            # As wide as its heading, shown or not: rows read the same without the headings.
            table.add_column(name, justify=justify, no_wrap=True, min_width=len(name))  # type: ignore[arg-type]  # rich's JustifyMethod is a Literal
        for as_of, c in blocks[key]:
            table.add_row(
                as_of,
                "BREACH" if c["status"] == "breach" else "ok",
                output.tpp_text(c["used_tpp"]),
                _limit_cell(c),
                f"{output.tpp_text(c['headroom_tpp'])} ({output.h100e_text(c['headroom_h100e'])})",
            )
        title = f"{key[2]} {key[3]} ({kinds[key]})"
        title = f"{key[1]}: {title}" if several else title
        console.print(f"\n{title}", markup=False, highlight=False)
        console.print(table)
    body = [line.rstrip() for line in buffer.getvalue().splitlines()]
    if not blocks:
        body = ["", "no checks visible in this scope"]
    tail = [f"warning: {w}" for w in report["warnings"]]
    return "\n".join([rule, *lines, rule, *body, *tail]) + "\n"


def render(report: Mapping[str, Any], fmt: str, headers: bool = True) -> str:
    """The report as `table`, `csv` (without header rows when `headers` is False), or `json`
    or `yaml` text (the same document)."""
    if fmt in ("json", "yaml"):
        return output.document(report, fmt)
    if fmt == "csv":
        return report_csv(report, headers)
    return report_table(report, headers=headers)


# -- the API -----------------------------------------------------------------------------------
def report_routes(
    get: "Callable[[], Ledger]", reader: "Callable[[Request], Principal]"
) -> "APIRouter":
    """`GET /v1/report?scope=&from=&to=&step=` for operators and auditors."""
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.get("/v1/report")
    def report(request: Request) -> Response:
        """Each step's visible checks from `from` to `to` (see gpucap.ledger.periodreport)."""
        principal = reader(request)
        query = request.query_params
        period = parse_period(query.get("from"), query.get("to"), query.get("step"))
        from gpucap.ledger.known import parse_known_at

        known = parse_known_at(query.get("known_at"))
        answer = report_answer(get(), principal, query.get("scope"), period, known)
        return Response(json.dumps(answer), media_type="application/json")

    return router


# -- the CLI -----------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report",
        help="a ledger's period report: each step's checks, as known now",
        description="Exit 0: nothing visible breached in any step; 1: a breach; 2: invalid "
        "input; 3: refused or unreachable.",
    )
    report.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    report.add_argument("--scope", help="country:XX, entity:E or site:S")
    report.add_argument(
        "--from", dest="start", metavar="D1", required=True, help="first date YYYY-MM-DD"
    )
    report.add_argument(
        "--to", dest="end", metavar="D2", required=True, help="last date YYYY-MM-DD"
    )
    report.add_argument(
        "--step",
        default="day",
        metavar="day|week|month",
        help="every date, every 7 days, or the same day each month (default day)",
    )
    report.add_argument(
        "--known-at", help="the record as the log held it: ISO 8601 instant or log:N"
    )
    output.add_format_flags(report)
    from gpucap.ledger.client import add_client_flags

    add_client_flags(report)
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from gpucap.ledger.client import connect, ledger_url

    url = ledger_url(args.ledger, os.environ)
    from gpucap.ledger.audit_cli import known_at_param

    parse_period(args.start, args.end, args.step, prefix="--")  # exit 2 before any request
    known = known_at_param(args.known_at)
    # A long period over a large fleet is many evaluations: wait longer than for one answer.
    client = connect(args, url, os.environ, "an operator or auditor token", timeout_s=600.0)
    try:
        answer = client.report(args.start, args.end, args.step, args.scope, known)
    finally:
        client.close()
    print(render(answer, args.format, args.headers), end="")
    if args.format == "table":
        from gpucap.ledger.known import short

        print(short(answer["provenance"]), end="")
    return 1 if answer["summary"]["breached_steps"] else 0
