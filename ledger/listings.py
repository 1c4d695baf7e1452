"""The operators' listings: `gpucap ledger nodes` and `gpucap ledger token --list`.

Rows are plain dicts; `render` makes them a Rich table, JSON or CSV (a header row of the JSON
keys). The token listing reads the `token` table (`db.tokens`) and, for who issued each token,
the actor of its `token_issued` log entry (`operator:<by>`, `log.leaves_of_kind`); it never
reads or prints a token or its hash.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Connection

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


def _cell(value: Any) -> str:
    """A value as one table or CSV cell: nothing for None, `k:v k:v` for a subject."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return " ".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def render(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    fmt: str,
    doc: Any = None,
    width: int = 200,
) -> str:
    """Rows as text: `table` (Rich), `csv` (header row of keys) or `json` (`doc`, else the
    rows as a list)."""
    if fmt == "json":
        return json.dumps(rows if doc is None else doc, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([key for key, _ in columns])
        writer.writerows([_cell(row.get(key)) for key, _ in columns] for row in rows)
        return buffer.getvalue()
    out = Table(box=box.SIMPLE_HEAD)
    for key, heading in columns:
        numeric = key in ("last_seq", "devices")
        if key == "label":  # a long label wraps rather than squeezing every other column
            out.add_column(heading, overflow="fold")
        else:
            out.add_column(heading, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        # Text cells: a name with brackets is printed as it is, never read as Rich markup.
        out.add_row(*(Text(_cell(row.get(key))) for key, _ in columns))
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(out)
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    return text.strip("\n") + "\n"  # the heading first: no blank lines around the table


def token_listing(store: Store) -> list[dict[str, Any]]:
    """`gpucap ledger token --list`: every issued token, read in one snapshot."""
    with store.snapshot() as conn:
        return token_rows(conn)
