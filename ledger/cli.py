"""`gpucap ledger serve|migrate|token|verify|rebuild|decommission|nodes|log-key`,
`gpucap headroom`, `gpucap whatif`, `gpucap log verify`. Handlers import the web and database
stacks lazily.

Exit codes (see gpucap/cli.py): headroom 1 when a visible check is breached, whatif 1 when the
change is not allowed; ledger verify 3 naming the first problem; log verify 1 when the log is
inconsistent or a signature is bad, 3 when the ledger cannot be reached. The module is past
400 lines because it holds every `gpucap ledger` admin command's flags and handler, each a
few lines calling a use-case function; the auditor's commands are in `audit_cli.py`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpucap.core import output
from gpucap.core.errors import InputError
from gpucap.ledger.client import add_client_flags


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
    serve.add_argument("--metrics-host", help="serve /metrics on this address instead")
    serve.add_argument("--metrics-port", type=int, help="serve /metrics on this port only")
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        help="connections and requests at once; beyond them a 503 (default 1000)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log every request (uvicorn access log; default off)",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate chain (default: GPUCAP_LEDGER_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        metavar="FILE",
        help="the certificate's unencrypted PEM private key (default: GPUCAP_LEDGER_TLS_KEY)",
    )
    serve.add_argument(
        "--log-format", help="log lines as text or json (default: GPUCAP_LOG_FORMAT or text)"
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
    token.add_argument("--auditor", metavar="NAME", help="auditor name (reads everything)")
    token.add_argument("--revoke", metavar="ID", help="revoke the token with this id")
    token.add_argument("--by", help="who issues or revokes it (recorded; default cli)")
    token.add_argument(
        "--expires",
        metavar="WHEN",
        help="expiry: an RFC 3339 instant or a duration from now (90d, 12h); default never",
    )
    token.add_argument(
        "--label", metavar="TEXT", help="free text kept with the token (at most 128 characters)"
    )
    token.add_argument(
        "--list", action="store_true", help="list the issued tokens (never a token or its hash)"
    )
    output.add_format_flags(token, default=None, what=" of --list")
    token.set_defaults(func=_token)

    verify = sub.add_parser(
        "verify", help="recompute the log's tree from its entries and check its checkpoints"
    )
    db_flag(verify)
    verify.add_argument(
        "--projections",
        action="store_true",
        help="also replay the log into a scratch copy and compare the projections",
    )
    verify.add_argument(
        "--key", help="verifier key to check signatures with (default: the ledger's own)"
    )
    verify.set_defaults(func=_verify)

    log_key = sub.add_parser("log-key", help="print the log's verifier key")
    db_flag(log_key)
    log_key.set_defaults(func=_log_key)

    rebuild = sub.add_parser("rebuild", help="rebuild inventory projections from the log")
    db_flag(rebuild)
    rebuild.set_defaults(func=_rebuild)

    decom = sub.add_parser("decommission", help="decommission a node (its devices stop counting)")
    db_flag(decom)
    decom.add_argument("--node", required=True)
    decom.add_argument("--by", default="cli", help="who decommissions it (recorded)")
    decom.add_argument("--reason", help="why (recorded in the log entry)")
    decom.add_argument(
        "--dry-run",
        action="store_true",
        help="say which node, how many present devices would be closed and how many tokens "
        "revoked; change nothing",
    )
    decom.set_defaults(func=_decommission)

    nodes = sub.add_parser("nodes", help="list nodes: last contact, state and present devices")
    db_flag(nodes)
    nodes.add_argument(
        "--ledger",
        help="read GET /v1/nodes from this ledger instead (token: --token-file, "
        "GPUCAP_TOKEN_FILE or GPUCAP_TOKEN; GPUCAP_LEDGER alone does not switch from the database)",
    )
    nodes.add_argument("--site", help="only this site's nodes")
    output.add_format_flags(nodes)
    add_client_flags(nodes)
    nodes.set_defaults(func=_nodes, as_of=None)

    from gpucap.ledger import audit_cli, licences, shipimport

    audit_cli.register_ledger(sub, db_flag)
    licences.register(subparsers)
    shipimport.register(subparsers)

    headroom = subparsers.add_parser("headroom", help="ask a ledger how much headroom is left")
    headroom.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    headroom.add_argument("--scope", help="country:XX, entity:E or site:S")
    headroom.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    headroom.add_argument(
        "--known-at", help="the record as the log held it: ISO 8601 instant or log:N"
    )
    headroom.add_argument(
        "--ruleset",
        action="append",
        default=[],
        metavar="ID",
        help="rule pack to evaluate instead of the registry's; repeat for several",
    )
    headroom.add_argument("--format", choices=("table", "json"), default="table")
    add_client_flags(headroom)
    headroom.set_defaults(func=_headroom)

    whatif = subparsers.add_parser("whatif", help="would adding devices at a site be allowed?")
    whatif.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    whatif.add_argument("--site", required=True)
    whatif.add_argument("--model", required=True, help="catalogue model id")
    whatif.add_argument("--count", type=int, required=True)
    whatif.add_argument("--as-of", help="date YYYY-MM-DD (default: today)")
    whatif.add_argument(
        "--known-at", help="the record as the log held it: ISO 8601 instant or log:N"
    )
    whatif.add_argument("--format", choices=("table", "json"), default="table")
    add_client_flags(whatif)
    whatif.set_defaults(func=_whatif)

    logp = subparsers.add_parser("log", help="verify a ledger's transparency log from outside")
    logsub = logp.add_subparsers(dest="log_command", metavar="SUBCOMMAND", required=True)
    lverify = logsub.add_parser("verify", help="check the signed checkpoint and its consistency")
    lverify.add_argument("--ledger", help="ledger base URL (default: GPUCAP_LEDGER)")
    lverify.add_argument("--key", required=True, help="the log's verifier key (NAME+ID+KEY)")
    lverify.add_argument(
        "--state", type=Path, help="directory of accepted checkpoints (kept between runs)"
    )
    lverify.add_argument(
        "--entries", action="store_true", help="download every entry and recompute the root"
    )
    add_client_flags(lverify)
    lverify.set_defaults(func=_log_verify)


def _settings(args: argparse.Namespace, **more: Any) -> Any:
    from gpucap.ledger.settings import Settings

    return Settings.from_env(os.environ, db_url=getattr(args, "db", None), **more)


def _store(args: argparse.Namespace) -> Any:
    """The database of an admin command: it must exist with the shipped schema (only `serve`
    and `migrate` create or migrate one; a wrong --db must not become a new empty ledger)."""
    from gpucap.ledger.store import Store

    return Store.open_existing(_settings(args))


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    import uvicorn

    from gpucap.core import logsetup
    from gpucap.ledger import listeners
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
        limit_concurrency=args.limit_concurrency,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_format=args.log_format,
    )
    logsetup.configure(settings.log_format)  # before anything logs: every line in one format
    if settings.tls_cert is not None:  # a wrong file is exit 2 naming its flag, not a traceback
        from gpucap.core.credfiles import check_server_pair

        check_server_pair(settings.tls_cert, settings.tls_key)
    # Migrate and record the registry before serving, so that a bad file or an unreachable
    # database is one error line and exit 2/3, not a failed startup inside the server.
    store = Store.open(settings)
    ledger = Ledger(settings, store)
    ledger.signer  # noqa: B018 (a bad GPUCAP_LOG_KEY_FILE or origin is exit 2 here, not at startup)
    if settings.registry is not None:
        ledger.load_registry_file(settings.registry)
    from gpucap.ledger.guard import guarded_protocol

    options: dict[str, Any] = {
        "log_level": "info",
        "access_log": settings.access_log,
        "http": guarded_protocol(settings.header_timeout_s, settings.body_timeout_s),
        "limit_concurrency": settings.limit_concurrency,
        "log_config": logsetup.log_config(settings.log_format),
    }
    if settings.tls_cert is not None:  # the API, the metrics listener and every worker
        options.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
    listeners.warn_plain_http(settings)
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
    metrics = None
    if settings.metrics_port is not None:
        metrics = uvicorn.Config(
            listeners.metrics_app(settings, lambda: ledger),
            host=settings.metrics_host or settings.host,
            port=settings.metrics_port,
            **options,
        )
    if settings.metrics_token is None:
        logging.getLogger("gpucap.ledger").warning(
            "GPUCAP_METRICS_TOKEN is not set: whoever reaches /metrics reads the whole fleet"
        )
    try:
        listeners.run(
            uvicorn.Config(app, host=settings.host, port=settings.port, **options), metrics
        )
    finally:
        store.close()
    return 0


def _reload(led: Any, path: Path) -> None:
    """Re-read the registry on SIGHUP (in a thread of `serve` or of the workers' supervisor).

    A success is logged by `load_registry_file` with the digest in force. Whatever goes wrong
    is one error line (naming the field for a bad file) and the old registry stays in force:
    nothing may escape into the thread's traceback printer.
    """
    import logging

    from gpucap.core.errors import GpucapError

    log = logging.getLogger("gpucap.ledger")
    stays = "registry not reloaded, the previous one stays"
    try:
        led.load_registry_file(path, actor="sighup")
    except GpucapError as exc:
        log.error("%s: %s", stays, exc, extra={"path": str(path)})
    except Exception as exc:  # a reload must never kill the handler thread
        log.error("%s: %s: %s: %s", stays, path, type(exc).__name__, exc, extra={"path": str(path)})


def _migrate(args: argparse.Namespace) -> int:
    from gpucap.ledger.store import Store

    settings = _settings(args)
    store = Store.open(settings, migrate=False)
    try:
        head = store.migrate()
        n = _integrate(store, settings)
    finally:
        store.close()
    print(f"database {store.safe_url} is at revision {head}")
    if n:
        print(f"{n} log entries integrated and signed")
    return 0


def _integrate(store: Any, settings: Any) -> int:
    """Sign what this command appended, at once (a serving ledger would within a second)."""
    from gpucap.ledger import log
    from gpucap.ledger.settings import utc_now

    signer = log.load_signer(store, settings.log_origin, settings.log_key_file)
    return log.integrate(store, signer, utc_now(), settings.log_checkpoint_keep_s)


def _token(args: argparse.Namespace) -> int:
    from gpucap.ledger import tokens
    from gpucap.ledger.settings import utc_now

    settings = _settings(args)
    # The flags are checked before the database is opened: a usage error is exit 2 anywhere.
    if args.list:
        return _token_list(args)
    if args.format is not None:
        raise InputError("--format", "only with --list")
    if not args.headers:
        raise InputError("--no-headers", "only with --list")
    kinds = {
        "node": (args.node or args.site, {"node_id": args.node, "site_id": args.site}),
        "operator": (
            args.operator or args.entity,
            {"operator": args.operator, "entity": args.entity},
        ),
        "auditor": (args.auditor, {"auditor": args.auditor}),
    }
    given = [k for k, (present, _s) in kinds.items() if present]
    if len(given) > 1:
        raise InputError("--" + given[1], "give one of --node/--site, --operator or --auditor")
    kind = given[0] if given else "operator"
    subject = kinds[kind][1]
    expires_at = None
    if args.revoke:
        for flag, value in (("--expires", args.expires), ("--label", args.label)):
            if value is not None:
                raise InputError(flag, "only when issuing a token, not with --revoke")
    else:
        tokens.check_subject(kind, **subject)
        if args.label is not None:
            tokens.check_label(args.label)
        if args.expires is not None:
            expires_at = tokens.parse_expires(args.expires, utc_now())
    store = _store(args)
    try:
        if args.revoke:
            tokens.revoke(store, args.revoke, utc_now(), by=args.by or "cli")
            _integrate(store, settings)
            print(f"revoked {args.revoke}")
            return 0
        token_id, token = tokens.issue(
            store,
            kind,
            utc_now(),
            settings.secret,
            by=args.by or "cli",
            expires_at=expires_at,
            label=args.label,
            check_registry=True,
            **subject,
        )
        _integrate(store, settings)
    finally:
        store.close()
    print(f"token id {token_id}", file=sys.stderr)
    print(token)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    """`token --list`; any flag that issues or revokes is a usage error (before any I/O)."""
    from gpucap.ledger import listings

    flags = {
        "--node": args.node,
        "--site": args.site,
        "--operator": args.operator,
        "--entity": args.entity,
        "--auditor": args.auditor,
        "--revoke": args.revoke,
        "--by": args.by,
        "--expires": args.expires,
        "--label": args.label,
    }
    for flag, value in flags.items():
        if value is not None:
            raise InputError(flag, "--list issues and revokes nothing: give it alone")
    store = _store(args)
    try:
        rows = listings.token_listing(store)
    finally:
        store.close()
    fmt = args.format or "table"
    doc = {"tokens": rows}
    text = listings.render(rows, listings.TOKEN_COLUMNS, fmt, doc, headers=args.headers)
    print(text, end="")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gpucap.core.catalogue import default_catalogue
    from gpucap.ledger import log, logcheck, note, replay

    settings = _settings(args)
    store = _store(args)
    try:
        signer = log.load_signer(store, settings.log_origin, settings.log_key_file)
        verifier = note.parse_verifier_key(args.key or signer.verifier_key, "--key")
        found = logcheck.verify_stored(store, verifier)
        replayed = replay.compare(store, default_catalogue()) if args.projections else None
    finally:
        store.close()
    print(f"ok: {found.size} entries, their tree and {found.checkpoints} kept checkpoints verified")
    if replayed is not None:
        print(f"ok: projections equal a replay of {replayed} entries")
    if found.pending:
        print(f"{found.pending} entries appended but not yet integrated (signed within seconds)")
    print(f"root {found.size} {base64.b64encode(found.root).decode()}")
    return 0


def _log_key(args: argparse.Namespace) -> int:
    from gpucap.ledger import log

    settings = _settings(args)
    store = _store(args)
    try:
        print(log.load_signer(store, settings.log_origin, settings.log_key_file).verifier_key)
    finally:
        store.close()
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from gpucap.core.catalogue import default_catalogue
    from gpucap.ledger import replay

    store = _store(args)
    try:
        n = replay.rebuild(store, default_catalogue())
    finally:
        store.close()
    print(f"rebuilt projections from {n} log entries")
    return 0


def _decommission(args: argparse.Namespace) -> int:
    from gpucap.ledger import ingest
    from gpucap.ledger.settings import utc_now

    if args.reason is not None:
        ingest.check_reason(args.reason)  # exit 2 before the database is opened
    store = _store(args)
    try:
        if args.dry_run:
            n, revoked = ingest.decommission_preview(store, args.node, utc_now())
            print(
                f"node {args.node} would be decommissioned; {n} devices would be closed; "
                f"{revoked} tokens would be revoked"
            )
            return 0
        actor = f"operator:{args.by}"
        n, revoked = ingest.decommission(store, args.node, utc_now(), actor, args.reason)
        _integrate(store, _settings(args))
    finally:
        store.close()
    print(f"node {args.node} decommissioned; {n} devices closed; {revoked} tokens revoked")
    return 0


def _nodes(args: argparse.Namespace) -> int:
    """`ledger nodes`: the GET /v1/nodes answer, from the database (--db) or a ledger (only an
    explicit --ledger: GPUCAP_LEDGER, set for the other client commands, must not switch it)."""
    from gpucap.ledger import listings

    if args.ledger is not None:
        if args.db is not None:
            raise InputError("--ledger", "give --db or --ledger, not both")
        client = _client(args)
        try:
            doc = client.nodes(args.site)
        finally:
            client.close()
    else:
        from gpucap.ledger.service import Ledger
        from gpucap.ledger.tokens import Principal

        settings = _settings(args)
        store = _store(args)
        try:
            everyone = Principal(token_id="", kind="operator", operator="cli")
            doc = Ledger(settings, store).nodes(everyone, args.site)
        finally:
            store.close()
    rows = listings.node_rows(doc)
    text = listings.render(rows, listings.NODE_COLUMNS, args.format, doc, headers=args.headers)
    print(text, end="")
    return 0


def _client(args: argparse.Namespace) -> Any:
    """The operators' client, after checking the flags a ledger would refuse (exit 2); the URL
    is `--ledger`, else GPUCAP_LEDGER."""
    from gpucap.core.data import parse_day
    from gpucap.ledger.client import connect, ledger_url

    url = ledger_url(args.ledger, os.environ)
    if args.as_of is not None:
        try:
            parse_day(args.as_of)
        except ValueError as exc:
            raise InputError("--as-of", str(exc)) from None
    return connect(args, url, os.environ, "an operator token (gpucap ledger token)")


def _headroom(args: argparse.Namespace) -> int:
    from gpucap.ledger.audit_cli import known_at_param

    known = known_at_param(args.known_at)
    client = _client(args)
    try:
        answer = client.headroom(args.scope, args.as_of, known, args.ruleset)
    finally:
        client.close()
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    else:
        from gpucap.core.report import render_document
        from gpucap.ledger.known import short

        print(render_document(answer), end="")
        print(short(answer["provenance"]), end="")
    return 1 if answer["verdict"] == "breach" else 0


def _whatif(args: argparse.Namespace) -> int:
    if args.count <= 0:
        raise InputError("--count", "must be a positive number of devices")
    client = _client(args)
    from gpucap.ledger.audit_cli import known_at_param

    body: dict[str, Any] = {"add": [{"site": args.site, "model": args.model, "count": args.count}]}
    if args.as_of:
        body["as_of"] = args.as_of
    known = known_at_param(args.known_at)
    if known:
        body["known_at"] = known
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
                f"headroom after {output.tpp_text(binding['headroom_tpp'])} TPP"
            )
        from gpucap.ledger.known import short

        for ruleset in answer.get("rulesets") or [answer["ruleset"]]:
            print(f"rule pack {ruleset['id']} {ruleset['version']}: {ruleset['status']}")
            for warning in ruleset["warnings"]:
                print(f"warning: {warning}")
        print(checks_table(answer["after"]))
        print(short(answer["provenance"]), end="")
    return 0 if answer["allowed"] else 1


def _log_verify(args: argparse.Namespace) -> int:
    from gpucap.ledger import auditor, note
    from gpucap.ledger.client import connect, ledger_url
    from gpucap.ledger.errors import VerificationError

    url = ledger_url(args.ledger, os.environ)
    key = note.parse_verifier_key(args.key, "--key")
    client = connect(args, url, os.environ, "an auditor or operator token")
    try:
        outcome = auditor.verify(client.fetch, key, args.state, args.entries)
    except VerificationError as exc:
        print(f"gpucap: log inconsistent: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    root = base64.b64encode(outcome.root).decode()
    if outcome.previous_size is None:
        print(f"ok: checkpoint {outcome.size} {root} signed by {key.name}")
    else:
        print(f"ok: checkpoint {outcome.size} {root} extends {outcome.previous_size}")
    if args.entries:
        print(f"ok: {outcome.entries_checked} entries make the checkpoint's root")
    return 0
