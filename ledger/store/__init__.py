"""Store: the SQL side of the ledger (SQLAlchemy 2, SQLite or PostgreSQL).

This stage owns the database: engines and transactions (:mod:`ledger.store.engine`), the schema
(:mod:`ledger.store.schema`) and its Alembic migrations (``migrations/``), idempotent ingest of
events (:mod:`ledger.store.ingest`, ending in the driver-level fast path of
:mod:`ledger.store.fastpath`), the price rows and price-book upkeep (:mod:`ledger.store.prices`),
re-pricing with corrections (:mod:`ledger.store.reprice`), rollups (:mod:`ledger.store.rollup`)
and integrity checks (:mod:`ledger.store.verify`). It is never imported on the call path: the
spool writer thread and the CLI import it.

It must not import pandas, nor Alembic except lazily inside the migration functions (a call on
a migrated ledger loads neither), nor any later stage (budgets, reports, exports, scheduler,
cli). This package re-exports the interface other stages use as ``store.name``.
"""

from __future__ import annotations

from ledger.store.engine import (
    SchemaError,
    alembic_config,
    current_revision,
    db_now,
    dialect_insert,
    downgrade,
    ensure_schema,
    insert_or_skip,
    make_engine,
    migrations_dir,
    read_snapshot,
    sqlite_path,
    transaction_lock,
    upgrade,
    write_transaction,
)
from ledger.store.fastpath import EVENT_COLUMNS
from ledger.store.ingest import clip, event_row, insert_events, insert_spooled
from ledger.store.prices import insert_prices, load_price_book, seed_builtin_prices

__all__ = [
    "EVENT_COLUMNS",
    "SchemaError",
    "alembic_config",
    "clip",
    "current_revision",
    "db_now",
    "dialect_insert",
    "downgrade",
    "ensure_schema",
    "event_row",
    "insert_events",
    "insert_or_skip",
    "insert_prices",
    "insert_spooled",
    "load_price_book",
    "make_engine",
    "migrations_dir",
    "read_snapshot",
    "seed_builtin_prices",
    "sqlite_path",
    "transaction_lock",
    "upgrade",
    "write_transaction",
]
