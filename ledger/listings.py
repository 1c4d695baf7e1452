"""The operators' listings: `gpucap ledger nodes` and `gpucap ledger token --list`.

Rows are plain dicts; `render` makes them a Rich table, CSV (a header row of the JSON keys),
JSON or YAML, as every listing does (`gpucap.core.output`). The token listing reads the `token`
table (`db.tokens`) and, for who issued each token, the actor of its `token_issued` log entry
(`operator:<by>`, `log.leaves_of_kind`); it never reads or prints a token or its hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core import output
from gpucap.ledger import db, log
from gpucap.ledger.store import Store

# (JSON and CSV key, table heading) of each listing's columns, in order.
NODE_COLUMNS = (
    ("node", "node"),
    ("site", "site"),
    ("last_seen", "last seen"),
    ("last_seq", "last seq"),
    ("state", "state"),
    ("devices", "devices"),
)
TOKEN_COLUMNS = (
    ("id", "id"),
    ("kind", "kind"),
    ("subject", "subject"),
    ("scope", "scope"),
    ("issued_at", "issued at"),
    ("by", "by"),
    ("revoked_at", "revoked at"),
    ("expires_at", "expires at"),
    ("label", "label"),
)
_NUMERIC = ("last_seq", "devices")  # right-aligned in a table


def node_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The listing's rows of a `GET /v1/nodes` answer (one from a ledger without `state` or
    `devices`: the state from `stale`, no device count)."""
    rows = []
    for n in doc["nodes"]:
        state = n.get("state") or (
            "decommissioned" if n.get("decommissioned_on") else "stale" if n["stale"] else "fresh"
        )
        rows.append({key: n.get(key) for key, _ in NODE_COLUMNS} | {"state": state})
    return rows


def token_rows(conn: Connection) -> list[dict[str, Any]]:
    """Every issued token (oldest first): id, kind, subject, scope (the entity an operator
    token is limited to), when and by whom it was issued, when it was revoked, when it expires
    and its label (None: none)."""
    issuers: dict[str, str] = {}
    for leaf in log.leaves_of_kind(conn, "token_issued"):
        entry = json.loads(leaf)
        body = entry.get("body")
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            actor = str(entry.get("actor", ""))
            issuers[body["id"]] = actor.removeprefix("operator:")
    rows = []
    for r in db.tokens(conn):
        if r.kind == "node":
            subject = {"node": r.node_id, "site": r.site_id}
        else:  # an auditor's name is kept in the operator column
            subject = {r.kind: r.operator}
        rows.append(
            {
                "id": r.id,
                "kind": r.kind,
                "subject": {k: v for k, v in subject.items() if v is not None},
                "scope": r.entity,
                "issued_at": r.created_at,
                "by": issuers.get(r.id),
                "revoked_at": r.revoked_at,
                "expires_at": r.expires_at,
                "label": r.label,
            }
        )
    return rows


def render(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    fmt: str,
    doc: Any = None,
    width: int = 200,
    headers: bool = True,
    display: Sequence[Sequence[str]] | None = None,
) -> str:
    """Rows as text in a listing format (`gpucap.core.output.render`): `table`, `csv` (header
    row of keys), `json` or `yaml` (`doc`, else the rows as a list); counts right-aligned, a
    label wrapped rather than squeezing every other column."""
    return output.render(
        rows,
        columns,
        fmt,
        doc,
        headers=headers,
        display=display,
        right=_NUMERIC,
        fold=("label",),
        width=width,
    )


def token_listing(store: Store) -> list[dict[str, Any]]:
    """`gpucap ledger token --list`: every issued token, read in one snapshot."""
    with store.snapshot() as conn:
        return token_rows(conn)
