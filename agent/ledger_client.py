"""Sending one report to the ledger and classifying the answer (no retries here).

2xx                         acknowledged: the report leaves the spool
401, 403                    auth problem: retried with backoff (a SIGHUP can fix the token)
408, 425, 429, 5xx, network retried with backoff
1xx, 3xx                    retried with backoff: the URL is wrong or behind a redirect (httpx
                            does not follow redirects for a POST), which an operator can fix
other 4xx                   rejected for good: quarantined, the ledger's reason logged

A TLS failure (an untrusted certificate, a plain-HTTP URL to an HTTPS ledger) is a network
error: retried with backoff, its reason logged.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

ACK = "ack"
RETRY = "retry"
REJECT = "reject"
_RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})


@dataclass(frozen=True)
class SendResult:
    outcome: str  # ack | retry | reject
    reason: str
    status_code: int | None = None


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail", body.get("status", body))
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return str(body)[:500]


class LedgerClient:
    """POST {ledger}/v1/reports with a bearer token; `verify` is what an https:// ledger's
    certificate is checked with (True: the system's store); `transport` is a seam for tests."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_seconds: float = 10.0,
        agent_version: str = "",
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/reports"
        self._client = httpx.Client(
            timeout=timeout_seconds,
            transport=transport,
            verify=verify,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"gpucap-agent/{agent_version}",
            },
        )

    def send(self, report: dict[str, Any]) -> SendResult:
        try:
            response = self._client.post(self._url, json=report)
        except httpx.HTTPError as exc:
            return SendResult(RETRY, f"{type(exc).__name__}: {exc}")
        code = response.status_code
        if 200 <= code < 300:
            return SendResult(ACK, _reason(response), code)
        if 400 <= code < 500 and code not in _RETRYABLE_4XX:
            return SendResult(REJECT, f"HTTP {code}: {_reason(response)}", code)
        return SendResult(RETRY, f"HTTP {code}: {_reason(response)}", code)

    def close(self) -> None:
        self._client.close()
