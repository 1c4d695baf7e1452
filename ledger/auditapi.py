"""`/v1/explain`, `/v1/events` and `/v1/evidence`: what an auditor asks the ledger for.

Who may read: operators (an entity-scoped one within its entity, as for headroom) and auditors;
the evidence bundle only auditors and unscoped operators. Query parameters are parsed in the
modules that answer (`known.py`, `events.py`), so a bad one is the usual 422 naming it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gpucap.core.data import parse_day
from gpucap.ledger import bundle, events
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.known import parse_known_at
from gpucap.ledger.tokens import Principal

if TYPE_CHECKING:
    from gpucap.ledger.service import Ledger


def day(value: str | None, field: str = "as_of") -> Any:
    if value is None or value == "":
        return None
    try:
        return parse_day(value)
    except ValueError as exc:
        raise RejectedError(field, str(exc)) from None


def audit_routes(get: Callable[[], Ledger], reader: Callable[[Request], Principal]) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/explain")
    def explain(
        request: Request,
        rule: str = Query(...),
        scope: str = Query(...),
        as_of: str | None = Query(None),
        known_at: str | None = Query(None),
        ruleset: str | None = Query(None),
    ) -> dict[str, Any]:
        """One check's figures line by line: declared and observed contributions, devices,
        and the log entry that introduced each."""
        principal = reader(request)
        led = get()
        known = parse_known_at(known_at)
        return led.explain(principal, rule, scope, day(as_of), known, ruleset)

    @router.get("/events")
    def history(
        request: Request,
        since: str | None = Query(None, description="ISO 8601 instant (inclusive)"),
        until: str | None = Query(None, description="ISO 8601 instant (inclusive)"),
        kind: str | None = Query(None, description="registry, report, presence, ..."),
        node: str | None = Query(None),
        site: str | None = Query(None),
        entity: str | None = Query(None),
        cursor: str | None = Query(None, description="a leaf index: the last page's next_cursor"),
        limit: str | None = Query(None, description="entries per page, 1 to 1000 (100)"),
    ) -> dict[str, Any]:
        """The signed log's entries, oldest first, filtered and paginated with a cursor."""
        principal = reader(request)
        led = get()
        given = {
            "since": since,
            "until": until,
            "kind": kind,
            "node": node,
            "site": site,
            "entity": entity,
            "cursor": cursor,
            "limit": limit,
        }
        return led.events(principal, events.parse_query(given))

    @router.get("/evidence")
    async def evidence(
        request: Request,
        scope: str | None = Query(None),
        as_of: str | None = Query(None),
        known_at: str | None = Query(None),
    ) -> Response:
        """The evidence bundle (a zip) of what the caller sees; auditors and unscoped
        operators only."""
        led = get()
        principal = reader(request)
        if principal.entity is not None:
            exc = AuthError(
                403, "scope_forbidden", "evidence bundles are for auditors and unscoped operators"
            )
            led.refuse(exc)
            raise exc
        known = parse_known_at(known_at)
        tmp = Path(tempfile.mkdtemp(prefix="gpucap-evidence-"))
        path = tmp / "evidence.zip"
        subject = principal.subject()
        by = f"{principal.kind}:{subject.get('auditor') or subject.get('operator')}"
        try:
            manifest = await run_in_threadpool(
                bundle.export, led, path, principal, scope, day(as_of), known, by
            )
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
            tmp.rmdir()
        name = f"gpucap-evidence-{manifest['log_size']}-{manifest['as_of']}.zip"
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return router
