"""The ledger's OpenAPI document, as the routes really behave, and the offline `/docs` page.

Most routes read their body or query themselves (to bound sizes, refuse duplicate keys and name
the field in a 422), so FastAPI cannot see what they take or answer. `OPERATIONS` says it for
every route: the token kinds it accepts, its query parameters, its request body, its answer and
each error status it can return with the error's real body. `document` merges the table into
FastAPI's generated document and refuses a route the table does not describe, so a new route
cannot ship undescribed. Swagger UI's assets come from the installed `swagger_ui_bundle`
package, so `/docs` needs no network. It is past 400 lines because it is the description as
data, an entry per route and a schema per answer, read together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse

from gpucap.ledger import log
from gpucap.ledger.models import Report, WhatIf

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gpucap.ledger.settings import Settings

DOCS_STATIC = "/docs/static"
_REF = "#/components/schemas/{model}"

# The token kinds, one security scheme each (all HTTP bearer: `Authorization: Bearer TOKEN`).
NODE, OPERATOR, AUDITOR, METRICS = "nodeToken", "operatorToken", "auditorToken", "metricsToken"
READERS = (OPERATOR, AUDITOR)
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    NODE: {
        "type": "http",
        "scheme": "bearer",
        "description": "A node token (`gpucap ledger token --node N --site S`): posts that "
        "node's reports.",
    },
    OPERATOR: {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator token (`gpucap ledger token --operator NAME`); one issued "
        "with `--entity E` reads only E's scopes (403 `scope_forbidden` otherwise).",
    },
    AUDITOR: {
        "type": "http",
        "scheme": "bearer",
        "description": "An auditor token (`gpucap ledger token --auditor NAME`): reads "
        "everything, writes nothing.",
    },
    METRICS: {
        "type": "http",
        "scheme": "bearer",
        "description": "`GPUCAP_METRICS_TOKEN`, required by `/metrics` when it is set.",
    },
}

_TEXT = {"type": "string"}
_OPEN_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_ID = r"^([A-Za-z0-9._:-]{1,128})?$"  # `/v1/events` reads an empty filter as none given
_DECIMAL = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}


def _or_empty(low: int, high: int) -> dict[str, Any]:
    """A whole number from `low` to `high`, or empty (the default)."""
    return {"anyOf": [{"type": "integer", "minimum": low, "maximum": high}, {"const": ""}]}


def _schema(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _obj(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    """An object with these properties, of which `required` are always present; open to
    more (the answers are documents that grow fields)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": True,
    }


_LIST = {"type": "array", "items": _OPEN_OBJECT}
_INT = {"type": "integer"}
_NUMBER = {"type": "number"}
_NULLABLE_TEXT = {"type": ["string", "null"]}

# Error bodies: the one shape per kind that app.py's exception handlers write.
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "InputErrors": {
        "description": "Refused input: each problem names the field path and the reason.",
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["path", "reason"],
                    "properties": {"path": _TEXT, "reason": _TEXT},
                },
            }
        },
    },
    "Refusal": {
        "description": "A refused credential: `reason` is the label counted in "
        "`auth_refusals_total` (no_token, malformed_token, bad_signature, expired, revoked, "
        "metrics_token: 401; wrong_kind, node_mismatch, scope_forbidden, out_of_scope: 403).",
        "type": "object",
        "required": ["detail", "reason"],
        "properties": {"detail": _TEXT, "reason": _TEXT},
    },
    "Unavailable": {
        "description": "The database cannot be reached or holds no registry yet.",
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": _TEXT},
    },
}

_BEARER_CHALLENGE = {
    "WWW-Authenticate": {
        "description": "`Bearer`",
        "required": True,
        "schema": {"type": "string", "const": "Bearer"},
    }
}
ERRORS: dict[int, dict[str, Any]] = {
    401: {
        "description": "No token, or one that is malformed, forged, expired or revoked.",
        "headers": _BEARER_CHALLENGE,
        "content": {"application/json": {"schema": _schema("Refusal")}},
    },
    403: {
        "description": "A valid token that may not do this (wrong kind, another node, "
        "another entity's scope).",
        "content": {"application/json": {"schema": _schema("Refusal")}},
    },
    413: {
        "description": "The body is larger than `GPUCAP_MAX_BODY_BYTES`.",
        "content": {"application/json": {"schema": _schema("InputErrors")}},
    },
    415: {
        "description": "The body is not `application/json`.",
        "content": {"application/json": {"schema": _schema("InputErrors")}},
    },
    422: {
        "description": "Invalid input, naming the field.",
        "content": {"application/json": {"schema": _schema("InputErrors")}},
    },
    503: {
        "description": "The database is unreachable or holds no registry.",
        "content": {"application/json": {"schema": _schema("Unavailable")}},
    },
}

_PROVENANCE = _obj(
    ("log_size", "root_hash", "checkpoint"),
    log_size=_INT,
    root_hash=_TEXT,
    checkpoint=_TEXT,
    known_at=_NULLABLE_TEXT,
)
_RULESET = _obj(("id", "version", "status"), id=_TEXT, version=_TEXT, status=_TEXT)
_CHECK = _obj(
    ("rule", "kind", "scope", "status"),
    ruleset=_TEXT,  # the id of the pack the check belongs to (every check of a headroom answer)
    rule=_TEXT,
    kind=_TEXT,
    scope=_TEXT,
    status=_TEXT,
)
_CHECKS = {"type": "array", "items": _schema("Check")}

# Answers: the top-level fields every answer carries, the rest left open.
ANSWER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Provenance": _PROVENANCE,
    "Ruleset": _RULESET,
    "Check": _CHECK,
    "ReportOutcome": {
        "oneOf": [
            {
                "type": "object",
                "required": ["status", "seq"],
                "properties": {"status": {"const": "accepted"}, "seq": {"type": "integer"}},
                "additionalProperties": False,
            },
            {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"const": "duplicate"}},
                "additionalProperties": False,
            },
        ]
    },
    "Headroom": _obj(
        ("ruleset", "rulesets", "as_of", "verdict", "checks", "provenance"),
        ruleset=_schema("Ruleset"),  # the first of `rulesets`, the packs evaluated
        rulesets={"type": "array", "items": _schema("Ruleset")},
        as_of=_TEXT,
        verdict=_TEXT,
        h100e_tpp=_NUMBER,
        checks=_CHECKS,
        sites=_LIST,
        provenance=_schema("Provenance"),
    ),
    "WhatIfAnswer": _obj(
        ("ruleset", "rulesets", "as_of", "allowed", "binding", "before", "after", "provenance"),
        ruleset=_schema("Ruleset"),
        rulesets={"type": "array", "items": _schema("Ruleset")},
        as_of=_TEXT,
        allowed={"type": "boolean"},
        binding={"type": ["object", "null"]},
        before=_CHECKS,
        after=_CHECKS,
        provenance=_schema("Provenance"),
    ),
    "Inventory": _obj(
        ("as_of", "provenance"),
        as_of=_TEXT,
        sites=_LIST,
        site=_TEXT,
        devices_total=_INT,
        devices=_LIST,
        lines=_LIST,
        declared=_LIST,
        provenance=_schema("Provenance"),
    ),
    "Nodes": _obj(("nodes_total", "nodes"), nodes_total=_INT, nodes=_LIST),
    "Reconciliation": _obj(
        ("as_of", "counts", "findings"),
        as_of=_TEXT,
        counts={"type": "object", "additionalProperties": _INT},
        findings={"type": "object", "additionalProperties": _LIST},
    ),
    "PeriodReport": _obj(
        ("scope", "from", "to", "step", "ruleset", "warnings", "steps", "summary", "provenance"),
        scope=_NULLABLE_TEXT,
        **{"from": _TEXT, "to": _TEXT},
        step=_TEXT,
        ruleset=_OPEN_OBJECT,
        rulesets=_LIST,
        warnings={"type": "array", "items": _TEXT},
        steps=_LIST,
        summary=_OPEN_OBJECT,
        provenance=_schema("Provenance"),
    ),
    "Explanation": _obj(
        ("as_of", "rule", "scope", "status", "contributions", "provenance"),
        as_of=_TEXT,
        rule=_TEXT,
        scope=_TEXT,
        status=_TEXT,
        contributions=_LIST,
        provenance=_schema("Provenance"),
    ),
    "Licences": _obj(
        ("as_of", "ruleset", "licences", "provenance"),
        as_of=_TEXT,
        ruleset=_TEXT,
        licences=_LIST,
        provenance=_schema("Provenance"),
    ),
    "Events": _obj(
        ("entries", "next_cursor", "log_size"),
        entries=_LIST,
        next_cursor={"type": ["integer", "null"]},
        log_size=_INT,
    ),
    "LogEntries": _obj(
        ("entries",),
        entries={
            "type": "array",
            "items": _obj(
                ("index", "leaf", "leaf_hash", "entry"),
                index=_INT,
                leaf=_TEXT,
                leaf_hash=_TEXT,
                entry=_OPEN_OBJECT,
            ),
        },
    ),
    "InclusionProof": _obj(
        ("index", "size", "leaf_hash", "hashes"),
        index=_INT,
        size=_INT,
        leaf_hash=_TEXT,
        hashes={"type": "array", "items": _TEXT},
    ),
    "ConsistencyProof": _obj(
        ("from", "to", "hashes"),
        **{"from": _INT, "to": _INT},
        hashes={"type": "array", "items": _TEXT},
    ),
}


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


_AS_OF = _query("as_of", {"type": "string", "pattern": _DAY}, "YYYY-MM-DD (default today)")
# `explain` and `evidence` read an empty `as_of` as none given.
_AS_OF_OR_EMPTY = _query(
    "as_of", {"type": "string", "pattern": r"^([0-9]{4}-[0-9]{2}-[0-9]{2})?$"}, "YYYY-MM-DD"
)
_KNOWN_AT = _query(
    "known_at", _TEXT, "the record as the log held it: ISO 8601 instant with offset, or log_size=N"
)
_SCOPE = _query("scope", _TEXT, "country:XX, entity:E or site:S")


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers. `security` lists the schemes any one of which it
    accepts (empty: public); `errors` the statuses it can refuse with (bodies in ERRORS)."""

    summary: str
    answer: dict[str, Any]
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    body: str | None = None
    extra: dict[int, dict[str, Any]] = field(default_factory=dict)


def _json(name: str, description: str = "The answer.") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _schema(name)}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": _TEXT}}}


_READ = (401, 403, 422, 503)
_BODY = (401, 403, 413, 415, 422, 503)
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": _TEXT}}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/reports"): Operation(
        "Store one gpucap.report/v1",
        _json("ReportOutcome", "Accepted after commit, or a duplicate (nothing changed)."),
        _BODY,
        (NODE,),
        body="Report",
    ),
    ("get", "/v1/headroom"): Operation(
        "Headroom by scope",
        _json("Headroom"),
        _READ,
        READERS,
        (
            _SCOPE,
            _AS_OF,
            _KNOWN_AT,
            {
                **_query(
                    "ruleset",
                    {"type": "array", "items": _TEXT},
                    "a rule pack to evaluate instead of the registry's; repeat for several",
                ),
                "style": "form",
                "explode": True,
            },
        ),
    ),
    ("post", "/v1/whatif"): Operation(
        "Evaluate hypothetical additions and removals",
        _json("WhatIfAnswer"),
        _BODY,
        READERS,
        body="WhatIf",
    ),
    ("get", "/v1/inventory"): Operation(
        "Declared and observed inventory",
        _json("Inventory"),
        _READ,
        READERS,
        (_query("site", _TEXT, "one site: its devices and lines"), _AS_OF, _KNOWN_AT),
    ),
    ("get", "/v1/nodes"): Operation(
        "Each visible node's last seq and contact times",
        _json("Nodes"),
        _READ,
        READERS,
        (_query("site", _TEXT, "only this site's nodes"),),
    ),
    ("get", "/v1/reconciliation"): Operation(
        "Reconciliation findings", _json("Reconciliation"), (401, 403, 503), READERS
    ),
    ("get", "/v1/licences"): Operation(
        "Each visible licence's limit, use, covered sites and shipped serials",
        _json("Licences"),
        _READ,
        READERS,
        (_query("licence", _TEXT, "only this licence (another entity's: 403)"),),
    ),
    ("get", "/v1/report"): Operation(
        "The period report",
        _json("PeriodReport"),
        _READ,
        READERS,
        (
            _SCOPE,
            _query("from", {"type": "string", "pattern": _DAY}, "first date", required=True),
            _query("to", {"type": "string", "pattern": _DAY}, "last date", required=True),
            _query("step", {"enum": ["day", "week", "month"]}, "default day"),
            _KNOWN_AT,
        ),
    ),
    ("get", "/v1/explain"): Operation(
        "One check's figures, contribution by contribution",
        _json("Explanation"),
        _READ,
        READERS,
        (
            _query("rule", _TEXT, "the rule id", required=True),
            _query("scope", _TEXT, "the check's scope", required=True),
            _AS_OF_OR_EMPTY,
            _KNOWN_AT,
            _query("ruleset", _TEXT, "the rule's pack, when several evaluated packs have it"),
        ),
    ),
    ("get", "/v1/events"): Operation(
        "The signed log's entries, paginated",
        _json("Events"),
        _READ,
        READERS,
        (
            _query("since", _TEXT, "ISO 8601 instant with offset (inclusive)"),
            _query("until", _TEXT, "ISO 8601 instant with offset (inclusive)"),
            _query("kind", {"enum": [*log.KINDS, ""]}, "an entry kind; empty: every kind"),
            _query("node", {"type": "string", "pattern": _ID}, "a node id"),
            _query("site", {"type": "string", "pattern": _ID}, "a site id"),
            _query("entity", {"type": "string", "pattern": _ID}, "an entity id"),
            _query("cursor", _or_empty(0, 2**62), "a page's next_cursor; empty: the first page"),
            _query("limit", _or_empty(0, 1000), "entries per page; empty: 100"),
        ),
    ),
    ("get", "/v1/evidence"): Operation(
        "The evidence bundle (auditors and unscoped operators)",
        {
            "description": "A zip archive (`Content-Disposition: attachment`).",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        },
        _READ,
        READERS,
        (_SCOPE, _AS_OF_OR_EMPTY, _KNOWN_AT),
    ),
    ("get", "/v1/log/checkpoint"): Operation(
        "The newest signed checkpoint",
        _text("A C2SP tlog-checkpoint signed note."),
        (401, 403, 503),
        READERS,
    ),
    ("get", "/v1/log/key"): Operation(
        "The log's verifier key",
        _text("NAME+KEYID+BASE64 and a newline."),
        (401, 403, 503),
        READERS,
    ),
    ("get", "/v1/log/entries"): Operation(
        "Integrated log entries start <= index < end (not for entity-scoped tokens)",
        _json("LogEntries"),
        _READ,
        READERS,
        (
            _query("start", _DECIMAL, "first index", required=True),
            _query("end", _DECIMAL, "index after the last", required=True),
        ),
    ),
    ("get", "/v1/log/proof/inclusion"): Operation(
        "An inclusion proof",
        _json("InclusionProof"),
        _READ,
        READERS,
        (
            _query("index", _DECIMAL, "the leaf", required=True),
            _query("size", _DECIMAL, "the tree size", required=True),
        ),
    ),
    ("get", "/v1/log/proof/consistency"): Operation(
        "A consistency proof",
        _json("ConsistencyProof"),
        _READ,
        READERS,
        (
            _query("from", _DECIMAL, "the older tree size", required=True),
            _query("to", _DECIMAL, "the newer tree size", required=True),
        ),
    ),
    ("get", "/healthz"): Operation(
        "Liveness",
        {"description": "The process runs.", "content": {"application/json": {"schema": _STATUS}}},
    ),
    ("get", "/readyz"): Operation(
        "Readiness",
        {
            "description": "The database answers and a registry is loaded.",
            "content": {"application/json": {"schema": _STATUS}},
        },
        extra={
            503: {
                "description": "Starting, or not ready: `detail` says why.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": _TEXT, "detail": _TEXT},
                        }
                    }
                },
            }
        },
    ),
}


def metrics_operation(settings: Settings) -> Operation:
    """`/metrics` on the API's listener: guarded by the metrics token only when one is set."""
    answer = _text("Prometheus text exposition of the latest snapshot (fleet-wide labels).")
    if settings.metrics_token is None:
        return Operation("Prometheus metrics", answer)
    return Operation("Prometheus metrics", answer, (401,), (METRICS,))


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"200": op.answer}
    for status in op.errors:
        out[str(status)] = ERRORS[status]
    for status, response in op.extra.items():
        out[str(status)] = response
    return out


def _request_body(name: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _schema(name)}},
    }


def _model_schemas() -> dict[str, Any]:
    """The request models' JSON schemas, their nested models hoisted into components."""
    out: dict[str, Any] = {}
    for model in (Report, WhatIf):
        schema = model.model_json_schema(by_alias=True, ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def operations(settings: Settings) -> dict[tuple[str, str], Operation]:
    """Every operation the application serves with `settings`."""
    ops = dict(OPERATIONS)
    if settings.metrics_port is None:
        ops["get", "/metrics"] = metrics_operation(settings)
    return ops


def document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app`: FastAPI's paths, each operation replaced by what
    `operations` says of it (ValueError for a route it does not describe)."""
    from fastapi.openapi.utils import get_openapi

    generated = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    ops = operations(settings)
    paths: dict[str, Any] = {}
    for path, methods in generated["paths"].items():
        for method, made in methods.items():
            op = ops.get((method, path))
            if op is None:
                raise ValueError(f"{method.upper()} {path} is not described in ledger/openapi.py")
            declared = {p["name"] for p in made.get("parameters", [])}
            missing = declared - {p["name"] for p in op.parameters}
            if missing:
                raise ValueError(f"{method.upper()} {path}: parameters {sorted(missing)} missing")
            described: dict[str, Any] = {
                "operationId": made["operationId"],
                "summary": op.summary,
                "responses": _responses(op),
                "security": [{scheme: []} for scheme in op.security],
            }
            if made.get("description"):
                described["description"] = made["description"]
            if op.parameters:
                described["parameters"] = list(op.parameters)
            if op.body is not None:
                described["requestBody"] = _request_body(op.body)
            paths.setdefault(path, {})[method] = described
    return {
        "openapi": generated["openapi"],
        "info": generated["info"],
        "paths": paths,
        "components": {
            "schemas": {**_model_schemas(), **ERROR_SCHEMAS, **ANSWER_SCHEMAS},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def install(app: FastAPI, settings: Settings) -> None:
    """Serve `document` at `/openapi.json` (built once) and Swagger UI at `/docs` from the
    installed assets."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no stubs

    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(document(app, settings))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    app.mount(DOCS_STATIC, StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
            # Swagger UI would send the document to an online validator for its badge.
            swagger_ui_parameters={"validatorUrl": None},
        )
