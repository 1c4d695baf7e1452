"""`/openapi.json` describes the API the ledger really serves, and `/docs` needs no network.

The document is checked as a document (valid OpenAPI 3.1, valid JSON Schemas, every route
described with its security), against the report schema file, and against live answers of a
real `gpucap ledger serve`: a success and each error kind of each route, validated by
schemathesis' response checks (status, content type, headers, body).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks
from swagger_ui_bundle import swagger_ui_path

from gpucap.ledger import openapi, tokens
from gpucap.ledger.app import create_app
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.conftest import unavailable
from tests.ledger.support import REGISTRY, free_port, ledger_server, record_registry, report

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "report-v1.schema.json"
CHECKS = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
_JSON = {"Content-Type": "application/json"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
READER_ROUTES = {
    "/v1/headroom",
    "/v1/whatif",
    "/v1/inventory",
    "/v1/nodes",
    "/v1/reconciliation",
    "/v1/report",
    "/v1/explain",
    "/v1/events",
    "/v1/evidence",
    "/v1/log/checkpoint",
    "/v1/log/key",
    "/v1/log/entries",
    "/v1/log/proof/inclusion",
    "/v1/log/proof/consistency",
}


def _doc(**settings: Any) -> dict[str, Any]:
    return create_app(Settings(**settings)).openapi()


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, p): op for p, methods in doc["paths"].items() for m, op in methods.items()}


# -- the document --------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1() -> None:
    try:
        from openapi_spec_validator import validate
    except ImportError:
        unavailable("openapi-spec-validator is not installed")
    doc = _doc(metrics_token="m")
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def _schemas(value: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in a document: components' and those under `schema` keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "schema" and isinstance(item, dict):
                yield item
            yield from _schemas(item)
    elif isinstance(value, list):
        for item in value:
            yield from _schemas(item)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_every_schema_is_valid_json_schema_and_every_reference_resolves() -> None:
    doc = _doc()
    components = doc["components"]["schemas"]
    for schema in [*components.values(), *_schemas(doc["paths"])]:
        Draft202012Validator.check_schema(schema)
    refs = set(_refs(doc))
    assert refs, "the document uses no components at all"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in components, f"{ref} does not resolve"


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, included routers' too (FastAPI keeps an included router as one entry
    whose `original_router` holds its routes, paths prefixed; no extra prefix is used here)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def test_every_route_of_the_app_is_described_with_its_statuses() -> None:
    app = create_app(Settings())
    served = {
        (method.lower(), route.path)
        for route in _api_routes(app.routes)
        if route.include_in_schema
        for method in route.methods
    }
    assert len(served) == 19  # with GET /v1/licences
    ops = _operations(app.openapi())
    assert set(ops) == served
    for (method, path), op in ops.items():
        statuses = set(op["responses"])
        assert "200" in statuses, f"{method} {path}"
        if op["security"]:
            assert {"401", "403", "503"} <= statuses, f"{method} {path}: {statuses}"
    assert set(ops["post", "/v1/reports"]["responses"]) == {
        "200",
        "401",
        "403",
        "413",
        "415",
        "422",
        "503",
    }
    assert "413" in ops["post", "/v1/whatif"]["responses"]
    assert "422" not in ops["get", "/v1/reconciliation"]["responses"]  # it takes no input
    body = ops["post", "/v1/reports"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Report"}


def test_a_route_the_table_does_not_describe_is_refused() -> None:
    app = create_app(Settings())

    @app.get("/v1/undescribed")
    def undescribed() -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match=r"GET /v1/undescribed is not described"):
        app.openapi()


def test_a_query_parameter_the_table_does_not_describe_is_refused() -> None:
    app = create_app(Settings())
    healthz = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/healthz")
    app.router.routes.remove(healthz)

    @app.get("/healthz")
    def healthz_with(verbose: str | None = None) -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match=r"GET /healthz: parameters \['verbose'\] missing"):
        app.openapi()


def test_each_route_names_the_tokens_it_accepts() -> None:
    ops = _operations(_doc())
    assert ops["post", "/v1/reports"]["security"] == [{"nodeToken": []}]
    for path in READER_ROUTES:
        method = "post" if path == "/v1/whatif" else "get"
        assert ops[method, path]["security"] == [{"operatorToken": []}, {"auditorToken": []}]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert ops["get", path]["security"] == [], path
    schemes = _doc()["components"]["securitySchemes"]
    assert {s["scheme"] for s in schemes.values()} == {"bearer"}
    # /metrics asks for the metrics token only where one is set, and is absent from the API's
    # description when it is served on its own listener.
    with_token = _operations(_doc(metrics_token="m"))["get", "/metrics"]
    assert with_token["security"] == [{"metricsToken": []}]
    assert set(with_token["responses"]) == {"200", "401"}
    assert ("get", "/metrics") not in _operations(_doc(metrics_port=9464))
    metrics = with_token["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def _flat(schema: dict[str, Any]) -> dict[str, Any]:
    """One property's constraints, with pydantic's `anyOf [X, null]` as a type list."""
    if "anyOf" in schema:
        first, null = schema["anyOf"]
        assert null == {"type": "null"}
        return {**_flat(first), "type": [first["type"], "null"]}
    keys = ("type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum")
    keys += ("maxItems",)
    typed = "const" not in schema and "enum" not in schema  # else the values say the type
    return {k: schema[k] for k in keys if k in schema and (typed or k != "type")}


def test_the_report_body_says_what_the_schema_file_says() -> None:
    file = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    components = _doc()["components"]["schemas"]
    pairs = [
        (file, components["Report"]),
        (file["$defs"]["device"], components["ReportedDevice"]),
    ]
    for theirs, ours in pairs:
        assert ours["required"] == theirs["required"]
        assert ours["additionalProperties"] is theirs["additionalProperties"] is False
        for name, prop in theirs["properties"].items():
            want = {k: v for k, v in prop.items() if k not in ("description", "items")}
            assert _flat(ours["properties"][name]) == want, name


# -- /docs ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_docs_load_every_asset_from_the_ledger_itself(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    with ledger_server(f"sqlite:///{tmp_path / 'l.db'}", registry) as url:
        page = httpx.get(f"{url}/docs", timeout=10)
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert not re.search(r"(?i)\b(https?:)?//[a-z0-9]", page.text), "an external address"
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) == 3
        for asset in assets:
            assert asset.startswith(f"{openapi.DOCS_STATIC}/"), asset
            got = httpx.get(f"{url}{asset}", timeout=10)
            assert got.status_code == 200, asset
            packaged = Path(swagger_ui_path) / asset.rsplit("/", 1)[1]
            assert got.content == packaged.read_bytes(), asset
        assert "validatorUrl" in page.text  # the online validator badge is off
        assert httpx.get(f"{url}/redoc", timeout=10).status_code == 404
        assert httpx.get(f"{url}/docs/static/no-such-file.js", timeout=10).status_code == 404


# -- live answers --------------------------------------------------------------------------------
@dataclass
class Live:
    url: str
    tokens: dict[str, str]
    schema: Any

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return httpx.request(
            method,
            f"{self.url}{path}",
            params=params,
            json=json_body,
            content=content,
            headers=sent,
            timeout=60,
        )

    def conforms(self, response: httpx.Response) -> None:
        """AssertionError (schemathesis' report) unless `response` is as documented."""
        request = response.request
        operation = self.schema[request.url.path][request.method]
        case = operation.Case(media_type="application/json" if request.content else None)
        case.validate_response(response, checks=CHECKS)


def _issue(db_url: str) -> dict[str, str]:
    store = Store.open(Settings(db_url=db_url))
    now = utc_now()
    try:
        made = {
            "node": tokens.issue(store, "node", now, None, node_id="n1", site_id="acme-ae-1"),
            "operator": tokens.issue(store, "operator", now, None, operator="root"),
            "scoped": tokens.issue(store, "operator", now, None, operator="ops", entity="acme"),
            "auditor": tokens.issue(store, "auditor", now, None, auditor="aud"),
        }
    finally:
        store.close()
    return {name: token for name, (_id, token) in made.items()}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openapi")
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    db_url = f"sqlite:///{root / 'ledger.db'}"
    record_registry(db_url, registry)
    issued = _issue(db_url)
    issued["metrics"] = secrets.token_urlsafe(16)
    env = {"GPUCAP_METRICS_TOKEN": issued["metrics"], "GPUCAP_MAX_BODY_BYTES": "65536"}
    with ledger_server(db_url, registry, env) as url:
        yield Live(url, issued, schemathesis.openapi.from_url(f"{url}/openapi.json"))


# One request per route that the ledger answers 200, made after a report is stored.
SUCCESSES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/healthz", "", {}),
    ("GET", "/readyz", "", {}),
    ("GET", "/metrics", "metrics", {}),
    ("GET", "/v1/headroom", "scoped", {"params": {"scope": "entity:acme"}}),
    (
        "POST",
        "/v1/whatif",
        "operator",
        {"json_body": {"add": [{"site": "acme-ae-1", "model": "h100-sxm5-80gb", "count": 1}]}},
    ),
    ("GET", "/v1/inventory", "operator", {}),
    ("GET", "/v1/inventory", "scoped", {"params": {"site": "acme-ae-1"}}),
    ("GET", "/v1/nodes", "auditor", {}),
    ("GET", "/v1/reconciliation", "operator", {}),
    ("GET", "/v1/report", "operator", {"params": {"from": "2026-01-01", "to": "2026-01-03"}}),
    (
        "GET",
        "/v1/explain",
        "operator",
        {"params": {"rule": "uveu_tier1_share", "scope": "entity:acme"}},
    ),
    ("GET", "/v1/events", "auditor", {"params": {"limit": "2"}}),
    ("GET", "/v1/evidence", "auditor", {}),
    ("GET", "/v1/log/checkpoint", "scoped", {}),
    ("GET", "/v1/log/key", "operator", {}),
    ("GET", "/v1/log/entries", "auditor", {"params": {"start": "0", "end": "2"}}),
    ("GET", "/v1/log/proof/inclusion", "operator", {"params": {"index": "0", "size": "1"}}),
    ("GET", "/v1/log/proof/consistency", "operator", {"params": {"from": "1", "to": "1"}}),
]


def _stored(live: Live) -> None:
    """One accepted report, and the log signed past it (proofs and entries need leaves)."""
    posted = live.call("POST", "/v1/reports", "node", json_body=report(seq=1, n=2))
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 30
    while True:
        size = live.call("GET", "/v1/events", "auditor").json()["log_size"]
        if size >= 2:
            return
        assert time.monotonic() < deadline, "the log was not signed in 30 s"
        time.sleep(0.2)


@pytest.mark.slow
def test_every_success_answer_is_as_documented(live: Live) -> None:
    _stored(live)
    for method, path, token, request in SUCCESSES:
        response = live.call(method, path, token or None, **request)
        assert response.status_code == 200, f"{method} {path}: {response.text[:300]}"
        live.conforms(response)
    duplicate = live.call("POST", "/v1/reports", "node", json_body=report(seq=1, n=2))
    assert duplicate.json() == {"status": "duplicate"}
    live.conforms(duplicate)


@pytest.mark.slow
def test_every_error_kind_is_answered_with_its_documented_body(live: Live) -> None:
    big = b'{"pad": "' + b"x" * 70000 + b'"}'
    cases: list[tuple[int, httpx.Response]] = [
        (401, live.call("GET", "/v1/headroom")),
        (401, live.call("GET", "/v1/log/key", "gpc1.forged.token")),
        (401, live.call("GET", "/metrics", "not-the-metrics-token")),
        (401, live.call("POST", "/v1/reports", json_body=report(seq=2))),
        (403, live.call("GET", "/v1/headroom", "node")),
        (403, live.call("POST", "/v1/reports", "operator", json_body=report(seq=2))),
        (403, live.call("POST", "/v1/reports", "node", json_body=report(node="n2", seq=2))),
        (403, live.call("GET", "/v1/headroom", "scoped", params={"scope": "entity:nimbus"})),
        (403, live.call("GET", "/v1/log/entries", "scoped", params={"start": "0", "end": "1"})),
        (403, live.call("GET", "/v1/evidence", "scoped")),
        (413, live.call("POST", "/v1/reports", "node", content=big, headers=_JSON)),
        (413, live.call("POST", "/v1/whatif", "operator", content=big, headers=_JSON)),
        (415, live.call("POST", "/v1/reports", "node", content=b"{}")),
        (415, live.call("POST", "/v1/whatif", "operator", content=b"a=1", headers=_FORM)),
        (422, live.call("POST", "/v1/reports", "node", json_body={**report(seq=2), "seq": 0})),
        (422, live.call("POST", "/v1/reports", "node", content=b'{"a": 1, "a": 2}', headers=_JSON)),
        (422, live.call("POST", "/v1/whatif", "operator", json_body={"add": [{"site": "x"}]})),
        (422, live.call("GET", "/v1/headroom", "operator", params={"as_of": "2026-02-30"})),
        (422, live.call("GET", "/v1/explain", "operator", params={"scope": "entity:acme"})),
        (422, live.call("GET", "/v1/log/entries", "auditor", params={"start": "x", "end": "1"})),
        (422, live.call("GET", "/v1/report", "operator", params={"from": "2026-01-02"})),
        (422, live.call("GET", "/v1/events", "auditor", params={"limit": "5000"})),
    ]
    for status, response in cases:
        request = response.request
        where = f"{request.method} {request.url}"
        assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
        live.conforms(response)
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer", where


@pytest.mark.slow
def test_a_missing_required_parameter_is_the_ledgers_422(live: Live) -> None:
    """FastAPI's own check of a required query parameter used to answer in FastAPI's shape
    (`loc`, `msg`, `type`), which the description does not allow."""
    response = live.call("GET", "/v1/explain", "operator", params={"rule": "uveu_tier1_share"})
    assert response.status_code == 422
    assert response.json() == {"detail": [{"path": "scope", "reason": "Field required"}]}
    live.conforms(response)


@pytest.mark.slow
def test_the_checks_refuse_an_answer_off_the_description(live: Live) -> None:
    """The validation above can fail: FastAPI's default 422 body, an undocumented status and
    a refusal without its challenge header are each reported."""
    request = httpx.Request("GET", f"{live.url}/v1/explain")
    wrong = [
        httpx.Response(422, json={"detail": [{"loc": ["query"], "msg": "x"}]}, request=request),
        httpx.Response(404, json={"detail": "Not Found"}, request=request),
        httpx.Response(401, json={"detail": "x", "reason": "no_token"}, request=request),
        httpx.Response(200, text="ok", request=request),
    ]
    for response in wrong:
        response.elapsed = timedelta(0)  # as if received
        with pytest.raises(FailureGroup):
            live.conforms(response)


# -- 503 -----------------------------------------------------------------------------------------
_SERVE = [sys.executable, "-m", "gpucap", "ledger", "serve", "--db"]


@pytest.fixture
def unready(tmp_path: Path) -> Iterator[str]:
    """`gpucap ledger serve` on a database that holds no registry: it answers, not ready."""
    port = free_port()
    proc = subprocess.Popen(
        [*_SERVE, f"sqlite:///{tmp_path / 'empty.db'}", "--port", str(port)],
        env={**os.environ, "GPUCAP_REVOCATION_TTL_S": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"ledger exited ({proc.returncode})"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ledger did not answer in 60 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_unavailable_answers_are_as_documented(unready: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'empty.db'}"
    store = Store.open(Settings(db_url=db_url))
    try:
        _, operator = tokens.issue(store, "operator", utc_now(), None, operator="root")
    finally:
        store.close()
    live = Live(unready, {}, schemathesis.openapi.from_url(f"{unready}/openapi.json"))
    for path in ("/readyz", "/v1/headroom", "/v1/nodes"):
        response = live.call("GET", path, operator)
        assert response.status_code == 503, f"{path}: {response.text}"
        assert "registry" in response.json()["detail"]
        live.conforms(response)
