"""The ledger's tables. `event` is the system of record; every other table is a projection of it.

Dates are ISO 8601 strings (`2026-01-05`), instants ISO 8601 UTC strings, so that both databases
sort and compare them the same way and the event log hashes exactly what is stored. TPP is an
integer per device (the catalogue's figure).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Table, Text
from sqlmodel import Field, SQLModel


class LedgerState(SQLModel, table=True):
    """One row (id 1): the event-log head and the version counters every process reads.

    Write transactions lock this row first, so that writers (across processes) are serialised and
    the chain has one well-defined previous hash.
    """

    __tablename__ = "ledger_state"
    id: int = Field(default=1, primary_key=True)
    head_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    head_hash: str = Field(default="0" * 64)
    projection_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    auth_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    token_key: str  # hex HMAC key for tokens, generated at migration


class Event(SQLModel, table=True):
    """One appended fact; `hash` = sha256(prev_hash || canonical content)."""

    __tablename__ = "event"
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    recorded_at: str
    kind: str  # report | registry | decommission
    actor: str
    body: str = Field(sa_column=Column(Text, nullable=False))  # canonical JSON
    prev_hash: str
    hash: str


class Node(SQLModel, table=True):
    """A reporting node: the last accepted `seq` is the compare-and-set point for idempotency."""

    __tablename__ = "node"
    node_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    first_seen: str
    last_seen: str
    devices_digest: str  # sha256 of the sorted device facts of the last report
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


class InventoryLine(SQLModel, table=True):
    """Observed devices aggregated per (site, model, tpp, class, first seen, gone): engine lines.

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


def table(name: str) -> Table:
    """The SQLAlchemy Core table behind a model, for the hot paths that use Core statements."""
    return SQLModel.metadata.tables[name]
