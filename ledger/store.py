"""Database access: engines, migrations on start, and the one way to write.

Every write runs in `Store.write()`. SQLite opens it with BEGIN IMMEDIATE (one writer per file,
queued in this process and across processes, see `_SqliteWriterQueue`; WAL lets readers on).
PostgreSQL takes no ledger-wide lock: a heartbeat is a compare-and-set on its own `node` row, a
changed report locks its node row, and only what must be ordered takes a shared row, last, just
before commit: `bump_projection` (the `ledger_state` row, so that projection versions commit in
order; see `ingest.Txn`) and the log's integrator (the `log_state` row). Appending to the log is
an INSERT keyed by the database's own sequence. Hot statements run on the driver's cursor
(`HotSql`) but raise SQLAlchemy's errors, like every other statement.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gpucap.ledger.errors import UnavailableError
from gpucap.ledger.settings import Settings

_MIGRATION_LOCK = 0x67707563  # PostgreSQL advisory lock id held while migrating ("gpuc")


@dataclass(frozen=True)
class State:
    """The `ledger_state` row as read (no lock)."""

    projection_version: int
    auth_version: int
    token_key: str


class Store:
    """The database of one ledger: a write engine and a read engine (the same for PostgreSQL)."""

    def __init__(self, url: str, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._writer = _SqliteWriterQueue(url) if self.is_sqlite else None
        try:
            if self.is_sqlite:
                self.engine = _sqlite_engine(url, sqlite_synchronous, immediate=True)
                self.read_engine = _sqlite_engine(url, sqlite_synchronous, immediate=False)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=8)
                self.read_engine = self.engine
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise UnavailableError("db", f"cannot use database URL {url!r}: {exc}") from exc

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """Connect and (by default) bring the schema to the newest migration."""
        store = cls(settings.db_url, settings.sqlite_synchronous)
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    @classmethod
    def open_existing(cls, settings: Settings) -> Store:
        """Connect to a database that `gpucap ledger migrate` (or `serve`) has set up, for the
        admin commands: never creates a SQLite file, never migrates. UnavailableError (exit 3)
        naming the command to run when the schema is missing or not the shipped one."""
        url = sa.engine.make_url(settings.db_url)
        hint = f"run gpucap ledger migrate --db {url.render_as_string(hide_password=True)}"
        missing = UnavailableError("", f"database not initialised: {hint}")
        database = url.database
        file_backed = url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
        if file_backed and not os.path.exists(str(database)):  # connecting would create it
            raise missing
        store = cls(settings.db_url, settings.sqlite_synchronous)
        try:
            current = store.revision()
            if current is None:
                raise missing
            head = head_revision()
            if current != head:
                raise UnavailableError(
                    "", f"database schema is at revision {current}, not {head}: {hint}"
                )
        except BaseException:
            store.close()
            raise
        return store

    def revision(self) -> str | None:
        """The schema's Alembic revision, or None when the database has no ledger schema."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])

    def migrate(self) -> str:
        """Run the shipped Alembic migrations up to head; returns the head revision."""
        from alembic import command

        config = _alembic_config()
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    lock = sa.text("SELECT pg_advisory_xact_lock(:k)")
                    conn.execute(lock, {"k": _MIGRATION_LOCK})
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except sa.exc.OperationalError as exc:
            raise UnavailableError("db", f"cannot migrate {self.safe_url}: {exc.orig}") from exc
        return head_revision()

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (on SQLite, this process's turn at the file's one writer)."""
        try:
            with self._queued(), self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise UnavailableError("db", f"database error: {exc.orig}") from exc

    @contextmanager
    def _queued(self) -> Iterator[None]:
        if self._writer is None:
            yield
            return
        with self._writer:
            yield

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot on both databases)."""
        try:
            with self.read_engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise UnavailableError("db", f"database error: {exc.orig}") from exc

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction whose statements all see one snapshot: SQLite's read transaction,
        PostgreSQL at REPEATABLE READ (its default, READ COMMITTED, sees each statement anew)."""
        if self.is_sqlite:
            with self.read() as conn:
                yield conn
            return
        try:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            raise UnavailableError("db", f"database error: {exc.orig}") from exc

    def state(self) -> State:
        """The current state row, read without any lock."""
        with self.read() as conn:
            return State(*_SELECT_STATE.one(conn))


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("gpucap.ledger").joinpath("migrations"))
    )
    return config


def head_revision() -> str:
    """The newest migration this version ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""


class HotSql:
    """A hot-path statement run on the driver's own cursor, inside the caller's transaction.

    SQLAlchemy's per-execute bookkeeping (execution context, events, result metadata) costs
    several times what SQLite spends running a one-row statement, so the ingest path skips it.
    Written once with `:name` parameters; PostgreSQL drivers get the `%(name)s` form.
    """

    def __init__(self, sql: str) -> None:
        self.named = sql
        self.pyformat = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)

    def one(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row as a plain tuple, or None."""
        cur = self._execute(conn, params)
        try:
            return cur.fetchone()
        finally:
            cur.close()

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row as plain tuples."""
        cur = self._execute(conn, params)
        try:
            return list(cur.fetchall())
        finally:
            cur.close()

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute a write once per parameter set (the driver's executemany)."""
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cur = dbapi.cursor()
        try:
            cur.executemany(self._sql(conn), rows)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, self._sql(conn), exc) from exc
        finally:
            cur.close()

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> int:
        """Execute a write; the number of rows it changed."""
        cur = self._execute(conn, params)
        try:
            return int(cur.rowcount)
        finally:
            cur.close()

    def _execute(self, conn: Connection, params: Mapping[str, Any] | None) -> Any:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None  # a Connection inside begin() always holds one
        cur = dbapi.cursor()
        try:
            cur.execute(self._sql(conn), params or {})
        except conn.dialect.loaded_dbapi.Error as exc:
            cur.close()
            raise _wrapped(conn, self._sql(conn), exc) from exc
        return cur

    def _sql(self, conn: Connection) -> str:
        return self.named if conn.dialect.name == "sqlite" else self.pyformat


def _wrapped(conn: Connection, sql: str, exc: Exception) -> Exception:
    """A driver error as the SQLAlchemy error the same statement run through SQLAlchemy would
    raise (OperationalError, DataError, IntegrityError, ...), so that callers handle one kind."""
    dbapi = conn.dialect.loaded_dbapi
    return sa.exc.DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=conn.dialect)


class _SqliteWriterQueue:
    """Makes SQLite writers wait their turn in a queue instead of in SQLite's busy handler.

    BEGIN IMMEDIATE is what serialises writers; this only schedules them. SQLite's busy handler
    polls with sleeps growing to 100 ms, so under load a waiting writer keeps losing the lock to
    newer ones (seconds of tail latency). A thread lock queues this process's writers and an
    exclusive `flock` on `<database>-writer.lock` queues the processes (the kernel wakes the next
    waiter at once). Without a lock file (in-memory database, read-only directory) writers fall
    back to the busy handler alone.
    """

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        database = sa.engine.make_url(url).database
        self._path = f"{database}-writer.lock" if database and database != ":memory:" else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            fd = self._file()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _file(self) -> int | None:
        if self._fd is None and self._path is not None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._path = None
        return self._fd


def projection_version(conn: Connection) -> int:
    """The projection version this transaction sees (no lock)."""
    return int(_SELECT_VERSION.one(conn)[0])


def bump_projection(conn: Connection) -> int:
    """Advance `projection_version` and return the new one. The row stays locked until commit
    (PostgreSQL), so versions commit in the order they were taken: call it last, just before
    the rows that carry the version, so that the lock is held as briefly as possible."""
    return int(_BUMP_VERSION.one(conn)[0])


def bump_auth(conn: Connection) -> None:
    """Tell every process to re-read the revoked tokens."""
    _BUMP_AUTH.run(conn)


# Prebuilt statements of the hot paths.
_SELECT_STATE = HotSql(
    "SELECT projection_version, auth_version, token_key FROM ledger_state WHERE id = 1"
)
_SELECT_VERSION = HotSql("SELECT projection_version FROM ledger_state WHERE id = 1")
_BUMP_VERSION = HotSql(
    "UPDATE ledger_state SET projection_version = projection_version + 1 WHERE id = 1 "
    "RETURNING projection_version"
)
_BUMP_AUTH = HotSql("UPDATE ledger_state SET auth_version = auth_version + 1 WHERE id = 1")


def _sqlite_engine(url: str, synchronous: str, *, immediate: bool) -> Engine:
    engine = sa.create_engine(
        url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
