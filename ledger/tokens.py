"""Bearer tokens: HMAC-signed claims, verifiable without a database round trip.

A token is `gpc1.<claims>.<mac>`: base64url canonical JSON claims (token id, kind, node and site,
operator and entity, or auditor) and base64url HMAC-SHA256 over them with the ledger's key (from
GPUCAP_LEDGER_SECRET, else generated at migration and kept in `ledger_state`). The database keeps
each token's id, subject and sha256, never the token. Revocation is by id: processes cache the
revoked ids and re-read them when `ledger_state.auth_version` changes (checked at most every
`revocation_ttl_s`). Kinds: `node` (writes its own reports), `operator` (reads; with an entity,
only that entity's scopes), `auditor` (reads the whole log and every answer, writes nothing).
Every issue and revocation is a log entry (id, kind, subject, scope, by whom; never the token).
The `token` rows are read and written by `db`, the key's `ledger_state` row by `store`.
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

from gpucap.ledger import db, log
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.settings import iso_instant
from gpucap.ledger.store import Store, bump_auth

PREFIX = "gpc1"
KINDS = ("node", "operator", "auditor")


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for: a node at a site, or an operator (entity None: all)."""

    token_id: str
    kind: str  # node | operator | auditor
    node_id: str | None = None
    site_id: str | None = None
    operator: str | None = None
    entity: str | None = None
    auditor: str | None = None

    @property
    def reads_everything(self) -> bool:
        """An auditor or an unscoped operator: the whole log and every scope."""
        return self.kind == "auditor" or (self.kind == "operator" and self.entity is None)

    def subject(self) -> dict[str, str]:
        fields = {
            "node": self.node_id,
            "site": self.site_id,
            "operator": self.operator,
            "entity": self.entity,
            "auditor": self.auditor,
        }
        return {k: v for k, v in fields.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(principal: Principal, key: bytes) -> str:
    """The token for `principal` under `key` (pure)."""
    claims = {"id": principal.token_id, "kind": principal.kind, **principal.subject()}
    body = _b64(log.canonical(claims).encode())
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
    if not isinstance(claims, dict) or claims.get("kind") not in KINDS:
        raise AuthError(401, "malformed_token", "token claims are invalid")
    return Principal(
        token_id=str(claims["id"]),
        kind=str(claims["kind"]),
        node_id=claims.get("node"),
        site_id=claims.get("site"),
        operator=claims.get("operator"),
        entity=claims.get("entity"),
        auditor=claims.get("auditor"),
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
    if principal_kind == "auditor" and not subject.get("auditor"):
        raise RejectedError("--auditor", "an auditor token needs a name")


def issue(
    store: Store,
    principal_kind: str,
    now: datetime,
    secret: str | None,
    by: str = "cli",
    **subject: str | None,
) -> tuple[str, str]:
    """Create and record a token; returns (token id, token). Only the token's hash is stored."""
    check_subject(principal_kind, **subject)
    principal = Principal(token_id=secrets.token_hex(8), kind=principal_kind, **subject)
    token = sign(principal, signing_key(store, secret))
    recorded_at = iso_instant(now)
    with store.write() as conn:
        row = db.TokenRow(
            id=principal.token_id,
            kind=principal.kind,
            node_id=principal.node_id,
            site_id=principal.site_id,
            operator=principal.operator or principal.auditor,
            entity=principal.entity,
            token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            created_at=recorded_at,
            revoked_at=None,
        )
        db.insert_token(conn, row)
        log.append(conn, "token_issued", f"operator:{by}", _entry(principal), recorded_at)
    return principal.token_id, token


def _entry(principal: Principal) -> dict[str, object]:
    """What the log records of a token: never the token or its hash."""
    return {
        "id": principal.token_id,
        "kind": principal.kind,
        "subject": principal.subject(),
        "scope": f"entity:{principal.entity}" if principal.entity else None,
    }


def revoke(store: Store, token_id: str, now: datetime, by: str = "cli") -> None:
    """Revoke a token by id; every process stops accepting it within its revocation TTL."""
    recorded_at = iso_instant(now)
    with store.write() as conn:
        row = db.unrevoked_token(conn, token_id)
        if row is None:
            raise RejectedError("--revoke", f"no unrevoked token with id {token_id!r}")
        if not db.revoke_token(conn, token_id, recorded_at):  # revoked since the SELECT
            raise RejectedError("--revoke", f"no unrevoked token with id {token_id!r}")
        auditor = row.kind == "auditor"
        principal = Principal(
            token_id=row.id,
            kind=row.kind,
            node_id=row.node_id,
            site_id=row.site_id,
            operator=None if auditor else row.operator,
            entity=row.entity,
            auditor=row.operator if auditor else None,
        )
        log.append(conn, "token_revoked", f"operator:{by}", _entry(principal), recorded_at)
        bump_auth(conn)


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
        with self._store.read() as conn:
            self._revoked = db.revoked_token_ids(conn)
        self._version = version
