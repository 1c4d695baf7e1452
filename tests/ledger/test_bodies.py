"""A request body is refused by its declared size before a byte of it is read."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from gpucap.ledger.app import BodyError, read_json_body


def _request(headers: dict[str, str], chunks: list[bytes]) -> tuple[Request, list[int]]:
    reads: list[int] = []

    async def receive() -> dict[str, object]:
        reads.append(1)
        body = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/whatif",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive), reads


def test_a_declared_200_mib_body_is_refused_unread() -> None:
    request, reads = _request(
        {"content-type": "application/json", "content-length": str(200 * 2**20)}, [b"{}"]
    )
    with pytest.raises(BodyError) as info:
        asyncio.run(read_json_body(request, 4 * 2**20))
    assert info.value.status == 413
    assert reads == []


def test_a_streamed_body_stops_at_the_limit() -> None:
    chunks = [b"x" * 1024] * 100
    request, reads = _request({"content-type": "application/json"}, list(chunks))
    with pytest.raises(BodyError) as info:
        asyncio.run(read_json_body(request, 10 * 1024))
    assert info.value.status == 413
    assert len(reads) == 11  # the chunk that crossed the limit, no more


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", None), ("Application/JSON; charset=utf-8", None), ("", 415),
     ("text/json", 415), ("application/x-www-form-urlencoded", 415)],
)  # fmt: skip
def test_only_json_is_read(content_type: str, status: int | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request, _ = _request(headers, [b'{"add": []}'])
    if status is None:
        assert asyncio.run(read_json_body(request, 1024)) == b'{"add": []}'
        return
    with pytest.raises(BodyError) as info:
        asyncio.run(read_json_body(request, 1024))
    assert info.value.status == status
