"""The observed inventory lines as engine lines, patched from the rows that changed.

Every write to `inventory_line` sets the row's `version` to the projection version it commits
(and keeps a line whose count reaches 0 as a tombstone), so a reader that holds the lines of
version V needs only the rows with `version > V`. A process's `LineSet` is a memo, never a
source: it is checked against the projection version read in the same snapshot as the rows, and
without a base (or with one newer than the database) the reader reads every row. A patch also
says which sites it touched, so that the engine re-adds only those (`sites_changed_since`).
The version and the rows are read by `db.lines_since`, on the driver's own cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from sqlalchemy.engine import Connection

from gpucap.core.fleet import Line
from gpucap.ledger import db

_HISTORY = 64  # patches a LineSet remembers the touched sites of


@dataclass(frozen=True)
class LineSet:
    """The engine lines (count > 0) by `inventory_line.key`, and by site (site -> key -> line),
    as of one projection version. Never modified: a patch builds a new LineSet, which shares
    the per-site dicts of the sites it did not touch. `history`: (from, to, sites touched) of
    the patches that led here, oldest first (empty after a full read)."""

    version: int
    lines: dict[str, Line]
    by_site: dict[str, dict[str, Line]]
    history: tuple[tuple[int, int, frozenset[str]], ...] = ()

    def sites_changed_since(self, version: int) -> frozenset[str] | None:
        """The sites whose lines may differ from those at `version` (a superset), or None when
        the patches remembered do not reach back to it."""
        if version == self.version:
            return frozenset()
        touched: set[str] = set()
        for start, _, sites in reversed(self.history):
            touched |= sites
            if start == version:
                return frozenset(touched)
        return None

    def site_lines(self, site: str) -> tuple[Line, ...]:
        return tuple(self.by_site.get(site, {}).values())


def read_lines(conn: Connection, base: LineSet | None) -> tuple[LineSet, int]:
    """The lines at the projection version of `conn`'s snapshot, and the rows read.

    `conn` must be a snapshot (SQLite's read transaction; PostgreSQL at REPEATABLE READ), so that
    the version and the rows agree.
    """
    version, full, rows = db.lines_since(conn, None if base is None else base.version)
    if base is not None and base.version == version:
        return base, 0
    if full:
        lines: dict[str, Line] = {}
        by_site: dict[str, dict[str, Line]] = {}
    else:
        assert base is not None
        lines = dict(base.lines)  # a changed key keeps its place: unchanged sites compare equal
        by_site = dict(base.by_site)
    touched: set[str] = set()  # sites whose dict in `by_site` is this patch's own copy
    per_device: dict[int, Fraction] = {}

    def own(site: str) -> dict[str, Line]:
        if site not in touched:
            touched.add(site)
            by_site[site] = dict(by_site.get(site, {}))
        return by_site[site]

    for key, site_id, model, tpp, eccn_class, installed, removed, count, licence in rows:
        held = own(site_id)
        gone = lines.pop(key, None) if count <= 0 else lines.get(key)
        if gone is not None and gone.site != site_id:  # keys name their site: defensive
            own(gone.site).pop(key, None)
        if count <= 0:
            held.pop(key, None)
            continue
        per = per_device.get(tpp)
        if per is None:
            per = per_device[tpp] = Fraction(tpp)
        line = Line(
            site=site_id,
            count=count,
            tpp_per_device=per,
            eccn_class=eccn_class,
            installed=date.fromisoformat(installed),
            removed=date.fromisoformat(removed) if removed else None,
            model=model,
            licence=licence,
            observed=licence is not None,  # by a shipped serial (see `fold.licence_of`)
        )
        lines[key] = held[key] = line
    history: tuple[tuple[int, int, frozenset[str]], ...] = ()
    if not full:
        assert base is not None
        patch = (base.version, version, frozenset(touched))
        history = (*base.history[-(_HISTORY - 1) :], patch)
    return LineSet(version, lines, by_site, history), len(rows)
