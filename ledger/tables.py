"""The ledger's tables. The log (`log_entry`, with `tree_node`, `checkpoint` and `log_state`) is the
system of record; `node`, `device`, `inventory_line` and `registry` are projections of it.

Dates are ISO 8601 strings (`2026-01-05`), instants ISO 8601 UTC strings, so that both databases
sort and compare them the same way and the log hashes exactly what is stored. TPP is an
integer per device (the catalogue's figure).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlmodel import Field, SQLModel

# A 64-bit autoincrement key that is SQLite's rowid (SQLite autoincrements only INTEGER keys).
_ID = BigInteger().with_variant(Integer(), "sqlite")


class LedgerState(SQLModel, table=True):
    """One row (id 1): the version counters every process reads to validate its caches.

    Only writes that change what headroom is computed from (a changed inventory, a registry
    change, a decommission) bump `projection_version`, as their last statement before commit;
    heartbeats never touch this row. Token revocation bumps `auth_version`.
    """

    __tablename__ = "ledger_state"
    id: int = Field(default=1, primary_key=True)
    projection_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    auth_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    token_key: str  # hex HMAC key for tokens, generated at migration


class LogEntry(SQLModel, table=True):
    """One entry of the transparency log: `leaf` is the exact canonical JSON that is hashed.

    `id` is the arrival order (the database's own sequence, so appends take no ledger-wide
    lock); `idx` is the leaf index, assigned gap-free by the integrator (None until then).
    """

    __tablename__ = "log_entry"
    # The integrator's "what is pending" in order, without scanning or sorting the whole log.
    __table_args__ = (
        Index(
            "ix_log_entry_pending",
            "id",
            sqlite_where=text("idx IS NULL"),
            postgresql_where=text("idx IS NULL"),
        ),
    )
    id: int = Field(sa_column=Column(_ID, primary_key=True, autoincrement=True))
    idx: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True, unique=True))
    kind: str
    recorded_at: str
    leaf: str = Field(sa_column=Column(Text, nullable=False))


class TreeNode(SQLModel, table=True):
    """The hash of one perfect subtree: level L, index i covers leaves [i * 2^L, (i+1) * 2^L)."""

    __tablename__ = "tree_node"
    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Checkpoint(SQLModel, table=True):
    """A signed checkpoint kept for history (at most one per `checkpoint_keep_s`, and the
    first after migration); the newest one is always in `log_state.note`."""

    __tablename__ = "checkpoint"
    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    signed_at: str


class LogState(SQLModel, table=True):
    """One row (id 1): the integrated tree (size, root, newest signed note) and the log's key.

    The integrator locks this row, so integration is serialised across processes; nothing else
    writes it. `key_pem` is the Ed25519 signing key generated at migration (unused when
    GPUCAP_LOG_KEY_FILE names one); `ledger_id` names the log's default origin.
    """

    __tablename__ = "log_state"
    id: int = Field(default=1, primary_key=True)
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(default="", sa_column=Column(Text, nullable=False))
    signed_at: str = ""
    ledger_id: str
    key_pem: str = Field(sa_column=Column(Text, nullable=False))


class Node(SQLModel, table=True):
    """A reporting node: the last accepted `seq` is the compare-and-set point for idempotency."""

    __tablename__ = "node"
    node_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    first_seen: str
    last_seen: str
    devices_digest: str  # sha256 of the sorted device facts of the last report
    presence_day: str = ""  # UTC day of the node's last logged report or presence entry
    decommissioned_on: str | None = None
    agent_version: str = ""


class Device(SQLModel, table=True):
    """A device as observed on one node. `tpp`/`eccn_class` come from the ledger's catalogue."""

    __tablename__ = "device"
    node_id: str = Field(primary_key=True)
    uuid: str = Field(primary_key=True, index=True)
    site_id: str = Field(index=True)
    model: str | None = None
    pci_device_id: str
    name: str
    tpp: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    eccn_class: str | None = None
    agent_tpp: float | None = None
    tpp_mismatch: bool = False
    state: str
    first_seen: str  # date
    gone_on: str | None = None  # date the node stopped reporting it, or decommission date
    vanished: bool = False  # gone without a decommission
    serial: str | None = Field(default=None, index=True)  # as reported (shipments match it)
    licence: str | None = None  # the licence whose shipment to this site lists the serial


class InventoryLine(SQLModel, table=True):
    """Observed devices aggregated per (site, model, tpp, class, first seen, gone, licence):
    engine lines (`licence`: the shipment's, by serial; None for none).

    `version` is the projection version that last wrote the row, so that a reader holding the
    rows of version V reads only `version > V`. A line whose count reaches 0 stays, with count 0
    (a tombstone that readers skip), so that such a read also sees what went away.
    """

    __tablename__ = "inventory_line"
    key: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    model: str | None = None
    tpp: int = Field(sa_column=Column(BigInteger, nullable=False))
    eccn_class: str
    installed: str
    removed: str | None = None
    licence: str | None = None
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, index=True))


class Registry(SQLModel, table=True):
    """The current registry document (one row, id 1), as canonical JSON."""

    __tablename__ = "registry"
    id: int = Field(default=1, primary_key=True)
    digest: str
    doc: str = Field(sa_column=Column(Text, nullable=False))
    origin: str
    loaded_at: str


class Token(SQLModel, table=True):
    """An issued token: its id, subject and a hash of it, never the token itself."""

    __tablename__ = "token"
    id: str = Field(primary_key=True)
    kind: str  # node | operator
    node_id: str | None = None
    site_id: str | None = None
    operator: str | None = None
    entity: str | None = None
    token_sha256: str
    created_at: str
    revoked_at: str | None = None
    expires_at: str | None = None  # an `iso_instant`; None: never expires
    label: str | None = None  # the issuer's free text (at most 128 characters)


def table(name: str) -> Table:
    """The SQLAlchemy Core table behind a model, for the hot paths that use Core statements."""
    return SQLModel.metadata.tables[name]
