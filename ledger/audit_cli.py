"""`gpucap explain`, `gpucap ledger events`, `gpucap ledger export` and `gpucap audit verify`.

Exit codes: explain 1 when the check is breached; audit verify 0 when everything holds, 1
naming the first difference, 2 for a file that is not a bundle (and for bad flags, as every
command).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gpucap.core import output
from gpucap.core.errors import InputError
from gpucap.ledger.client import add_client_flags

EXPLAIN_COLUMNS = (
    ("figure", "figure"),
    ("source", "source"),
    ("site", "site"),
    ("entity", "entity"),
    ("country", "country"),
    ("node", "node"),
    ("model", "model"),
    ("count", "count"),
    ("tpp_each", "TPP each"),
    ("tpp", "TPP"),
    ("installed", "installed"),
    ("removed", "removed"),
    ("log_index", "log index"),
)
_TPP = ("tpp_each", "tpp")  # EXPLAIN_COLUMNS a table shows in whole TPP
EVENT_COLUMNS = (
    ("index", "index"),
    ("recorded_at", "recorded at"),
    ("kind", "kind"),
    ("actor", "actor"),
    ("node", "node"),
    ("site", "site"),
    ("leaf_hash", "leaf hash"),
)


def register_ledger(sub: Any, db_flag: Any) -> None:
    """`gpucap ledger events` and `gpucap ledger export`."""
    ev = sub.add_parser("events", help="the log's entries as a history (filtered, paginated)")
    db_flag(ev)
    ev.add_argument(
        "--ledger",
        help="read GET /v1/events from this ledger (token: --token-file, GPUCAP_TOKEN_FILE or "
        "GPUCAP_TOKEN; GPUCAP_LEDGER alone does not switch from the database)",
    )
    for name in ("since", "until"):
        ev.add_argument(f"--{name}", help="ISO 8601 instant")
    for name in ("kind", "node", "site", "entity"):
        ev.add_argument(f"--{name}")
    ev.add_argument("--cursor", help="resume at this leaf index (a previous page's next_cursor)")
    ev.add_argument("--limit", help="entries per page (default 100, at most 1000)")
    ev.add_argument(
        "--all", action="store_true", help="follow the cursor to the end (every matching entry)"
    )
    output.add_format_flags(ev, default="json")
    add_client_flags(ev)
    ev.set_defaults(func=_events)

    ex = sub.add_parser("export", help="write an evidence bundle (zip) for an auditor")
    db_flag(ex)
    ex.add_argument("--output", required=True, type=Path, help="the zip file to write")
    ex.add_argument(
        "--scope",
        help="country:XX, entity:E or site:S (default: everything); entity:E makes a bundle "
        "with nothing about other entities",
    )
    ex.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    ex.add_argument("--known-at", help="ISO 8601 instant or log:N (default: the signed log)")
    ex.add_argument("--by", default="cli", help="who exports it (recorded in the manifest)")
    ex.set_defaults(func=_export)


def register(subparsers: Any) -> None:
    """`gpucap explain` and `gpucap audit verify`."""
    ex = subparsers.add_parser("explain", help="why a check's number is what it is")
    ex.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    ex.add_argument("--rule", required=True)
    ex.add_argument("--scope", required=True, help="the check's scope, e.g. country:AE")
    ex.add_argument(
        "--ruleset", help="the pack whose check it is (needed only when two packs share the rule)"
    )
    ex.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    ex.add_argument("--known-at", help="ISO 8601 instant or log:N (default: the signed log)")
    output.add_format_flags(ex)
    add_client_flags(ex)
    ex.set_defaults(func=_explain)

    audit = subparsers.add_parser("audit", help="check an evidence bundle offline")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify = asub.add_parser("verify", help="verify an evidence bundle (no ledger needed)")
    verify.add_argument("bundle", type=Path, help="the bundle (zip)")
    verify.add_argument("--key", required=True, help="the log's verifier key (NAME+ID+KEY)")
    verify.set_defaults(func=_audit_verify)


def known_at_param(value: str | None, flag: str = "--known-at") -> str | None:
    """`log:N` as the API's `log_size=N`; an instant as given (checked here: exit 2)."""
    if value is None:
        return None
    from gpucap.ledger.known import parse_known_at

    if value.startswith("log:"):
        value = f"log_size={value[4:]}"
    elif value.startswith("log_size="):
        raise InputError(flag, "write log:N (the API's log_size=N)")
    parse_known_at(value, flag)
    return value


def _explain(args: argparse.Namespace) -> int:
    from gpucap.ledger import listings
    from gpucap.ledger.cli import _client
    from gpucap.ledger.known import short

    known = known_at_param(args.known_at)
    client = _client(args)
    try:
        answer = client.explain(args.rule, args.scope, args.as_of, known, args.ruleset)
    finally:
        client.close()
    rows = answer["contributions"]
    if args.format == "table":
        print(
            f"{answer['rule']} {answer['scope']} on {answer['as_of']}: {answer['status']}, "
            f"used {output.tpp_text(answer['used_tpp'])} TPP"
        )
        cells = [[_explain_cell(r, k) for k, _ in EXPLAIN_COLUMNS] for r in rows]
        text = listings.render(rows, EXPLAIN_COLUMNS, "table", headers=args.headers, display=cells)
        print(text, end="")
        figures = ", ".join(f"{k} {output.tpp_text(v)}" for k, v in answer["figures"].items())
        print(f"contributions add up to: {figures}")
        print(short(answer["provenance"]), end="")
    else:
        text = listings.render(rows, EXPLAIN_COLUMNS, args.format, answer, headers=args.headers)
        print(text, end="")
    return 1 if answer["status"] == "breach" else 0


def _explain_cell(row: dict[str, Any], key: str) -> str:
    """A contribution's table cell: TPP in whole numbers, as every table shows it (csv, json
    and yaml keep the values)."""
    value = row.get(key)
    return output.tpp_text(value) if key in _TPP and value is not None else output.cell(value)


def _event_params(args: argparse.Namespace) -> dict[str, str]:
    names = ("since", "until", "kind", "node", "site", "entity", "cursor", "limit")
    return {n: str(getattr(args, n)) for n in names if getattr(args, n) is not None}


def _events(args: argparse.Namespace) -> int:
    from gpucap.ledger import events, listings

    params = _event_params(args)
    query = events.parse_query(params)  # refused here, by flag name, before any connection
    pages: list[dict[str, Any]] = []
    if args.ledger is not None:  # only the flag: GPUCAP_LEDGER must not move --db's reader
        from gpucap.ledger.client import base_url, connect

        url = base_url(args.ledger, "--ledger")
        client = connect(args, url, os.environ, "an operator or auditor token")
        try:
            while True:
                page = client.events(params)
                pages.append(page)
                if not args.all or page["next_cursor"] is None:
                    break
                params["cursor"] = str(page["next_cursor"])
        finally:
            client.close()
    else:
        from gpucap.ledger.cli import _store

        store = _store(args)
        try:
            pages = events.history(store, query, args.all)
        finally:
            store.close()
    entries = [e for p in pages for e in p["entries"]]
    doc = {"entries": entries, "next_cursor": pages[-1]["next_cursor"]}
    rows = [{**e, "node": _about(e)[0], "site": _about(e)[1]} for e in entries]
    print(listings.render(rows, EVENT_COLUMNS, args.format, doc, headers=args.headers), end="")
    return 0


def _about(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    body = entry.get("body") or {}
    if entry.get("kind", "").startswith("token_"):
        subject = body.get("subject") or {}
        return subject.get("node_id"), subject.get("site_id")
    return body.get("node_id"), body.get("site_id")


def _export(args: argparse.Namespace) -> int:
    from gpucap.core.data import parse_day
    from gpucap.ledger import bundle
    from gpucap.ledger.cli import _settings, _store
    from gpucap.ledger.known import parse_known_at
    from gpucap.ledger.service import Ledger
    from gpucap.ledger.tokens import Principal

    as_of = None
    if args.as_of is not None:
        try:
            as_of = parse_day(args.as_of)
        except ValueError as exc:
            raise InputError("--as-of", str(exc)) from None
    known = parse_known_at(known_at_param(args.known_at), "--known-at")
    if not args.output.parent.is_dir():
        raise InputError("--output", f"no directory {args.output.parent}")
    store = _store(args)
    try:
        led = Ledger(_settings(args), store)
        principal = Principal("export", "operator", operator=args.by)
        manifest = bundle.export(
            led, args.output, principal, args.scope, as_of, known, f"operator:{args.by}"
        )
    finally:
        store.close()
    print(
        f"wrote {args.output}: log size {manifest['log_size']}, as of {manifest['as_of']}, "
        f"{len(manifest['sites'])} sites, {len(manifest['not_reproducible'])} checks not "
        "reproducible within the scope"
    )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from gpucap.ledger import bundle, note
    from gpucap.ledger.errors import VerificationError

    key = note.parse_verifier_key(args.key, "--key")
    try:
        outcome = bundle.verify(args.bundle, key)
    except bundle.NotABundleError as exc:
        print(f"gpucap: not an evidence bundle: {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"gpucap: bundle does not verify: {exc}", file=sys.stderr)
        return 1
    print(
        f"ok: {outcome.entries} entries proven in the checkpoint signed by {key.name}; "
        f"headroom, {outcome.checks} explain files and {outcome.devices} devices re-derived"
    )
    for rule, scope in outcome.not_reproducible:
        print(f"not reproducible within the bundle's scope (values as exported): {rule} {scope}")
    for line in outcome.notes:
        print(f"note: {line}")
    return 0
