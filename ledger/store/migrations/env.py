"""Alembic environment: run on the connection ``ledger.store`` hands over.

``cerebras-ledger db upgrade`` (and first use of a new ledger) passes its connection in
``config.attributes["connection"]``; there is no ``alembic.ini``. SQLite runs in batch mode so
that ALTERs work, and the schema's naming convention names every constraint.
"""

from __future__ import annotations

from alembic import context

from ledger.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `cerebras-ledger db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
