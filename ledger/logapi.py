"""`/v1/log/...`: the signed checkpoint, the verifier key, entries and proofs.

Who may read (docs/log.md): auditors and operators; an entity-scoped operator may read the
checkpoint, the key and proofs (hashes only) but not entries (403); node tokens none of it.
Query parameters are parsed here so that a bad one is the ledger's usual 422 naming it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gpucap.ledger import log, merkle
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal

if TYPE_CHECKING:
    from gpucap.ledger.service import Ledger

_TEXT = "text/plain; charset=utf-8"
_DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII digits only, below 2^63


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _int(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise RejectedError(name, "required")
    if not _DECIMAL.fullmatch(raw):
        raise RejectedError(name, f"expected a non-negative integer, got {raw!r}")
    return int(raw)


def _size(conn: Any) -> int:
    return log.tree(conn).size


def checkpoint_text(store: Store) -> str:
    """The newest signed checkpoint."""
    with store.read() as conn:
        return log.tree(conn).note


def entries_answer(store: Store, start: int, end: int) -> dict[str, Any]:
    """`/v1/log/entries`: integrated entries start <= index < end (at most a page)."""
    with store.read() as conn:
        size = _size(conn)
        if start >= size:
            raise RejectedError("start", f"must be below the tree size {size}")
        if end <= start:
            raise RejectedError("end", "must be above start (end is exclusive)")
        rows = log.entries(conn, start, min(end, size, start + log.MAX_ENTRIES_PER_READ))
    return {
        "entries": [
            {
                "index": index,
                "leaf": b64(leaf.encode("utf-8")),
                "leaf_hash": b64(merkle.leaf_hash(leaf.encode("utf-8"))),
                "entry": json.loads(leaf),
            }
            for index, leaf in rows
        ]
    }


def inclusion_answer(store: Store, index: int, size: int) -> dict[str, Any]:
    """`/v1/log/proof/inclusion`: the audit path of leaf `index` in the tree of `size`."""
    with store.read() as conn:
        current = _size(conn)
        if size > current:
            raise RejectedError("size", f"larger than the tree ({current} entries)")
        if index >= size:
            raise RejectedError("index", f"outside the tree of size {size}")
        leaf_hash, hashes = log.inclusion(conn, index, size)
    return {
        "index": index,
        "size": size,
        "leaf_hash": b64(leaf_hash),
        "hashes": [b64(h) for h in hashes],
    }


def consistency_answer(store: Store, first: int, second: int) -> dict[str, Any]:
    """`/v1/log/proof/consistency`: the proof that the tree of `second` extends `first`."""
    with store.read() as conn:
        current = _size(conn)
        if second > current:
            raise RejectedError("to", f"larger than the tree ({current} entries)")
        if first > second:
            raise RejectedError("from", f"larger than to ({second})")
        hashes = log.consistency(conn, first, second)
    return {"from": first, "to": second, "hashes": [b64(h) for h in hashes]}


def log_routes(get: Callable[[], Ledger], reader: Callable[[Request], Principal]) -> APIRouter:
    router = APIRouter(prefix="/v1/log")

    def json_response(value: Any) -> Response:
        return Response(json.dumps(value), media_type="application/json")

    @router.get("/checkpoint")
    def checkpoint(request: Request) -> Response:
        """The newest signed checkpoint (C2SP tlog-checkpoint as a signed note)."""
        reader(request)
        return Response(checkpoint_text(get().store), media_type=_TEXT)

    @router.get("/key")
    def key(request: Request) -> Response:
        """The verifier key: `NAME+KEYID+BASE64(0x01 || public key)`."""
        reader(request)
        return Response(get().signer.verifier_key + "\n", media_type=_TEXT)

    @router.get("/entries")
    def entries(request: Request) -> Response:
        principal = reader(request)
        if not principal.reads_everything:
            exc = AuthError(403, "out_of_scope", "an entity-scoped token cannot read log entries")
            get().refuse(exc)
            raise exc
        start, end = _int(request, "start"), _int(request, "end")
        return json_response(entries_answer(get().store, start, end))

    @router.get("/proof/inclusion")
    async def inclusion(request: Request) -> Response:
        reader(request)
        index, size = _int(request, "index"), _int(request, "size")
        return json_response(await run_in_threadpool(inclusion_answer, get().store, index, size))

    @router.get("/proof/consistency")
    async def consistency(request: Request) -> Response:
        reader(request)
        first, second = _int(request, "from"), _int(request, "to")
        answer = await run_in_threadpool(consistency_answer, get().store, first, second)
        return json_response(answer)

    return router
