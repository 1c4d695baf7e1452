"""`GET /v1/licences` and `gpucap licences`: each licence's limit, use and headroom, its
validity, the sites it covers, and its shipped serials against the devices the ledger sees.

The figures are those of the `licence_quantity` checks of the cached evaluation of today (no
evaluation per request); a licence whose pack makes no such check has null figures. Shipped
serials are matched with the present devices by `db.observed_serials`, split by whether each
is at its shipment's site or elsewhere. An entity-scoped operator sees only the licences whose
licensee is its entity; asking for another (or an unknown one) is `403 scope_forbidden`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from gpucap.core import output
from gpucap.core.engine import Check, Evaluation
from gpucap.core.errors import InputError
from gpucap.core.fleet import Fleet, Licence, Site
from gpucap.core.report import exact_text, h100e_number, tpp_number
from gpucap.ledger.errors import AuthError, RejectedError, UnavailableError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from gpucap.ledger.service import Ledger
    from gpucap.ledger.tokens import Principal

RULE = "licence_quantity"  # the rule id of us-ear-2026, its checks scoped `licence:ID`
# serial -> (site, node) of each present device among the serials asked for.
Observed = Mapping[str, tuple[str, str]]

# (JSON and CSV key, table heading) of the listing's columns, in order.
COLUMNS = (
    ("licence", "licence"),
    ("licensee", "licensee"),
    ("status", "status"),
    ("limit_tpp", "limit TPP"),
    ("used_tpp", "used TPP"),
    ("headroom_tpp", "headroom TPP"),
    ("valid_from", "valid from"),
    ("valid_until", "valid until"),
    ("valid", "valid"),
    ("sites", "sites"),
    ("shipped", "shipped"),
    ("observed", "observed"),
    ("observed_at_site", "at site"),
    ("observed_elsewhere", "elsewhere"),
)
_NUMERIC = (
    "limit_tpp",
    "used_tpp",
    "headroom_tpp",
    "shipped",
    "observed",
    "observed_at_site",
    "observed_elsewhere",
)
_TPP = ("limit_tpp", "used_tpp", "headroom_tpp")


# -- the answer (pure) ------------------------------------------------------------------------
def covered_sites(licence: Licence, sites: Iterable[Site]) -> list[str]:
    """The licensee's sites the licence names or that are in a country it names (the code the
    site gives), in registry order: where a device can be covered (README, us-ear-2026)."""
    return [
        s.id
        for s in sites
        if s.entity == licence.licensee
        and (s.id in licence.sites or s.country in licence.countries)
    ]


def visible(fleet: Fleet, entity: str | None) -> list[Licence]:
    """The licences an operator limited to `entity` (None: every one) may see."""
    return [lic for lic in fleet.licences if entity is None or lic.licensee == entity]


def shipped_serials(fleet: Fleet, licences: Iterable[Licence]) -> list[str]:
    """Every serial shipped under the given licences, in registry order."""
    ids = {lic.id for lic in licences}
    return [serial for s in fleet.shipments if s.licence in ids for serial in s.serials]


def _quantity_checks(ev: Evaluation) -> dict[str, Check]:
    return {
        c.scope.removeprefix("licence:"): c
        for c in ev.checks
        if c.rule == RULE and c.scope.startswith("licence:")
    }


def licence_entry(
    licence: Licence,
    check: Check | None,
    fleet: Fleet,
    observed: Observed,
    as_of: date,
    h100e_tpp: Any,
) -> dict[str, Any]:
    """One licence of the answer: the check's figures (null without a check), validity on
    `as_of`, covered sites, and per shipment its serials shipped and observed."""
    shipments = []
    for s in fleet.shipments:
        if s.licence != licence.id:
            continue
        places = [observed[serial][0] for serial in s.serials if serial in observed]
        at_site = sum(1 for site in places if site == s.site)
        shipments.append(
            {
                "id": s.id,
                "site": s.site,
                "shipped_on": s.shipped.isoformat(),
                "model": s.model,
                "shipped": len(s.serials),
                "observed": len(places),
                "observed_at_site": at_site,
                "observed_elsewhere": len(places) - at_site,
            }
        )
    until = licence.valid_until
    figures: dict[str, Any] = dict.fromkeys(
        ("status", "limit_tpp", "used_tpp", "headroom_tpp", "headroom_tpp_exact"), None
    )
    figures["headroom_h100e"] = None
    if check is not None:
        assert check.limit_tpp is not None  # a licence_quantity check is a cap
        figures = {
            "status": check.status,
            "limit_tpp": tpp_number(check.limit_tpp),
            "used_tpp": tpp_number(check.used_tpp),
            "headroom_tpp": tpp_number(check.headroom_tpp),
            "headroom_tpp_exact": exact_text(check.headroom_tpp),
            "headroom_h100e": h100e_number(check.headroom_tpp, h100e_tpp),
        }
    return {
        "licence": licence.id,
        "licensee": licence.licensee,
        **figures,
        "valid_from": licence.valid_from.isoformat(),
        "valid_until": None if until is None else until.isoformat(),
        "valid": licence.valid_from <= as_of and (until is None or as_of <= until),
        "sites": covered_sites(licence, fleet.sites),
        "shipped": sum(s["shipped"] for s in shipments),
        "observed": sum(s["observed"] for s in shipments),
        "observed_at_site": sum(s["observed_at_site"] for s in shipments),
        "observed_elsewhere": sum(s["observed_elsewhere"] for s in shipments),
        "conditions": licence.conditions,
        "note": None if check is None else check.note,
        "shipments": shipments,
    }


def licences_answer(
    fleet: Fleet, ev: Evaluation, licences: Sequence[Licence], observed: Observed
) -> dict[str, Any]:
    """The `/v1/licences` document (without provenance) for the given licences."""
    checks = _quantity_checks(ev)
    return {
        "as_of": ev.as_of.isoformat(),
        "ruleset": ev.ruleset.id,
        "licences": [
            licence_entry(lic, checks.get(lic.id), fleet, observed, ev.as_of, ev.h100e_tpp)
            for lic in licences
        ],
    }


def rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The listing's rows of a `/v1/licences` answer: one per licence."""
    return [{key: item.get(key) for key, _ in COLUMNS} for item in doc["licences"]]


def render(doc: Mapping[str, Any], fmt: str, headers: bool = True) -> str:
    """The answer as `table` (whole TPP), `csv` (the values), `json` or `yaml` (the document)."""
    listed = rows(doc)
    display = [
        [
            output.tpp_text(r[key]) if key in _TPP and r[key] is not None else output.cell(r[key])
            for key, _ in COLUMNS
        ]
        for r in listed
    ]
    return output.render(
        listed, COLUMNS, fmt, doc, headers=headers, display=display, right=_NUMERIC
    )


# -- the ledger's side ------------------------------------------------------------------------
def present(conn: Connection, serials: Sequence[str]) -> dict[str, tuple[str, str]]:
    """`db.observed_serials`: the present devices among `serials`, by serial."""
    from gpucap.ledger import db

    return db.observed_serials(conn, serials) if serials else {}


def licences_for(led: Ledger, principal: Principal, licence: str | None = None) -> dict[str, Any]:
    """The `/v1/licences` answer for `principal` (`licence`: that one alone)."""
    view = led.view(led.today())
    fleet, entity = view.fleet, principal.entity
    shown = visible(fleet, entity)
    if licence is not None:
        shown = [lic for lic in shown if lic.id == licence]
        if not shown and entity is not None:  # unknown or another's: the same answer
            exc = AuthError(
                403,
                "scope_forbidden",
                f"operator token for {entity!r} may not see licence:{licence}",
            )
            led.refuse(exc)
            raise exc
        if not shown:
            raise RejectedError("licence", f"no licence with id {licence!r}")
    with led.store.read() as conn:
        observed = present(conn, shipped_serials(fleet, shown))
    answer = licences_answer(fleet, view.evaluation, shown, observed)
    return {**answer, "provenance": led.provenance(view)}


# -- the command ------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """`gpucap licences`: the listing of GET /v1/licences."""
    from gpucap.ledger.client import add_client_flags

    p = subparsers.add_parser("licences", help="list licences: limit, use, sites and shipments")
    p.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    p.add_argument("--licence", help="only this licence")
    output.add_format_flags(p)
    add_client_flags(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gpucap.ledger.client import connect, ledger_url

    if args.licence is not None and not args.licence:
        raise InputError("--licence", "must not be empty")
    url = ledger_url(args.ledger, os.environ)
    client = connect(args, url, os.environ, "an operator or auditor token")
    try:
        path = "/v1/licences"
        if args.licence:
            from urllib.parse import quote

            path += f"?licence={quote(args.licence, safe='')}"
        doc = client.fetch(path)
    finally:
        client.close()
    if not isinstance(doc, dict) or not isinstance(doc.get("licences"), list):
        raise UnavailableError("/v1/licences", f"unexpected answer: is {url} a gpucap ledger?")
    print(render(doc, args.format, headers=args.headers), end="")
    return 0
