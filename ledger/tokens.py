"""Bearer tokens: HMAC-signed claims, verifiable without a database round trip.

A token is `gpc1.<claims>.<mac>`: base64url canonical JSON claims (token id, kind, node and site
or operator and entity) and base64url HMAC-SHA256 over them with the ledger's key (from
GPUCAP_LEDGER_SECRET, else generated at migration and kept in `ledger_state`). The database keeps
each token's id, subject and sha256, never the token. Revocation is by id: processes cache the
revoked ids and re-read them when `ledger_state.auth_version` changes (checked at most every
`revocation_ttl_s`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.eventlog import canonical
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store, bump
from gpucap.ledger.tables import table

PREFIX = "gpc1"


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for: a node at a site, or an operator (entity None: all)."""

    token_id: str
    kind: str  # node | operator
    node_id: str | None = None
    site_id: str | None = None
    operator: str | None = None
    entity: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(principal: Principal, key: bytes) -> str:
    """The token for `principal` under `key` (pure)."""
    claims = {
        k: v
        for k, v in {
            "id": principal.token_id,
            "kind": principal.kind,
            "node": principal.node_id,
            "site": principal.site_id,
            "operator": principal.operator,
            "entity": principal.entity,
        }.items()
        if v is not None
    }
    body = _b64(canonical(claims).encode())
    mac = _b64(hmac.new(key, f"{PREFIX}.{body}".encode(), hashlib.sha256).digest())
    return f"{PREFIX}.{body}.{mac}"


def verify(token: str, key: bytes) -> Principal:
    """The principal a token names, or AuthError(401) for anything forged or malformed (pure)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise AuthError(401, "malformed_token", "not a gpucap ledger token")
    expected = hmac.new(key, f"{PREFIX}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        mac = _unb64(parts[2])
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, json.JSONDecodeError):
        raise AuthError(401, "malformed_token", "token cannot be decoded") from None
    if not hmac.compare_digest(mac, expected):
        raise AuthError(401, "bad_signature", "token signature does not verify")
    if not isinstance(claims, dict) or claims.get("kind") not in ("node", "operator"):
        raise AuthError(401, "malformed_token", "token claims are invalid")
    return Principal(
        token_id=str(claims["id"]),
        kind=str(claims["kind"]),
        node_id=claims.get("node"),
        site_id=claims.get("site"),
        operator=claims.get("operator"),
        entity=claims.get("entity"),
    )


def signing_key(store: Store, secret: str | None) -> bytes:
    """The HMAC key: the configured secret, else the one stored at migration."""
    if secret:
        return hashlib.sha256(secret.encode()).digest()
    return bytes.fromhex(store.state().token_key)


def check_subject(principal_kind: str, **subject: str | None) -> None:
    """RejectedError (exit 2) when a token's subject is incomplete; checked before any I/O."""
    if principal_kind == "node" and not (subject.get("node_id") and subject.get("site_id")):
        raise RejectedError("--node/--site", "a node token needs both a node and a site")
    if principal_kind == "operator" and not subject.get("operator"):
        raise RejectedError("--operator", "an operator token needs a name")


def issue(
    store: Store, principal_kind: str, now: datetime, secret: str | None, **subject: str | None
) -> tuple[str, str]:
    """Create and record a token; returns (token id, token). Only the token's hash is stored."""
    check_subject(principal_kind, **subject)
    principal = Principal(token_id=secrets.token_hex(8), kind=principal_kind, **subject)
    token = sign(principal, signing_key(store, secret))
    with store.write() as (conn, _state):
        conn.execute(
            sa.insert(table("token")).values(
                id=principal.token_id,
                kind=principal.kind,
                node_id=principal.node_id,
                site_id=principal.site_id,
                operator=principal.operator,
                entity=principal.entity,
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                created_at=iso_instant(now),
                revoked_at=None,
            )
        )
    return principal.token_id, token


def revoke(store: Store, token_id: str, now: datetime) -> None:
    """Revoke a token by id; every process stops accepting it within its revocation TTL."""
    token_t = table("token")
    with store.write() as (conn, state):
        found = conn.execute(
            sa.update(token_t)
            .where(token_t.c.id == token_id, token_t.c.revoked_at.is_(None))
            .values(revoked_at=iso_instant(now))
        ).rowcount
        if not found:
            raise RejectedError("--revoke", f"no unrevoked token with id {token_id!r}")
        bump(conn, auth_version=state.auth_version + 1)


class Revocations:
    """A process's cached set of revoked token ids, refreshed when `auth_version` moves."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._version = -1
        self._revoked: frozenset[str] = frozenset()

    def is_revoked(self, token_id: str) -> bool:
        now = time.monotonic()
        if now - self._checked >= self._ttl_s:
            with self._lock:
                if now - self._checked >= self._ttl_s:
                    self._refresh()
                    self._checked = now
        return token_id in self._revoked

    def _refresh(self) -> None:
        version = self._store.state().auth_version
        if version == self._version:
            return
        token_t = table("token")
        with self._store.read() as conn:
            ids = conn.execute(
                sa.select(token_t.c.id).where(token_t.c.revoked_at.is_not(None))
            ).scalars()
            self._revoked = frozenset(ids)
        self._version = version
