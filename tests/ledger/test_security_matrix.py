"""The security matrix: every route of the ledger app against every kind of credential.

`EXPECTED` is the contract, written out: for each route, the status each credential gets. The
routes are read from the app itself, so a new route without a row fails the test before it can
ship unguarded. `drills/security.py` runs the same table against a real `gpucap ledger serve`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gpucap.ledger import tokens
from gpucap.ledger.app import create_app
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, ledger_server, record_registry, report

pytestmark = pytest.mark.slow

# The credentials, in the order of each row of EXPECTED. `unknown` is a well-formed token signed
# by another ledger's key; `revoked` and `expired` are unscoped operator tokens (the strongest
# kind a reader has), so a 401 for them is the revocation or the expiry and nothing else.
CREDENTIALS = (
    "none",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "node",
    "operator",
    "scoped",  # an operator token limited to the entity acme
    "auditor",
    "metrics",  # GPUCAP_METRICS_TOKEN
)

_PUBLIC = (200,) * len(CREDENTIALS)
#                     none malf unkn revk expd node oper scop audi metr
_READER = (401, 401, 401, 401, 401, 403, 200, 200, 200, 401)
_UNSCOPED_READER = (401, 401, 401, 401, 401, 403, 200, 403, 200, 401)

EXPECTED: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/v1/reports"): (401, 401, 401, 401, 401, 200, 403, 403, 403, 401),
    ("GET", "/v1/headroom"): _READER,
    ("POST", "/v1/whatif"): _READER,
    ("GET", "/v1/inventory"): _READER,
    ("GET", "/v1/nodes"): _READER,
    ("GET", "/v1/reconciliation"): _READER,
    ("GET", "/v1/licences"): _READER,
    ("GET", "/v1/report"): _READER,
    ("GET", "/v1/explain"): _READER,
    ("GET", "/v1/events"): _READER,
    ("GET", "/v1/evidence"): _UNSCOPED_READER,
    ("GET", "/v1/log/checkpoint"): _READER,
    ("GET", "/v1/log/key"): _READER,
    ("GET", "/v1/log/entries"): _UNSCOPED_READER,
    ("GET", "/v1/log/proof/inclusion"): _READER,
    ("GET", "/v1/log/proof/consistency"): _READER,
    ("GET", "/metrics"): (401, 401, 401, 401, 401, 401, 401, 401, 401, 200),
    ("GET", "/healthz"): _PUBLIC,
    ("GET", "/readyz"): _PUBLIC,
    # FastAPI's own pages: the API's description, public by design.
    ("GET", "/openapi.json"): _PUBLIC,
    ("GET", "/docs"): _PUBLIC,
    ("GET", "/docs/static/{path}"): _PUBLIC,  # Swagger UI's assets
}

# A request each route answers 200 to when the credential may make it: the parameters name
# what the scoped operator (acme) may see, so that its 200s and 403s are the route's rule.
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/reports"): {"json": report(node="n1", site="acme-ae-1", seq=1, n=2)},
    ("GET", "/v1/headroom"): {"params": {"scope": "entity:acme"}},
    ("POST", "/v1/whatif"): {
        "json": {"add": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 1}]}
    },
    ("GET", "/v1/inventory"): {"params": {"site": "acme-ae-1"}},
    ("GET", "/v1/report"): {
        "params": {"scope": "entity:acme", "from": "2026-01-01", "to": "2026-01-02"}
    },
    ("GET", "/v1/explain"): {"params": {"rule": "uveu_tier1_share", "scope": "entity:acme"}},
    ("GET", "/v1/events"): {"params": {"limit": "5"}},
    ("GET", "/v1/log/entries"): {"params": {"start": "0", "end": "1"}},
    ("GET", "/v1/log/proof/inclusion"): {"params": {"index": "0", "size": "1"}},
    ("GET", "/v1/log/proof/consistency"): {"params": {"from": "1", "to": "1"}},
}

# Where a route's path is a pattern, the path requested for it.
PATHS = {("GET", "/docs/static/{path}"): "/docs/static/swagger-ui.css"}

Send = Callable[[str, str, dict[str, str], dict[str, Any]], int]


@dataclass(frozen=True)
class Mismatch:
    method: str
    path: str
    credential: str
    expected: int
    got: int

    def __str__(self) -> str:
        return (
            f"{self.method} {self.path} with {self.credential}: "
            f"expected {self.expected}, got {self.got}"
        )


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, HEAD (a mirror of GET) left out: the routes walked
    (into included routers too), and the OpenAPI document's operations as a cross-check. An
    entry that is neither a route nor an include this can open is an error, not a skip."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:  # FastAPI >= 0.165 keeps an include as one entry
                walk(included.routes, prefix + route.include_context.prefix)
                continue
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if path is not None and methods is None and hasattr(route, "app"):  # a Mount
                if getattr(route, "routes", None):  # of a router: its routes
                    walk(list(route.routes), prefix + path)
                else:  # of an application (static files): whatever is under it
                    found.add(("GET", f"{prefix}{path}/{{path}}"))
                continue
            if path is None or methods is None:
                raise TypeError(f"cannot enumerate the app's route {route!r}")
            found.update((m, prefix + path) for m in methods if m != "HEAD")

    walk(list(app.routes), "")
    for path, operations in app.openapi()["paths"].items():
        found.update((method.upper(), path) for method in operations)
    return found


def issue_credentials(store: Store, now: datetime, metrics_token: str) -> dict[str, str]:
    """One credential of each kind; `expired` runs out one second after `now`."""
    made: dict[str, str] = {}
    _, made["node"] = tokens.issue(store, "node", now, None, node_id="n1", site_id="acme-ae-1")
    _, made["operator"] = tokens.issue(store, "operator", now, None, operator="root")
    _, made["scoped"] = tokens.issue(store, "operator", now, None, operator="ops", entity="acme")
    _, made["auditor"] = tokens.issue(store, "auditor", now, None, auditor="aud")
    revoked_id, made["revoked"] = tokens.issue(store, "operator", now, None, operator="gone")
    tokens.revoke(store, revoked_id, now)
    _, made["expired"] = tokens.issue(
        store, "operator", now, None, expires_at=now + timedelta(seconds=1), operator="late"
    )
    other = tokens.Principal(token_id=secrets.token_hex(8), kind="operator", operator="root")
    made["unknown"] = tokens.sign(other, secrets.token_bytes(32))
    made["malformed"] = "gpucap.not-a-token"
    made["metrics"] = metrics_token
    return made


def run_matrix(
    routes: set[tuple[str, str]], credentials: dict[str, str], send: Send
) -> list[str | Mismatch]:
    """Every route with every credential through `send(method, path, headers, request)`; the
    mismatches with EXPECTED, plus one for each route that has no row (or a row but no route)."""
    problems: list[str | Mismatch] = [
        f"{m} {p}: a route without a row in EXPECTED" for m, p in sorted(routes - EXPECTED.keys())
    ]
    problems += [f"{m} {p}: in EXPECTED, not a route" for m, p in EXPECTED if (m, p) not in routes]
    for (method, path), row in EXPECTED.items():
        if (method, path) not in routes:
            continue
        for credential, expected in zip(CREDENTIALS, row, strict=True):
            token = credentials.get(credential)
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            target = PATHS.get((method, path), path)
            got = send(method, target, headers, REQUESTS.get((method, path), {}))
            if got != expected:
                problems.append(Mismatch(method, path, credential, expected, got))
    return problems


def expired_credentials(db_url: str, metrics_token: str) -> dict[str, str]:
    """`issue_credentials` on a recorded database, returned once `expired` has run out."""
    store = Store.open(Settings(db_url=db_url))
    try:
        now = utc_now()
        credentials = issue_credentials(store, now, metrics_token)
    finally:
        store.close()
    while utc_now() <= now + timedelta(seconds=1):
        time.sleep(0.05)
    return credentials


def http_send(url: str) -> Send:
    """`send` over HTTP to a real server at `url`."""

    def send(method: str, path: str, headers: dict[str, str], request: dict[str, Any]) -> int:
        return httpx.request(
            method, f"{url}{path}", headers=headers, timeout=30, **request
        ).status_code

    return send


def test_every_route_answers_every_credential_as_the_contract_says(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    metrics_token = secrets.token_urlsafe(24)
    record_registry(db_url, registry)
    credentials = expired_credentials(db_url, metrics_token)
    routes = app_routes(create_app(Settings(metrics_token=metrics_token)))
    with ledger_server(db_url, registry, {"GPUCAP_METRICS_TOKEN": metrics_token}) as url:
        problems = run_matrix(routes, credentials, http_send(url))
    assert [str(p) for p in problems] == []


def test_the_matrix_fails_on_a_route_without_a_row_and_on_a_wrong_status() -> None:
    """The check itself can fail: an unlisted route and a status off the table are reported."""
    routes = {*EXPECTED, ("DELETE", "/v1/nodes")}
    problems = run_matrix(routes, {}, lambda method, path, headers, request: 200)
    assert "DELETE /v1/nodes: a route without a row in EXPECTED" in problems
    assert Mismatch("POST", "/v1/reports", "none", 401, 200) in problems
    assert all(not isinstance(p, Mismatch) or p.expected != 200 for p in problems)
