"""`GET /v1/events` and `gpucap ledger events`: the signed log's entries as a history, filtered
and paginated.

Entries are read in index order from the cursor (a leaf index), at most `SCAN` per request:
`since`/`until` become index bounds by the same search `known_at` uses (recorded_at rises along
the log), `kind` is filtered in SQL, and node, site and entity in the page read. A page holds at
most `limit` entries and `next_cursor` resumes after the last entry it looked at, so a sparse
filter over a long log may answer a page with few entries and a cursor: follow it until it is
null. Each entry carries its leaf hash, so an auditor can ask `/v1/log/proof` for it.

An entity-scoped operator sees the entries about its own nodes and sites (reports, presence,
decommissions), its own tokens, and registry entries reduced to its own entity, sites and
inventory lines (`"redacted": true`: such a body is not the signed leaf, whose hash is given).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.ledger import db, ingest, log
from gpucap.ledger.bundle import redacted_registry
from gpucap.ledger.errors import RejectedError
from gpucap.ledger.known import parse_known_at, size_at
from gpucap.ledger.store import Store

SCAN = 20000  # entries looked at per request, at most
MAX_LIMIT = 1000
_DECOM = '"kind":"decommission"'  # in a leaf's canonical JSON
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class Query:
    since: datetime | None = None
    until: datetime | None = None
    kind: str | None = None
    node: str | None = None
    site: str | None = None
    entity: str | None = None
    cursor: int = 0
    limit: int = 100


def parse_query(params: Mapping[str, str | None]) -> Query:
    """The query parameters, each refused by name when malformed."""

    def instant(name: str) -> datetime | None:
        raw = params.get(name)
        if not raw:
            return None
        known = parse_known_at(raw, name)
        if known is None or known.instant is None:
            raise RejectedError(name, f"expected an ISO 8601 instant, got {raw!r}")
        return known.instant

    def ident(name: str) -> str | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        if not _ID.fullmatch(raw):
            raise RejectedError(name, f"not an id: {raw!r}")
        return raw

    def number(name: str, default: int, top: int) -> int:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise RejectedError(name, f"expected a non-negative integer, got {raw!r}")
        value = int(raw)
        if value > top:
            raise RejectedError(name, f"at most {top}")
        return value

    kind = params.get("kind") or None
    if kind is not None and kind not in log.KINDS:
        raise RejectedError("kind", f"expected one of {', '.join(log.KINDS)}, got {kind!r}")
    query = Query(
        since=instant("since"),
        until=instant("until"),
        kind=kind,
        node=ident("node"),
        site=ident("site"),
        entity=ident("entity"),
        cursor=number("cursor", 0, 2**62),
        limit=number("limit", 100, MAX_LIMIT),
    )
    if query.since and query.until and query.since > query.until:
        raise RejectedError("since", "is after until")
    if query.limit == 0:
        raise RejectedError("limit", "must be at least 1")
    return query


def about(kind: str, body: Any, node_sites: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The (node, site) an entry is about (a decommission names its node: its site is the
    node's, which never changes)."""
    if kind == "decommission":
        node = body.get("node_id")
        return node, node_sites.get(node or "")
    if kind in ("report", "presence"):
        return body.get("node_id"), body.get("site_id")
    if kind in ("token_issued", "token_revoked"):
        subject = body.get("subject") or {}
        return subject.get("node_id"), subject.get("site_id")
    return None, None


def events(
    conn: Connection,
    query: Query,
    sites_of: Mapping[str, str],
    viewer: str | None,
) -> dict[str, Any]:
    """One page of entries for a reader limited to entity `viewer` (None: everything);
    `sites_of` maps site id -> entity (the current registry's, for the entity filters)."""
    signed = log.tree(conn).size
    start, end = query.cursor, signed
    if query.since is not None:
        start = max(start, size_at(conn, signed, _before(query.since)))
    if query.until is not None:
        end = min(end, size_at(conn, signed, query.until))
    stop = min(end, start + SCAN)
    rows = log.entries_page(conn, start, stop, query.kind, query.limit + 1)
    decommissioned = [json.loads(leaf)["body"]["node_id"] for _i, leaf in rows if _DECOM in leaf]
    node_sites = db.node_sites(conn, decommissioned)
    out: list[dict[str, Any]] = []
    looked = stop
    for idx, leaf in rows:
        if len(out) == query.limit:
            looked = idx
            break
        entry = _visible(idx, leaf, query, sites_of, node_sites, viewer)
        if entry is not None:
            out.append(entry)
    hashes = log.read_nodes(conn, [(0, e["index"]) for e in out])
    for e in out:
        e["leaf_hash"] = base64.b64encode(hashes[(0, e["index"])]).decode()
    return {
        "entries": out,
        "next_cursor": looked if looked < end else None,
        "log_size": signed,
    }


def _before(moment: datetime) -> datetime:
    """The last instant before `moment` that a text instant can name (since is inclusive)."""
    return moment - timedelta(microseconds=1)


def _visible(
    idx: int,
    leaf: str,
    query: Query,
    sites_of: Mapping[str, str],
    node_sites: Mapping[str, str],
    viewer: str | None,
) -> dict[str, Any] | None:
    entry = json.loads(leaf)
    kind, body = entry["kind"], entry["body"]
    node, site = about(kind, body, node_sites)
    if query.node is not None and node != query.node:
        return None
    if query.site is not None and site != query.site and kind != "registry":
        return None
    for entity in (query.entity, viewer):
        if entity is None:
            continue
        if kind == "registry":
            continue
        owner = sites_of.get(site or "")
        token_scope = body.get("scope") if kind.startswith("token_") else None
        if owner != entity and token_scope != f"entity:{entity}":
            return None
    shown = dict(entry)
    if kind == "registry" and viewer is not None:
        shown["body"] = {
            "origin": body.get("origin"),
            "doc": redacted_registry(body["doc"], viewer),
        }
        shown["redacted"] = True
    return {"index": idx, **shown}


def history(store: Store, query: Query, follow: bool) -> list[dict[str, Any]]:
    """Pages of every reader's view (no entity limit) read from the database, one or (with
    `follow`) every page to the end: `gpucap ledger events --db`."""
    pages = []
    with store.read() as conn:
        sites = ingest.registry_sites(conn) or {}
        while True:
            page = events(conn, query, sites, None)
            pages.append(page)
            if not follow or page["next_cursor"] is None:
                return pages
            query = replace(query, cursor=page["next_cursor"])
