"""Engine: connections to the ledger database and its schema's readiness (SQLAlchemy 2, SQLite
or PostgreSQL).

* :func:`make_engine` normalizes the URL (``postgresql://`` means psycopg 3), makes the SQLite
  file owner-only, and sets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writes;
  :func:`write_transaction`, :func:`read_snapshot` and :func:`db_now` are how the rest of the
  ledger writes, reads and tells the time.
* :func:`ensure_schema` brings a database to :data:`~ledger.store.schema.SCHEMA_REVISION`. An empty or
  older database is migrated with Alembic under a lock (a file lock for SQLite, an advisory
  lock for PostgreSQL) so several processes may open a new ledger at once; a database from
  newer code is refused. Alembic is imported only when a migration is due.
* :func:`dialect_insert`, :func:`insert_or_skip` and :func:`transaction_lock` are the one home of
  the dialect differences every writer needs.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, literal, select, text
from sqlalchemy.engine import make_url

from ledger.config import ConfigError, private_dir, redact_url, remember_secrets
from ledger.store.schema import SCHEMA_REVISION

__all__ = [
    "SchemaError",
    "alembic_config",
    "current_revision",
    "db_now",
    "dialect_insert",
    "downgrade",
    "ensure_schema",
    "insert_or_skip",
    "make_engine",
    "migrations_dir",
    "read_snapshot",
    "sqlite_path",
    "transaction_lock",
    "upgrade",
    "write_transaction",
]

SUPPORTED = ("sqlite", "postgresql")
_MIGRATION_LOCK_KEY = 0x6365_7265_6272_6173  # "cerebras" as a PostgreSQL advisory lock key


class SchemaError(RuntimeError):
    """The database's schema is not one this code can write."""


def normalize_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several kinds for a bad URL
        raise ConfigError(f"not a database URL: {redact_url(url)!r}") from None
    if parsed.get_backend_name() not in SUPPORTED:
        raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or ``None`` (PostgreSQL or in-memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the owner only, if it does not exist."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _wal_once(path: Path) -> None:
    """Put a SQLite file in WAL mode (it stays so), under the ledger's file lock: switching
    modes does not wait out the busy timeout, so connections racing to do it would fail."""
    lock = os.open(path.with_name(path.name + ".migrate-lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = sqlite3.connect(path, timeout=30)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    finally:
        os.close(lock)


def make_engine(url: str) -> Engine:
    remember_secrets(url)  # hidden in every message the ledger logs (config.redact)
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None:
        _private_file(path)
        _wal_once(path)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_setup(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook issue BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("ledger_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url)
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction (``BEGIN IMMEDIATE`` on SQLite, so writers queue instead of failing)."""
    with engine.connect() as conn:
        conn = conn.execution_options(ledger_write=True)
        with conn.begin():
            yield conn


def db_now(conn: Connection) -> datetime:
    """The database server's clock, aware UTC: what leases are taken and compared on, so hosts
    with skewed clocks agree (``clock_timestamp()`` on PostgreSQL, the real time even inside a
    long transaction; ``strftime('%Y-%m-%d %H:%M:%f', 'now')`` on SQLite, whose clock is the
    clock of the machine holding the file)."""
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(UTC)
    raw = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
    return datetime.fromisoformat(str(raw)).replace(tzinfo=UTC)


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction in which every statement sees the same snapshot: a report's
    totals, tags and previous period add up even while the writer commits. SQLite: the
    ``BEGIN`` the begin hook issues holds one WAL snapshot from the first read. PostgreSQL:
    ``REPEATABLE READ`` (its default, READ COMMITTED, takes a snapshot per statement)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def migrations_dir() -> str:
    import importlib

    module = importlib.import_module("ledger.store.migrations")
    return str(Path(str(module.__file__)).parent)


def alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config(stdout=sys.stdout)  # not the stream that was sys.stdout when alembic was imported
    cfg.set_main_option("script_location", migrations_dir())
    cfg.attributes["connection"] = conn
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


# Alembic's ``context`` and ``op`` are module-level proxies: two migrations running at once in
# one process (two ledgers whose writer threads start together) would configure each other's
# environment. One migration per process at a time; the locks below serialise processes.
_ALEMBIC_IN_PROCESS = threading.Lock()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    with _ALEMBIC_IN_PROCESS, _database_migration_lock(engine):
        yield


@contextmanager
def _database_migration_lock(engine: Engine) -> Iterator[None]:
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None:
        lock_path = path.with_name(path.name + ".migrate-lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    else:
        yield


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (Alembic, batch mode on SQLite); at the head, make
    sure the built-in price points are there."""
    from alembic import command

    from ledger.store.prices import seed_builtin_prices

    with _migration_lock(engine), engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    if current_revision(engine) == SCHEMA_REVISION:
        seed_builtin_prices(engine)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migration_lock(engine), engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def ensure_schema(engine: Engine) -> None:
    """Make the database ready for this code's writes, migrating it if it is new or older."""
    from ledger.store.prices import seed_builtin_prices

    rev = current_revision(engine)
    if rev == SCHEMA_REVISION:
        seed_builtin_prices(engine)  # a newer package may bring new built-in points
        return
    known = _known_revisions()
    if rev is not None and rev not in known:
        raise SchemaError(f"database schema {rev!r} is newer than this cerebras-ledger; upgrade the package")
    upgrade(engine)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(migrations_dir())
    return {s.revision for s in script.walk_revisions()}


def dialect_insert(conn: Connection, table: Any) -> Any:
    """An ``INSERT`` for ``table`` in the connection's dialect, so the caller can add
    ``on_conflict_do_nothing()`` or ``on_conflict_do_update(...)`` (both dialects spell them alike)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def insert_or_skip(conn: Connection, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for ``table``: a row whose key exists is skipped."""
    return dialect_insert(conn, table).on_conflict_do_nothing()


def transaction_lock(conn: Connection, key: int) -> None:
    """Serialise one kind of write (rollup, billing, re-pricing) across processes for the rest of
    the transaction. PostgreSQL: a transaction-level advisory lock on ``key`` (released at commit
    or rollback). SQLite: nothing to do, since :func:`write_transaction`'s ``BEGIN IMMEDIATE``
    already holds the database's one write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(literal(key))))
