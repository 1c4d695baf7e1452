"""The operators' HTTP client for `gpucap headroom`, `gpucap whatif` and `gpucap ledger nodes`.

A malformed base URL is an InputError (exit 2). HTTP status maps to our errors here: 422 ->
InputError (exit 2), 401/403/5xx and connection failures -> UnavailableError (exit 3).
`transport` lets a test hand in any httpx transport.
"""

from __future__ import annotations

from typing import Any

import httpx

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


class LedgerClient:
    """A thin client of the ledger API with one bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url(url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code == 422:
            detail = response.json().get("detail") or [{}]
            first = detail[0] if isinstance(detail, list) else {"reason": str(detail)}
            raise InputError(str(first.get("path", "")), str(first.get("reason", "invalid")))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise UnavailableError("ledger", f"HTTP {response.status_code}: {detail}")
        return response.json()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError("ledger", f"cannot reach {self._http.base_url}: {exc}") from exc
        return self._answer(response)

    def fetch(self, path: str, params: dict[str, int] | None = None) -> Any:
        """GET `path`: its text for text/plain answers, else its JSON."""
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise UnavailableError("ledger", f"cannot reach {self._http.base_url}: {exc}") from exc
        if response.status_code < 400 and response.headers.get("content-type", "").startswith(
            "text/plain"
        ):
            return response.text
        try:
            return self._answer(response)
        except ValueError:  # a JSON answer that is not JSON
            raise UnavailableError("ledger", f"{path}: the answer is not JSON") from None

    def headroom(
        self, scope: str | None = None, as_of: str | None = None, known_at: str | None = None
    ) -> dict[str, Any]:
        given = {"scope": scope, "as_of": as_of, "known_at": known_at}
        params = {k: v for k, v in given.items() if v}
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
        self, rule: str, scope: str, as_of: str | None = None, known_at: str | None = None
    ) -> dict[str, Any]:
        """GET /v1/explain: one check's contributions."""
        given = {"rule": rule, "scope": scope, "as_of": as_of, "known_at": known_at}
        result: dict[str, Any] = self._call(
            "GET", "/v1/explain", params={k: v for k, v in given.items() if v}
        )
        return result

    def events(self, params: dict[str, str]) -> dict[str, Any]:
        """GET /v1/events: one page of the log's history."""
        result: dict[str, Any] = self._call("GET", "/v1/events", params=params)
        return result
