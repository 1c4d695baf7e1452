"""Devices keep their serial (indexed) and the licence whose shipment to their site lists it;
inventory lines gain that licence (a line without one keeps its key).

The serials come from the log: each device takes the serial of the last report entry that
describes it, as a replay does. A device whose serial the current registry's shipments list
for its site then takes that licence, and its line moves to the licensed one, stamped with a
new projection version, so that the projections equal what `gpucap ledger rebuild` makes.
One pass over the log's report entries.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PAGE = 2000


def _report_leaves(conn: Any) -> Any:
    """The report entries' leaves in replay order: integrated by index, then pending by id."""
    after = -1
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT idx, leaf FROM log_entry WHERE idx > :after AND kind = 'report' "
                "ORDER BY idx LIMIT :n"
            ),
            {"after": after, "n": _PAGE},
        ).all()
        for row in rows:
            yield row[1]
        if len(rows) < _PAGE:
            break
        after = rows[-1][0]
    pending = conn.execute(
        sa.text("SELECT leaf FROM log_entry WHERE idx IS NULL AND kind = 'report' ORDER BY id")
    ).all()
    for row in pending:
        yield row[0]


def _serials(conn: Any) -> dict[tuple[str, str], str]:
    """(node, uuid) -> the serial of the last report entry describing the device."""
    out: dict[tuple[str, str], str] = {}
    for leaf in _report_leaves(conn):
        body = json.loads(leaf)["body"]
        for device in body.get("devices") or ():
            serial = device.get("serial")
            if serial is not None:
                out[(body["node_id"], device["uuid"])] = serial
            else:
                out.pop((body["node_id"], device["uuid"]), None)
    return out


def _shipped(conn: Any) -> dict[str, tuple[str, str]]:
    row = conn.execute(sa.text("SELECT doc FROM registry")).first()
    out: dict[str, tuple[str, str]] = {}
    if row is None:
        return out
    for item in json.loads(row[0]).get("shipments") or ():
        for serial in item["serials"]:
            out[serial] = (item["licence"], item["site"])
    return out


def _key(site: str, model: str, tpp: int, cls: str, installed: str, removed: str) -> str:
    return "|".join((site, model, str(tpp), cls, installed, removed))


def _backfill(conn: Any) -> None:
    serials = _serials(conn)
    shipped = _shipped(conn)
    if not serials:
        return
    conn.execute(
        sa.text("UPDATE device SET serial = :serial WHERE node_id = :node AND uuid = :uuid"),
        [{"node": n, "uuid": u, "serial": s} for (n, u), s in serials.items()],
    )
    if not shipped:
        return
    licensed: list[dict[str, str]] = []
    moves: Counter[tuple[Any, ...]] = Counter()
    rows = conn.execute(
        sa.text(
            "SELECT node_id, uuid, site_id, model, tpp, eccn_class, first_seen, gone_on, serial "
            "FROM device WHERE serial IS NOT NULL"
        )
    ).all()
    for node, uuid, site, model, tpp, cls, first_seen, gone_on, serial in rows:
        found = shipped.get(serial)
        if found is None or found[1] != site:
            continue
        licensed.append({"node": node, "uuid": uuid, "licence": found[0]})
        if model is not None and tpp is not None and cls is not None:
            moves[(site, model, int(tpp), cls, first_seen, gone_on or "", found[0])] += 1
    if licensed:
        conn.execute(
            sa.text("UPDATE device SET licence = :licence WHERE node_id = :node AND uuid = :uuid"),
            licensed,
        )
    if not moves:
        return
    version = conn.execute(
        sa.text(
            "UPDATE ledger_state SET projection_version = projection_version + 1 WHERE id = 1 "
            "RETURNING projection_version"
        )
    ).scalar_one()
    for (site, model, tpp, cls, installed, removed, licence), n in sorted(moves.items()):
        old = _key(site, model, tpp, cls, installed, removed)
        conn.execute(
            sa.text("UPDATE inventory_line SET count = count - :n, version = :v WHERE key = :k"),
            {"n": n, "v": version, "k": old},
        )
        conn.execute(
            sa.text(
                "INSERT INTO inventory_line (key, site_id, model, tpp, eccn_class, installed, "
                "removed, licence, count, version) VALUES (:k, :site, :model, :tpp, :cls, "
                ":installed, :removed, :licence, :n, :v)"
            ),
            {
                "k": f"{old}|{licence}",
                "site": site,
                "model": model,
                "tpp": tpp,
                "cls": cls,
                "installed": installed,
                "removed": removed or None,
                "licence": licence,
                "n": n,
                "v": version,
            },
        )


def upgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("serial", sa.String(), nullable=True))
        batch.add_column(sa.Column("licence", sa.String(), nullable=True))
    op.create_index("ix_device_serial", "device", ["serial"])
    with op.batch_alter_table("inventory_line") as batch:
        batch.add_column(sa.Column("licence", sa.String(), nullable=True))
    _backfill(op.get_bind())


def downgrade() -> None:
    # Licensed lines fold back into the unlicensed line of the same key prefix.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT key, site_id, model, tpp, eccn_class, installed, removed, licence, count, "
            "version FROM inventory_line WHERE licence IS NOT NULL"
        )
    ).all()
    for key, site, model, tpp, cls, installed, removed, licence, count, version in rows:
        conn.execute(
            sa.text(
                "INSERT INTO inventory_line (key, site_id, model, tpp, eccn_class, installed, "
                "removed, count, version) VALUES (:k, :site, :model, :tpp, :cls, :installed, "
                ":removed, :n, :v) ON CONFLICT (key) DO UPDATE SET "
                "count = inventory_line.count + excluded.count"
            ),
            {
                "k": key[: -(len(licence) + 1)],
                "site": site,
                "model": model,
                "tpp": tpp,
                "cls": cls,
                "installed": installed,
                "removed": removed,
                "n": count,
                "v": version,
            },
        )
        conn.execute(sa.text("DELETE FROM inventory_line WHERE key = :k"), {"k": key})
    with op.batch_alter_table("inventory_line") as batch:
        batch.drop_column("licence")
    op.drop_index("ix_device_serial", table_name="device")
    with op.batch_alter_table("device") as batch:
        batch.drop_column("licence")
        batch.drop_column("serial")
