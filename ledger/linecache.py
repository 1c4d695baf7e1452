"""The observed inventory lines as engine lines, patched from the rows that changed.

Every write to `inventory_line` sets the row's `version` to the projection version it commits
(and keeps a line whose count reaches 0 as a tombstone), so a reader that holds the lines of
version V needs only the rows with `version > V`. A process's `LineSet` is a memo, never a
source: it is checked against the projection version read in the same snapshot as the rows, and
without a base (or with one newer than the database) the reader reads every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from sqlalchemy.engine import Connection

from gpucap.core.fleet import Line

_SELECT = (
    "SELECT key, site_id, model, tpp, eccn_class, installed, removed, count FROM inventory_line"
)
_ALL_SQL = _SELECT + " WHERE count > 0"
_SINCE_SQL = _SELECT + " WHERE version > "
_VERSION_SQL = "SELECT projection_version FROM ledger_state WHERE id = 1"


@dataclass(frozen=True)
class LineSet:
    """The engine lines (count > 0) by `inventory_line.key`, as of one projection version.
    Never modified: a patch builds a new LineSet."""

    version: int
    lines: dict[str, Line]


def read_lines(conn: Connection, base: LineSet | None) -> tuple[LineSet, int]:
    """The lines at the projection version of `conn`'s snapshot, and the rows read.

    `conn` must be a snapshot (SQLite's read transaction; PostgreSQL at REPEATABLE READ), so that
    the version and the rows agree.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # a Connection inside a transaction always holds one
    cur = dbapi.cursor()
    try:
        cur.execute(_VERSION_SQL)
        version = int(cur.fetchone()[0])  # type: ignore[index]  # the state row always exists
        if base is not None and base.version == version:
            return base, 0
        per_device: dict[int, Fraction] = {}
        if base is None or base.version > version:
            cur.execute(_ALL_SQL)
            rows = cur.fetchall()
            lines: dict[str, Line] = {}
        else:
            mark = "?" if conn.dialect.name == "sqlite" else "%s"
            cur.execute(_SINCE_SQL + mark, (base.version,))
            rows = cur.fetchall()
            lines = dict(base.lines)  # a changed key keeps its place: unchanged sites compare equal
        for key, site_id, model, tpp, eccn_class, installed, removed, count in rows:
            if count <= 0:
                lines.pop(key, None)
                continue
            per = per_device.get(tpp)
            if per is None:
                per = per_device[tpp] = Fraction(tpp)
            lines[key] = Line(
                site=site_id,
                count=count,
                tpp_per_device=per,
                eccn_class=eccn_class,
                installed=date.fromisoformat(installed),
                removed=date.fromisoformat(removed) if removed else None,
                model=model,
            )
        return LineSet(version, lines), len(rows)
    finally:
        cur.close()
