"""Bearer tokens: HMAC-signed claims, verifiable without a database round trip.

A token is `gpc1.<claims>.<mac>`: base64url canonical JSON claims (token id, kind, node and site,
operator and entity, or auditor) and base64url HMAC-SHA256 over them with the ledger's key (from
GPUCAP_LEDGER_SECRET, else generated at migration and kept in `ledger_state`). The database keeps
each token's id, subject and sha256, never the token. Revocation is by id: processes cache the
revoked ids and re-read them when `ledger_state.auth_version` changes (checked at most every
`revocation_ttl_s`). Kinds: `node` (writes its own reports), `operator` (reads; with an entity,
only that entity's scopes), `auditor` (reads the whole log and every answer, writes nothing).
A token may carry an expiry (`exp`, an `iso_instant`) in its signed claims, which the verifier
checks on every request, and a label (in its row and `token_issued` entry only). Every issue and
revocation is a log entry (id, kind, subject, scope, by whom; never the token); a node's
decommission revokes its node tokens in the same transaction (`revoke_node_tokens`). The `token`
rows are read and written by `db`, the key's `ledger_state` row by `store`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection

from gpucap.core.errors import InputError
from gpucap.ledger import db, log
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.settings import iso_instant, parse_instant
from gpucap.ledger.store import Store, bump_auth

PREFIX = "gpc1"
KINDS = ("node", "operator", "auditor")
LABEL_MAX_CHARS = 128
_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


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
    expires_at: datetime | None = None  # UTC; None: never expires

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
    if principal.expires_at is not None:
        claims["exp"] = iso_instant(principal.expires_at)
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
    exp = claims.get("exp")
    try:
        expires_at = None if exp is None else parse_instant(exp)
    except (TypeError, ValueError):
        raise AuthError(401, "malformed_token", "token expiry is invalid") from None
    return Principal(
        token_id=str(claims["id"]),
        kind=str(claims["kind"]),
        node_id=claims.get("node"),
        site_id=claims.get("site"),
        operator=claims.get("operator"),
        entity=claims.get("entity"),
        auditor=claims.get("auditor"),
        expires_at=expires_at,
    )


def check_expiry(principal: Principal, now: datetime) -> None:
    """AuthError(401, `expired`) once `now` reaches the token's expiry (pure; per request)."""
    if principal.expires_at is not None and now >= principal.expires_at:
        when = iso_instant(principal.expires_at)
        raise AuthError(401, "expired", f"token {principal.token_id} expired at {when}")


def parse_expires(text: str, now: datetime) -> datetime:
    """`--expires`: an RFC 3339 instant or a duration from `now` (`90d`, `12h`, `30m`, `45s`,
    `2w`), as a UTC instant after `now`; InputError naming `--expires` otherwise (pure)."""
    duration = _DURATION.fullmatch(text)
    try:
        if duration is not None:
            seconds = int(duration[1]) * _UNIT_S[duration[2]]
            moment = now + timedelta(seconds=seconds)
        elif _RFC3339.fullmatch(text):
            moment = datetime.fromisoformat(text.upper())
        else:
            raise InputError(
                "--expires",
                f"{text!r} is neither an RFC 3339 instant (2026-01-01T00:00:00Z) "
                "nor a duration (90d, 12h, 30m, 45s, 2w)",
            )
        moment = moment.astimezone(UTC)
        iso_instant(moment)  # a year past 9999 fails here, not at verification
    except (OverflowError, ValueError) as exc:
        raise InputError("--expires", f"{text!r} is not a valid instant: {exc}") from None
    if moment <= now:
        raise InputError("--expires", f"{iso_instant(moment)} is not in the future")
    return moment


def check_label(label: str) -> None:
    """InputError naming `--label` for an empty label, one over `LABEL_MAX_CHARS` characters,
    or one with a control character or text that is not UTF-8 (pure)."""
    if not label.strip():
        raise InputError("--label", "must not be empty")
    if len(label) > LABEL_MAX_CHARS:
        raise InputError("--label", f"at most {LABEL_MAX_CHARS} characters, not {len(label)}")
    for i, ch in enumerate(label):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs"):
            what = "not UTF-8" if category == "Cs" else f"control character U+{ord(ch):04X}"
            raise InputError("--label", f"{what} at position {i}")


def check_known(conn: Connection, principal: Principal, *, lock: bool) -> None:
    """InputError naming the flag when a node or entity-scoped token names what the current
    registry lacks, or a node that reported from another site or was decommissioned (a node
    that has not reported yet is fine). With `lock` (PostgreSQL) the node's row stays locked
    until commit, so a concurrent decommission revokes this token too."""
    if principal.kind == "node":
        flag = "--site"
    elif principal.kind == "operator" and principal.entity is not None:
        flag = "--entity"
    else:
        return
    reg = db.registry(conn)
    if reg is None:
        raise InputError(flag, "no registry loaded (gpucap ledger serve --registry FILE)")
    doc = json.loads(reg.doc)
    if principal.kind == "operator":
        if principal.entity not in {str(e["id"]) for e in doc.get("entities", [])}:
            raise InputError("--entity", f"no entity {principal.entity!r} in the registry")
        return
    site, node_id = principal.site_id, str(principal.node_id)
    if site not in {str(s["id"]) for s in doc.get("sites", [])}:
        raise InputError("--site", f"no site {site!r} in the registry")
    node = db.node_for_update(conn, node_id, lock=lock)
    if node is not None and node.decommissioned_on is not None:
        raise InputError(
            "--node",
            f"node {node_id!r} was decommissioned on {node.decommissioned_on}; "
            "a node id is never reused: enrol the machine under a new node id",
        )
    if node is not None and node.site_id != site:
        raise InputError("--node", f"node {node_id!r} reports for site {node.site_id!r}")


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
    *,
    expires_at: datetime | None = None,
    label: str | None = None,
    check_registry: bool = False,
    **subject: str | None,
) -> tuple[str, str]:
    """Create and record a token; returns (token id, token). Only the token's hash is stored.
    With `check_registry` (`gpucap ledger token`) its subject is checked against the registry
    and the node table in the same transaction (`check_known`); fixtures that issue tokens
    before a registry is recorded leave it off."""
    check_subject(principal_kind, **subject)
    if label is not None:
        check_label(label)
    if expires_at is not None and expires_at <= now:
        raise InputError("--expires", f"{iso_instant(expires_at)} is not in the future")
    principal = Principal(
        token_id=secrets.token_hex(8), kind=principal_kind, expires_at=expires_at, **subject
    )
    token = sign(principal, signing_key(store, secret))
    recorded_at = iso_instant(now)
    body = _entry(principal)
    if expires_at is not None:
        body["expires_at"] = iso_instant(expires_at)
    if label is not None:
        body["label"] = label  # only when given: entries issued before labels stay as they were
    with store.write() as conn:
        if check_registry:
            check_known(conn, principal, lock=not store.is_sqlite)
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
            expires_at=None if expires_at is None else iso_instant(expires_at),
            label=label,
        )
        db.insert_token(conn, row)
        log.append(conn, "token_issued", f"operator:{by}", body, recorded_at)
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
        log.append(conn, "token_revoked", f"operator:{by}", _entry(_of_row(row)), recorded_at)
        bump_auth(conn)


def revoke_node_tokens(conn: Connection, node_id: str, recorded_at: str, actor: str) -> int:
    """Revoke every unrevoked node token of `node_id` inside the caller's transaction (its
    decommission), one `token_revoked` entry each; returns how many."""
    revoked = 0
    for row in db.unrevoked_node_tokens(conn, node_id):
        if db.revoke_token(conn, row.id, recorded_at):
            log.append(conn, "token_revoked", actor, _entry(_of_row(row)), recorded_at)
            revoked += 1
    if revoked:
        bump_auth(conn)
    return revoked


def _of_row(row: db.TokenRow) -> Principal:
    """The principal a `token` row records (an auditor's name is kept in `operator`)."""
    auditor = row.kind == "auditor"
    return Principal(
        token_id=row.id,
        kind=row.kind,
        node_id=row.node_id,
        site_id=row.site_id,
        operator=None if auditor else row.operator,
        entity=row.entity,
        auditor=row.operator if auditor else None,
    )


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
