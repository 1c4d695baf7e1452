"""How each ledger answer is classified, and that docs/agent.md says the same."""

from __future__ import annotations

import re

import httpx
import pytest

from gpucap.agent.ledger_client import ACK, REJECT, RETRY, LedgerClient

from .conftest import REPO

RETRIED = (301, 307, 308, 401, 403, 408, 425, 429, 500, 502, 503, 504, 599)
QUARANTINED = (400, 404, 405, 409, 413, 415, 422, 451)


def _outcome(status: int) -> str:
    transport = httpx.MockTransport(lambda _r: httpx.Response(status, json={"detail": "x"}))
    client = LedgerClient("http://ledger.test", "t", transport=transport)
    try:
        return client.send({"seq": 1}).outcome
    finally:
        client.close()


@pytest.mark.parametrize("status", RETRIED)
def test_retried_statuses(status: int) -> None:
    assert _outcome(status) == RETRY


@pytest.mark.parametrize("status", QUARANTINED)
def test_quarantined_statuses(status: int) -> None:
    assert _outcome(status) == REJECT


def test_accepted_and_duplicate_are_acknowledged() -> None:
    assert _outcome(200) == ACK
    assert _outcome(201) == ACK


def test_network_error_is_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = LedgerClient("http://ledger.test", "t", transport=httpx.MockTransport(refuse))
    try:
        assert client.send({"seq": 1}).outcome == RETRY
    finally:
        client.close()


def test_docs_name_exactly_the_retried_statuses() -> None:
    doc = (REPO / "docs" / "agent.md").read_text()
    rows = [
        line
        for line in doc.splitlines()
        if line.startswith("| ") and line.split("|")[2].strip().startswith("retried")
    ]
    named = {int(n) for row in rows for n in re.findall(r"\b([1-5]\d\d)\b", row.split("|")[1])}
    assert named == {401, 403, 408, 425, 429}
    assert any("any 5xx" in row for row in rows)
    assert any("3xx" in row for row in rows)
    (quarantine_row,) = [line for line in doc.splitlines() if "| quarantined:" in line]
    assert "every other 4xx" in quarantine_row
    assert "`gpucap_agent_report_failures_total` counts failed delivery attempts" in doc
