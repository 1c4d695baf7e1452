"""The ledger's HTTP API (FastAPI). `create_app(settings)` does no work until startup.

Errors map to HTTP status here and nowhere else: InputError -> 422 with `detail: [{path,
reason}]`, AuthError -> its 401/403, UnavailableError -> 503, a refused body -> 413/415;
each refused request is logged here too, once, with the client and the token's id.
It is past 400 lines because the routes and the few functions they share (reading a JSON body,
the headroom answer, the metrics refresh loop) are read together; the auditor's and the log's
routes live in `auditapi.py` and `logapi.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import date
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gpucap.core.data import parse_day
from gpucap.core.engine import Evaluation, evaluate
from gpucap.core.errors import GpucapError, InputError
from gpucap.core.report import check_to_dict, document_head
from gpucap.ledger import openapi
from gpucap.ledger.auditapi import audit_routes
from gpucap.ledger.errors import AuthError, RejectedError, UnavailableError
from gpucap.ledger.evaluations import View
from gpucap.ledger.known import parse_known_at
from gpucap.ledger.listeners import check_metrics_token
from gpucap.ledger.logapi import log_routes
from gpucap.ledger.models import Report, WhatIf, loc_path
from gpucap.ledger.periodreport import report_routes
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from gpucap.ledger.views import (
    FleetIndex,
    can_see,
    parse_request_scope,
    require_visible,
    whatif_answer,
    whatif_fleet,
)

SNAPSHOT_INTERVAL_S = 5.0  # how often the loop asks whether the snapshot needs rebuilding
log = logging.getLogger("gpucap.ledger")


class BodyError(RejectedError):
    """A request body refused before it is parsed: too large (413) or not JSON (415)."""

    def __init__(self, status: int, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.status = status


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RejectedError(key, "given twice in one JSON object")
        seen[key] = value
    return seen


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body of a JSON request, refused before more than `limit` bytes are read (413: by
    its Content-Length, or as it streams), when it is not `application/json` (415), or when an
    object names a key twice (422 naming the key; JSON parsers would keep the last silently)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BodyError(
            415, "(content-type)", f"expected application/json, got {media or 'none'!r}"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(413, "(body)", f"larger than {limit} bytes ({declared} declared)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "(body)", f"larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    with contextlib.suppress(ValueError):  # not JSON at all: the model's parser says why
        json.loads(body, object_pairs_hook=_no_duplicate_keys)
    return body


# The `reason` of a refusal's log line that is not an AuthError (whose own reason is used).
REFUSED = {413: "too_large", 415: "unsupported_media_type", 422: "invalid", 503: "unavailable"}


def log_refusal(
    led: Ledger | None, request: Request, status: int, reason: str, detail: str
) -> None:
    """One line per refused request (WARNING for 401/403 and 503, INFO for a refused body):
    the client's address, the route, status and reason, and the id of the request's token
    when it verifies (never the token). Text lines say it all; JSON lines add the fields."""
    client = request.client
    address = f"{client.host}:{client.port}" if client is not None else "unknown"
    token_id = None if led is None else led.token_id_of(request.headers.get("authorization"))
    method, path = request.method, request.url.path
    level = logging.INFO if status in (413, 415, 422) else logging.WARNING
    by = f", token {token_id}" if token_id else ""
    log.log(
        level,
        "refused %d %s: %s %s from %s%s: %s",
        status,
        reason,
        method,
        path,
        address,
        by,
        detail,
        extra={
            "client": address,
            "token_id": token_id,
            "method": method,
            "path": path,
            "status": status,
            "reason": reason,
            "detail": detail,
        },
    )


def _validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    return [{"path": loc_path(e["loc"]), "reason": e["msg"]} for e in exc.errors()[:20]]


def _parse_day(value: str | None, field: str, default: date) -> date:
    if value is None:
        return default
    try:
        return parse_day(value)
    except ValueError as exc:
        raise RejectedError(field, str(exc)) from None


def create_app(settings: Settings, ledger: Ledger | None = None) -> FastAPI:
    """The application; the store opens (and migrates) and the registry loads at startup."""
    holder: dict[str, Ledger] = {}
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        led = ledger
        if led is None:
            store = await run_in_threadpool(Store.open, settings)
            led = Ledger(settings, store)
        holder["ledger"] = led
        if settings.registry is not None:
            await run_in_threadpool(led.load_registry_file, settings.registry)
        await run_in_threadpool(led.start)
        refresher = threading.Thread(target=_refresh_loop, args=(led, stop), daemon=True)
        refresher.start()
        _app.state.ledger = led
        try:
            yield
        finally:
            stop.set()
            refresher.join(timeout=5)
            await run_in_threadpool(led.stop)
            if ledger is None:
                led.store.close()

    # /docs is served offline by openapi.install; ReDoc would load from a CDN, so it is off.
    app = FastAPI(
        title="gpucap ledger", version="1", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    openapi.install(app, settings)

    def get() -> Ledger:
        return holder["ledger"]

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        log_refusal(holder.get("ledger"), request, exc.status_code, exc.reason, exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            {"detail": exc.detail, "reason": exc.reason}, exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own query checks (a missing required parameter) in the ledger's shape."""
        detail = [{"path": loc_path(e["loc"][1:]), "reason": e["msg"]} for e in exc.errors()]
        first = f"{detail[0]['path']}: {detail[0]['reason']}" if detail else "invalid request"
        log_refusal(holder.get("ledger"), request, 422, REFUSED[422], first)
        return JSONResponse({"detail": detail[:20]}, 422)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        log_refusal(holder.get("ledger"), request, 422, REFUSED[422], str(exc))
        return JSONResponse({"detail": [{"path": exc.path, "reason": exc.reason}]}, 422)

    @app.exception_handler(BodyError)
    async def _body(request: Request, exc: BodyError) -> JSONResponse:
        log_refusal(holder.get("ledger"), request, exc.status, REFUSED[exc.status], str(exc))
        return JSONResponse({"detail": [{"path": exc.path, "reason": exc.reason}]}, exc.status)

    @app.exception_handler(UnavailableError)
    async def _unavailable(request: Request, exc: UnavailableError) -> JSONResponse:
        log_refusal(holder.get("ledger"), request, 503, REFUSED[503], str(exc))
        return JSONResponse({"detail": str(exc)}, 503)

    def operator(request: Request) -> Principal:
        """A reader: an operator (maybe entity-scoped) or an auditor."""
        return get().authenticate(request.headers.get("authorization"), "operator", "auditor")

    @app.post("/v1/reports")
    async def post_report(request: Request) -> JSONResponse:
        """Store one `gpucap.report/v1` (node token); duplicates and older seqs change nothing."""
        led = get()
        principal = led.authenticate(request.headers.get("authorization"), "node")
        try:
            body = await read_json_body(request, settings.max_body_bytes)
            report = Report.model_validate_json(body)
        except ValidationError as exc:
            led.count_report("rejected")
            detail = _validation_detail(exc)
            more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
            first = f"{detail[0]['path']}: {detail[0]['reason']}{more}"
            log_refusal(led, request, 422, REFUSED[422], first)
            return JSONResponse({"detail": detail}, 422)
        except InputError:
            led.count_report("rejected")
            raise
        if report.node_id != principal.node_id or report.site_id != principal.site_id:
            exc2 = AuthError(
                403,
                "node_mismatch",
                f"token is for node {principal.node_id} at {principal.site_id}, "
                f"report is from {report.node_id} at {report.site_id}",
            )
            led.refuse(exc2)
            raise exc2
        outcome = await asyncio.wrap_future(led.submit(report))
        if outcome.status == "duplicate":
            return JSONResponse({"status": "duplicate"})
        return JSONResponse({"status": "accepted", "seq": outcome.seq})

    @app.get("/v1/headroom")
    def headroom(
        request: Request,
        scope: str | None = Query(None),
        as_of: str | None = Query(None),
        known_at: str | None = Query(None),
        ruleset: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        """The checks of `gpucap evaluate` over registry plus observed inventory, by scope, as
        the record stands now or as the log held it at `known_at`, with provenance; under the
        registry's rule packs, or the `ruleset`s named (repeatable)."""
        led = get()
        principal = operator(request)
        body = headroom_body(led, principal, scope, as_of, known_at, ruleset or ())
        return Response(body, media_type="application/json")

    @app.post("/v1/whatif")
    async def whatif(request: Request) -> dict[str, Any]:
        """Evaluate hypothetical additions/removals; writes nothing."""
        led = get()
        principal = operator(request)
        body = await read_json_body(request, settings.max_body_bytes)
        try:
            req = WhatIf.model_validate_json(body)
        except ValidationError as exc:
            raise RejectedError(loc_path(exc.errors()[0]["loc"]), exc.errors()[0]["msg"]) from None
        req.check_consistent()
        return await run_in_threadpool(_whatif, led, principal, req)

    @app.get("/v1/inventory")
    def inventory(
        request: Request,
        site: str | None = Query(None),
        as_of: str | None = Query(None),
        known_at: str | None = Query(None),
    ) -> dict[str, Any]:
        """Declared and observed inventory per site (one site: its lines and devices)."""
        led = get()
        principal = operator(request)
        day = _parse_day(as_of, "as_of", led.today())
        return led.inventory(principal, site, day, parse_known_at(known_at))

    @app.get("/v1/nodes")
    def nodes(request: Request, site: str | None = Query(None)) -> dict[str, Any]:
        """Each visible node's last accepted seq and contact times (heartbeats are not logged)."""
        return get().nodes(operator(request), site)

    @app.get("/v1/reconciliation")
    def reconciliation(request: Request) -> dict[str, Any]:
        return get().reconciliation_for(operator(request))

    @app.get("/v1/licences")
    def licences(request: Request, licence: str | None = Query(None)) -> dict[str, Any]:
        """Each visible licence's limit, use, headroom, covered sites and shipped serials."""
        from gpucap.ledger.licences import licences_for

        led = get()
        return licences_for(led, operator(request), licence or None)

    app.include_router(log_routes(get, operator))
    app.include_router(audit_routes(get, operator))
    app.include_router(report_routes(get, operator))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        led = holder.get("ledger")
        if led is None:
            return JSONResponse({"status": "starting"}, 503)
        try:
            led.ready()
        except UnavailableError as exc:
            return JSONResponse({"status": "not ready", "detail": str(exc)}, 503)
        return JSONResponse({"status": "ready"})

    if settings.metrics_port is None:  # else /metrics is on its own listener (listeners.py)

        @app.get("/metrics")
        def metrics(request: Request) -> Response:
            led = get()
            try:
                check_metrics_token(settings, request.headers.get("authorization"))
            except AuthError as exc:
                led.refuse(exc)
                raise
            return metrics_response(led)

    return app


def headroom_body(
    led: Ledger,
    principal: Principal,
    scope: str | None,
    as_of: str | None,
    known_at: str | None = None,
    rulesets: Sequence[str] = (),
) -> bytes:
    """The `/v1/headroom` answer's JSON for one caller (the route's whole logic, also
    benchmarked): the document's bytes, cached per (view, token entity, scope), with the
    provenance block (made per request: it names the newest checkpoint) joined on."""
    view, requested = _headroom(led, principal, scope, as_of, known_at, rulesets)
    body = view.document.body(principal.entity, requested)
    provenance = json.dumps(led.provenance(view)).encode()
    # One copy of the (megabytes of) cached body: the view drops its closing brace uncopied.
    return b"".join((memoryview(body)[:-1], b', "provenance": ', provenance, b"}"))


def headroom_answer(
    led: Ledger,
    principal: Principal,
    scope: str | None,
    as_of: str | None,
    known_at: str | None = None,
    rulesets: Sequence[str] = (),
) -> dict[str, Any]:
    """The `/v1/headroom` document for one caller, as data (`headroom_body` is its JSON)."""
    view, requested = _headroom(led, principal, scope, as_of, known_at, rulesets)
    return {**view.document.answer(principal.entity, requested), "provenance": led.provenance(view)}


def _headroom(
    led: Ledger,
    principal: Principal,
    scope: str | None,
    as_of: str | None,
    known_at: str | None,
    rulesets: Sequence[str] = (),
) -> tuple[View, tuple[str, str] | None]:
    """The view a headroom request reads and its parsed scope (refused, and counted, when the
    principal may not see it)."""
    day = _parse_day(as_of, "as_of", led.today())
    packs = led.rulesets(rulesets)
    view = led.view_known(day, parse_known_at(known_at), packs)
    requested = None
    if scope:
        try:
            requested = parse_request_scope(scope, view.index, principal.entity)
        except AuthError as exc:
            led.refuse(exc)
            raise
        _visible(led, requested, principal, view.index)
    return view, requested


def _visible(
    led: Ledger, requested: tuple[str, str], principal: Principal, index: FleetIndex
) -> None:
    try:
        require_visible(requested, principal.entity, index)
    except AuthError as exc:
        led.refuse(exc)
        raise


def _whatif(led: Ledger, principal: Principal, req: WhatIf) -> dict[str, Any]:
    day = req.as_of or led.today()
    view = led.view_known(day, parse_known_at(req.known_at))
    fleet = view.fleet
    for item in (*req.add, *req.remove):
        if item.site in view.index.sites:
            _visible(led, ("site", item.site), principal, view.index)
    changed = whatif_fleet(fleet, req, day, led.catalogue)
    afters = [evaluate(changed, pack, day) for pack in view.packs]
    answers = []
    for ev, after, index in zip(view.evaluations, afters, view.indexes, strict=True):

        def visible(check: Any, index: FleetIndex = index) -> bool:
            return can_see(check.scope, principal.entity, index)

        def to_dict(check: Any, ev: Evaluation = ev) -> dict[str, Any]:
            return check_to_dict(check, ev.h100e_tpp, ev.ruleset.id)

        answers.append((after, whatif_answer(ev, after, visible, to_dict)))
    head = document_head(afters)
    return {
        "ruleset": head["ruleset"],
        "rulesets": head["rulesets"],
        "as_of": day.isoformat(),
        **_whatif_joined(answers),
        "provenance": led.provenance(view),
    }


def _whatif_joined(answers: Sequence[tuple[Evaluation, dict[str, Any]]]) -> dict[str, Any]:
    """The what-if answers of each pack as one: allowed when every pack allows it; `binding`,
    naming its pack, the least headroom (exact) among the blocking packs' bindings, else among
    all packs'; `before` and `after` in document order (breaches first, then by pack)."""
    allowed = all(a["allowed"] for _, a in answers)
    bindings = []
    for k, (after, a) in enumerate(answers):
        if a["binding"] is None or (a["allowed"] and not allowed):
            continue
        rule, scope = a["binding"]["rule"], a["binding"]["scope"]
        exact = next(c.headroom_tpp for c in after.checks if (c.rule, c.scope) == (rule, scope))
        bindings.append((exact, k, {"ruleset": after.ruleset.id, **a["binding"]}))
    binding = min(bindings, key=lambda b: (b[0], b[1]))[2] if bindings else None

    def in_order(key: str) -> list[dict[str, Any]]:
        checks = [c for _, a in answers for c in a[key]]
        return sorted(checks, key=lambda c: c["status"] != "breach")  # stable: pack order kept

    return {
        "allowed": allowed,
        "binding": binding,
        "before": in_order("before"),
        "after": in_order("after"),
    }


def metrics_response(led: Ledger) -> Response:
    """The Prometheus text of the latest snapshot: the one place the exporter is wired in
    (exporters/ledger.py builds the families)."""
    from gpucap.exporters.ledger import metrics_response as exposition

    body, content_type = exposition(led.snapshot)
    return Response(body, media_type=content_type)


class SnapshotRefresher:
    """One step of the metrics refresh loop: a failed refresh keeps the last snapshot and is
    logged once per distinct error (every SNAPSHOT_INTERVAL_S would flood the log)."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.last_error: str | None = None

    def step(self) -> None:
        try:
            self.led.refresh_snapshot()
        except GpucapError as exc:
            self._failed(f"{exc}", None)
        except Exception as exc:  # a bug must not stop the loop; logged with its traceback
            self._failed(f"{type(exc).__name__}: {exc}", exc)
        else:
            if self.last_error is not None:
                log.info("metrics snapshot refreshed again")
                self.last_error = None

    def _failed(self, text: str, exc: BaseException | None) -> None:
        if text == self.last_error:
            return
        self.last_error = text
        log.error("metrics snapshot not refreshed (serving the last one): %s", text, exc_info=exc)


def _refresh_loop(led: Ledger, stop: threading.Event) -> None:
    """Keep the metrics snapshot current (writes from other processes, stale nodes, the date)."""
    refresher = SnapshotRefresher(led)
    while not stop.is_set():
        refresher.step()
        stop.wait(SNAPSHOT_INTERVAL_S)
