"""The operators' HTTP client for `gpucap headroom`, `gpucap whatif` and `gpucap ledger nodes`.

A malformed base URL is an InputError (exit 2). HTTP status maps to our errors here: 422 ->
InputError (exit 2), 401/403/5xx, redirects (never followed: the token must not travel to another
address) and connection failures -> UnavailableError (exit 3). So is an answer that is not what
the command reads: not JSON (a proxy's HTML page), or JSON of another shape (`SHAPES`, checked
where the answer is parsed). `transport` lets a test hand in any httpx transport.

Every client command takes `--token-file` and `--ca-file` (`add_client_flags`), and `connect`
resolves them: the token from `--token-file`, else GPUCAP_TOKEN_FILE, else GPUCAP_TOKEN (both
variables set is exit 2: one of them would be ignored); the CA bundle from `--ca-file`, else
GPUCAP_CA_FILE, else the system's. A certificate that fails verification is exit 3, one line.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from gpucap.core.credfiles import client_context, read_secret
from gpucap.core.errors import InputError
from gpucap.ledger.errors import UnavailableError


def base_url(text: str, field: str = "--ledger") -> str:
    """A ledger base URL (`http://host:port`); InputError naming `field` for anything else."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise InputError(field, f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InputError(field, f"expected http://HOST:PORT or https://..., got {text!r}")
    return text.rstrip("/")


def ledger_url(flag: str | None, environ: Mapping[str, str]) -> str:
    """The ledger's base URL: `--ledger`, else GPUCAP_LEDGER; InputError naming the one given
    (or `--ledger` when neither is)."""
    if flag is not None:
        return base_url(flag, "--ledger")
    value = environ.get("GPUCAP_LEDGER")
    if not value:
        raise InputError("--ledger", "give --ledger URL or set GPUCAP_LEDGER")
    return base_url(value, "GPUCAP_LEDGER")


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """`--token-file` and `--ca-file`, on every command that talks to a ledger."""
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the bearer token (default: GPUCAP_TOKEN_FILE, else GPUCAP_TOKEN)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="PEM CA bundle an https:// ledger's certificate must chain to, instead of the "
        "system's (default: GPUCAP_CA_FILE)",
    )


def client_token(token_file: Path | None, environ: Mapping[str, str], purpose: str) -> str:
    """The bearer token: `--token-file`, else GPUCAP_TOKEN_FILE, else GPUCAP_TOKEN; `purpose`
    says which token the command needs, in the error when none is given."""
    if token_file is not None:
        return read_secret(token_file, "--token-file")
    named = environ.get("GPUCAP_TOKEN_FILE")
    if named:
        if environ.get("GPUCAP_TOKEN"):
            raise InputError("GPUCAP_TOKEN_FILE", "set GPUCAP_TOKEN or GPUCAP_TOKEN_FILE, not both")
        return read_secret(Path(named), "GPUCAP_TOKEN_FILE")
    token = environ.get("GPUCAP_TOKEN")
    if not token:
        raise InputError(
            "GPUCAP_TOKEN", f"set it, or GPUCAP_TOKEN_FILE or --token-file, to {purpose}"
        )
    return token


def trust(ca_file: Path | None, environ: Mapping[str, str]) -> ssl.SSLContext | bool:
    """What verifies an https:// ledger: `--ca-file`, else GPUCAP_CA_FILE, else True (httpx's
    default store, which honours SSL_CERT_FILE)."""
    if ca_file is not None:
        return client_context(ca_file, "--ca-file")
    named = environ.get("GPUCAP_CA_FILE")
    return client_context(Path(named), "GPUCAP_CA_FILE") if named else True


def connect(
    args: argparse.Namespace,
    url: str,
    environ: Mapping[str, str],
    purpose: str,
    timeout_s: float = 30.0,
) -> LedgerClient:
    """The client of a command that took `add_client_flags`; the token is checked before the
    CA bundle, and both before any connection."""
    token = client_token(args.token_file, environ, purpose)
    return LedgerClient(url, token, timeout_s=timeout_s, verify=trust(args.ca_file, environ))


def _failure(exc: httpx.HTTPError, base: str) -> str:
    """Why a request got no answer, on one line, with the likely fix for TLS mistakes."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the TLS certificate of {base} is not trusted ({cause.verify_message}): "
                "give --ca-file or GPUCAP_CA_FILE with the CA that signed it"
            )
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(exc).split()) or type(exc).__name__
    if base.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError):
        return f"cannot reach {base}: {text} (does the ledger serve https://?)"
    return f"cannot reach {base}: {text}"


# What each command reads of an answer. A dict names keys that must be present, each with a
# type (or a tuple of alternatives), a nested dict, `[item]` for a list of items, or None for
# any value. Only what the commands read is checked: a newer ledger may add fields.
Shape = Any
_NUMBER = (int, float)
_TEXT_OR_NULL = (str, type(None))
_PROVENANCE: Shape = {
    "known_at": None,
    "log_size": int,
    "root_hash": str,
    "registry_digest": _TEXT_OR_NULL,
    "rulesets": [{"id": None, "version": None, "status": None, "digest": str}],
    "catalogue_digest": str,
    "gpucap_version": None,
    "generated_at": None,
}
_RULESET: Shape = {"id": None, "version": None, "status": None, "warnings": [str]}
_CHECK: Shape = {
    "rule": str,
    "scope": str,
    "kind": str,
    "status": str,
    "used_tpp": _NUMBER,
    "headroom_tpp": _NUMBER,
    "headroom_h100e": _NUMBER,
}
_TABLE_CHECK: Shape = {
    **_CHECK,
    "used_h100e": _NUMBER,
    "source": {"confidence": None},
    "note": None,
}
SHAPES: dict[str, Shape] = {
    "/v1/headroom": {
        "as_of": str,
        "verdict": str,
        "ruleset": _RULESET,
        "checks": [_TABLE_CHECK],
        "provenance": _PROVENANCE,
    },
    "/v1/whatif": {
        "allowed": bool,
        "binding": (type(None), {"rule": None, "scope": None, "headroom_tpp": _NUMBER}),
        "ruleset": _RULESET,
        "after": [_TABLE_CHECK],
        "provenance": _PROVENANCE,
    },
    "/v1/report": {
        "scope": _TEXT_OR_NULL,
        "from": str,
        "to": str,
        "step": str,
        "ruleset": {"id": None, "version": None, "status": None, "in_force": None},
        "warnings": [str],
        "steps": [{"as_of": str, "checks": [_CHECK]}],
        "summary": {"steps": int, "breached_steps": int, "first_breach": _TEXT_OR_NULL},
        "provenance": _PROVENANCE,
    },
    "/v1/nodes": {"nodes": [dict]},
    "/v1/explain": {
        "rule": None,
        "scope": None,
        "as_of": None,
        "status": str,
        "used_tpp": _NUMBER,
        "figures": dict,
        "contributions": [dict],
        "provenance": _PROVENANCE,
    },
    "/v1/events": {"entries": [dict], "next_cursor": (int, type(None))},
}
_JSON_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _json_kind(value: Any) -> str:
    return next((n for t, n in _JSON_NAMES.items() if type(value) is t), type(value).__name__)


def mismatch(value: Any, shape: Shape, where: str = "") -> str | None:
    """The first place where `value` departs from `shape`, as a field path and a reason."""
    here = where or "the answer"
    if shape is None:
        return None
    if isinstance(shape, tuple):
        misses = [mismatch(value, alternative, where) for alternative in shape]
        if None in misses:
            return None
        if all(isinstance(alternative, type) for alternative in shape):
            wanted = " or ".join(_JSON_NAMES.get(t, t.__name__) for t in shape)
            return f"{here} is {_json_kind(value)}, not {wanted}"
        return misses[-1]
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{here} is {_json_kind(value)}, not an object"
        for key, inner in shape.items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                return f"{path} is missing"
            found = mismatch(value[key], inner, path)
            if found is not None:
                return found
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{here} is {_json_kind(value)}, not a list"
        for i, item in enumerate(value):
            found = mismatch(item, shape[0], f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if not isinstance(value, shape) or (shape is not bool and isinstance(value, bool)):
        return f"{here} is {_json_kind(value)}, not {_JSON_NAMES.get(shape, shape.__name__)}"
    return None


def _excerpt(response: httpx.Response) -> str:
    """A refusal's reason on one line: the JSON `detail`, else the start of the body."""
    if response.headers.get("content-type", "").startswith("text/html"):
        return "an HTML page, not a ledger answer"
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    return " ".join(str(body).split())[:200] or "no body"


def _refusal(response: httpx.Response) -> InputError | None:
    """The ledger's 422 as the InputError it names; None for a 422 of another shape."""
    try:
        detail = response.json().get("detail") or [{}]
        first = detail[0] if isinstance(detail, list) else {"reason": str(detail)}
        return InputError(str(first.get("path", "")), str(first.get("reason", "invalid")))
    except (ValueError, AttributeError, IndexError):
        return None


class LedgerClient:
    """A thin client of the ledger API with one bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url(url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
            verify=verify,
        )
        self._base = str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        self._http.close()

    def _answer(self, response: httpx.Response, path: str) -> Any:
        """The JSON of a 2xx answer; every other answer as InputError or UnavailableError."""
        status = response.status_code
        if 300 <= status < 400:
            target = response.headers.get("location", "nowhere")
            raise UnavailableError(
                path, f"HTTP {status} redirect to {target} (not followed: give the ledger's URL)"
            )
        refusal = _refusal(response) if status == 422 else None
        if refusal is not None:
            raise refusal
        if status >= 400 or status < 200:
            raise UnavailableError(path, f"HTTP {status}: {_excerpt(response)}")
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
            raise UnavailableError(
                path, f"the answer is not JSON ({kind}): is {self._base} a gpucap ledger?"
            ) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError("ledger", _failure(exc, self._base)) from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer of `path`, checked against what its command reads (`SHAPES`)."""
        answer = self._answer(self._send(method, path, **kwargs), path)
        problem = mismatch(answer, SHAPES[path])
        if problem is not None:
            raise UnavailableError(
                path, f"unexpected answer ({problem}): is {self._base} a gpucap ledger?"
            )
        return answer

    def fetch(self, path: str, params: dict[str, int] | None = None) -> Any:
        """GET `path`: its text for text/plain answers, else its JSON (the auditor checks it)."""
        response = self._send("GET", path, params=params)
        if 200 <= response.status_code < 300 and response.headers.get(
            "content-type", ""
        ).startswith("text/plain"):
            return response.text
        return self._answer(response, path)

    def headroom(
        self,
        scope: str | None = None,
        as_of: str | None = None,
        known_at: str | None = None,
        rulesets: Sequence[str] = (),
    ) -> dict[str, Any]:
        """GET /v1/headroom; `rulesets`: packs evaluated instead of the registry's."""
        given = {"scope": scope, "as_of": as_of, "known_at": known_at}
        params: dict[str, str | list[str]] = {k: v for k, v in given.items() if v}
        if rulesets:
            params["ruleset"] = list(rulesets)
        result: dict[str, Any] = self._call("GET", "/v1/headroom", params=params)
        return result

    def whatif(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/whatif", json=body)
        return result

    def report(
        self,
        start: str,
        end: str,
        step: str | None = None,
        scope: str | None = None,
        known_at: str | None = None,
    ) -> dict[str, Any]:
        """GET /v1/report: each step's visible checks from `start` to `end` (`gpucap report`)."""
        given = {"scope": scope, "from": start, "to": end, "step": step, "known_at": known_at}
        result: dict[str, Any] = self._call(
            "GET", "/v1/report", params={k: v for k, v in given.items() if v}
        )
        return result

    def nodes(self, site: str | None = None) -> dict[str, Any]:
        """GET /v1/nodes: each visible node's liveness, state and present devices."""
        params = {"site": site} if site else {}
        result: dict[str, Any] = self._call("GET", "/v1/nodes", params=params)
        return result

    def explain(
        self,
        rule: str,
        scope: str,
        as_of: str | None = None,
        known_at: str | None = None,
        ruleset: str | None = None,
    ) -> dict[str, Any]:
        """GET /v1/explain: one check's contributions (of `ruleset`'s check, when given)."""
        given = {
            "rule": rule,
            "scope": scope,
            "as_of": as_of,
            "known_at": known_at,
            "ruleset": ruleset,
        }
        result: dict[str, Any] = self._call(
            "GET", "/v1/explain", params={k: v for k, v in given.items() if v}
        )
        return result

    def events(self, params: dict[str, str]) -> dict[str, Any]:
        """GET /v1/events: one page of the log's history."""
        result: dict[str, Any] = self._call("GET", "/v1/events", params=params)
        return result
