"""`gpucap ledger serve|migrate|token|verify|rebuild|decommission`, `gpucap headroom`,
`gpucap whatif`. Handlers import the web and database stacks lazily.

Exit codes (see gpucap/cli.py): headroom 1 when a visible check is breached, whatif 1 when the
change is not allowed; verify 3 when the chain is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpucap.core.errors import InputError


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser("ledger", help="run and administer the ledger service")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)

    def db_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", help="database URL (default: GPUCAP_DB or sqlite:///gpucap.db)")

    serve = sub.add_parser("serve", help="serve the ledger API")
    serve.add_argument("--registry", type=Path, help="registry file (scenario format)")
    db_flag(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8470)")
    serve.add_argument(
        "--workers", type=int, help="worker processes sharing the port and database (default 1)"
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log every request (uvicorn access log; default off)",
    )
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    db_flag(migrate)
    migrate.set_defaults(func=_migrate)

    token = sub.add_parser("token", help="issue or revoke a bearer token")
    db_flag(token)
    token.add_argument("--node", help="node id (node token)")
    token.add_argument("--site", help="site id the node reports for (node token)")
    token.add_argument("--operator", help="operator name (read token)")
    token.add_argument("--entity", help="limit an operator token to one entity's scopes")
    token.add_argument("--revoke", metavar="ID", help="revoke the token with this id")
    token.set_defaults(func=_token)

    verify = sub.add_parser("verify", help="walk the event log's hash chain")
    db_flag(verify)
    verify.add_argument("--expect-head", metavar="HASH", help="a head hash recorded earlier")
    verify.set_defaults(func=_verify)

    rebuild = sub.add_parser("rebuild", help="rebuild inventory projections from the event log")
    db_flag(rebuild)
    rebuild.set_defaults(func=_rebuild)

    decom = sub.add_parser("decommission", help="decommission a node (its devices stop counting)")
    db_flag(decom)
    decom.add_argument("--node", required=True)
    decom.add_argument("--by", default="cli", help="who decommissions it (recorded)")
    decom.set_defaults(func=_decommission)

    headroom = subparsers.add_parser("headroom", help="ask a ledger how much headroom is left")
    headroom.add_argument("--ledger", required=True, help="ledger base URL")
    headroom.add_argument("--scope", help="country:XX, entity:E or site:S")
    headroom.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    headroom.add_argument("--format", choices=("table", "json"), default="table")
    headroom.set_defaults(func=_headroom)

    whatif = subparsers.add_parser("whatif", help="would adding devices at a site be allowed?")
    whatif.add_argument("--ledger", required=True, help="ledger base URL")
    whatif.add_argument("--site", required=True)
    whatif.add_argument("--model", required=True, help="catalogue model id")
    whatif.add_argument("--count", type=int, required=True)
    whatif.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    whatif.add_argument("--format", choices=("table", "json"), default="table")
    whatif.set_defaults(func=_whatif)


def _settings(args: argparse.Namespace, **more: Any) -> Any:
    from gpucap.ledger.settings import Settings

    return Settings.from_env(os.environ, db_url=getattr(args, "db", None), **more)


def _store(args: argparse.Namespace) -> Any:
    """The database of an admin command: it must exist with the shipped schema (only `serve`
    and `migrate` create or migrate one; a wrong --db must not become a new empty ledger)."""
    from gpucap.ledger.store import Store

    return Store.open_existing(_settings(args))


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    import uvicorn

    from gpucap.ledger.app import create_app
    from gpucap.ledger.service import Ledger, serving_policy
    from gpucap.ledger.store import Store

    settings = _settings(
        args,
        registry=args.registry,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
    )
    # Migrate and record the registry before serving, so that a bad file or an unreachable
    # database is one error line and exit 2/3, not a failed startup inside the server.
    store = Store.open(settings)
    ledger = Ledger(settings, store)
    if settings.registry is not None:
        ledger.load_registry_file(settings.registry)
    options: dict[str, Any] = {"log_level": "info", "access_log": settings.access_log}
    if settings.workers > 1:
        from gpucap.ledger import workers

        return workers.serve(settings, ledger, _reload, options)
    app = create_app(replace(settings, registry=None), ledger)

    def reload(_signum: int, _frame: Any) -> None:
        if settings.registry is not None:
            threading.Thread(target=_reload, args=(ledger, settings.registry), daemon=True).start()

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload)
    serving_policy(ledger)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, **options)
    finally:
        store.close()
    return 0


def _reload(led: Any, path: Path) -> None:
    """Re-read the registry on SIGHUP (in a thread of `serve` or of the workers' supervisor).

    Whatever goes wrong is one line on stderr (naming the field for a bad file) and the old
    registry stays in force: nothing may escape into the thread's traceback printer.
    """
    from gpucap.core.errors import GpucapError

    try:
        led.load_registry_file(path, actor="sighup")
    except GpucapError as exc:
        print(f"gpucap: registry not reloaded, the previous one stays: {exc}", file=sys.stderr)
    except Exception as exc:  # a reload must never kill the handler thread
        print(
            f"gpucap: registry not reloaded, the previous one stays: {path}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )


def _migrate(args: argparse.Namespace) -> int:
    from gpucap.ledger.store import Store

    store = Store.open(_settings(args), migrate=False)
    try:
        head = store.migrate()
    finally:
        store.close()
    print(f"database {store.safe_url} is at revision {head}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gpucap.ledger import tokens
    from gpucap.ledger.settings import utc_now

    settings = _settings(args)
    # The flags are checked before the database is opened: a usage error is exit 2 anywhere.
    kind, subject = "operator", {"operator": args.operator, "entity": args.entity}
    if args.node or args.site:
        if args.operator or args.entity:
            raise InputError("--operator", "give --node/--site or --operator, not both")
        kind, subject = "node", {"node_id": args.node, "site_id": args.site}
    if not args.revoke:
        tokens.check_subject(kind, **subject)
    store = _store(args)
    try:
        if args.revoke:
            tokens.revoke(store, args.revoke, utc_now())
            print(f"revoked {args.revoke}")
            return 0
        token_id, token = tokens.issue(store, kind, utc_now(), settings.secret, **subject)
    finally:
        store.close()
    print(f"token id {token_id}", file=sys.stderr)
    print(token)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gpucap.ledger import eventlog
    from gpucap.ledger.errors import ChainBrokenError

    store = _store(args)
    try:
        state = store.state()
        with store.read() as conn:
            head = eventlog.verify_rows(
                eventlog.read_rows(conn), eventlog.Head(state.head_seq, state.head_hash)
            )
    finally:
        store.close()
    if args.expect_head and args.expect_head not in (head.hash,):
        raise ChainBrokenError(head.seq, f"head {head.hash} is not the expected {args.expect_head}")
    print(f"ok: {head.seq} events verified")
    print(f"head {head.seq} {head.hash}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from gpucap.core.catalogue import default_catalogue
    from gpucap.ledger import ingest

    store = _store(args)
    try:
        n = ingest.rebuild(store, default_catalogue())
    finally:
        store.close()
    print(f"rebuilt projections from {n} events")
    return 0


def _decommission(args: argparse.Namespace) -> int:
    from gpucap.ledger import ingest
    from gpucap.ledger.settings import utc_now

    store = _store(args)
    try:
        n = ingest.decommission(store, args.node, utc_now(), f"operator:{args.by}")
    finally:
        store.close()
    print(f"node {args.node} decommissioned; {n} devices closed")
    return 0


def _client(args: argparse.Namespace) -> Any:
    """The operators' client, after checking the flags a ledger would refuse (exit 2)."""
    from gpucap.core.data import parse_day
    from gpucap.ledger.client import LedgerClient, base_url

    base_url(args.ledger, "--ledger")
    if args.as_of is not None:
        try:
            parse_day(args.as_of)
        except ValueError as exc:
            raise InputError("--as-of", str(exc)) from None
    token = os.environ.get("GPUCAP_TOKEN")
    if not token:
        raise InputError("GPUCAP_TOKEN", "set it to an operator token (gpucap ledger token)")
    return LedgerClient(args.ledger, token)


def _headroom(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        answer = client.headroom(args.scope, args.as_of)
    finally:
        client.close()
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    else:
        from gpucap.core.report import render_document

        print(render_document(answer), end="")
    return 1 if answer["verdict"] == "breach" else 0


def _whatif(args: argparse.Namespace) -> int:
    if args.count <= 0:
        raise InputError("--count", "must be a positive number of devices")
    client = _client(args)
    body: dict[str, Any] = {"add": [{"site": args.site, "model": args.model, "count": args.count}]}
    if args.as_of:
        body["as_of"] = args.as_of
    try:
        answer = client.whatif(body)
    finally:
        client.close()
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    else:
        from gpucap.core.report import checks_table

        binding = answer["binding"]
        verdict = "allowed" if answer["allowed"] else "NOT allowed"
        print(f"adding {args.count} x {args.model} at {args.site}: {verdict}")
        if binding:
            print(
                f"binding: {binding['rule']} {binding['scope']} "
                f"headroom after {binding['headroom_tpp']:,} TPP"
            )
        print(checks_table(answer["after"]))
    return 0 if answer["allowed"] else 1
