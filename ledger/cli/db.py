"""The ``db`` group: create, migrate and inspect the ledger's schema (Alembic, via
:mod:`ledger.store`).
"""

from __future__ import annotations

import click

from ledger.config import redact_url

__all__ = ["db"]


@click.group()
def db() -> None:
    """Create and migrate the ledger's schema (Alembic).

    \b
    Example:
      LEDGER_DATABASE_URL=postgresql://postgres@127.0.0.1/test cerebras-ledger db upgrade
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION.

    \b
    Example:
      cerebras-ledger db upgrade
    """
    from ledger import store

    engine = store.make_engine(ctx.obj["url"])
    try:
        store.upgrade(engine, revision)
        click.echo(f"{redact_url(ctx.obj['url'])} is at revision {store.current_revision(engine)}")
    finally:
        engine.dispose()


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Revert migrations down to REVISION (``base`` removes every table).

    \b
    Example:
      cerebras-ledger db downgrade base
    """
    from ledger import store

    engine = store.make_engine(ctx.obj["url"])
    try:
        store.downgrade(engine, revision)
        click.echo(f"{redact_url(ctx.obj['url'])} is at revision {store.current_revision(engine) or 'base'}")
    finally:
        engine.dispose()


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the schema revision of the ledger.

    \b
    Example:
      cerebras-ledger db current
    """
    from ledger import store

    engine = store.make_engine(ctx.obj["url"])
    try:
        click.echo(store.current_revision(engine) or "base (empty)")
    finally:
        engine.dispose()
