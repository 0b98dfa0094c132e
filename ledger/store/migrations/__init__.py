"""Alembic migrations for the ledger (installed as ``ledger.migrations``)."""
