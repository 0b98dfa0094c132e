"""The ``cerebras-ledger`` command line: a thin click layer over library calls.

Every command has ``--help`` with an example. Output is for people by default; listings take
``--format csv|json``. Bad input (arguments, config, price or import files, an unreachable
database) ends with one ``error: …`` line on stderr and a non-zero exit (2 for usage
mistakes, 1 for everything else), never a traceback. Commands that open the ledger first write
what dead processes left in its spool.

This module owns the root group (its global options), the commands' registration (each group
lives in its own ``ledger.cli`` module) and :func:`main`, which turns every failure into one
line and an exit code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from ledger.cli.billing import export_group
from ledger.cli.budgets import alerts_group, budget_group
from ledger.cli.calls import chat, demo
from ledger.cli.db import db
from ledger.cli.events import events
from ledger.cli.prices import prices
from ledger.cli.reporting import report_cmd, rollup_cmd, summary, verify_cmd
from ledger.cli.scheduler import scheduler_cmd
from ledger.cli.service import serve_cmd, tokens_group
from ledger.config import (
    ConfigError,
    database_url,
    describe,
    first_line,
    log_to_stderr,
    redact,
    remember_secrets,
)

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--database-url",
    "db_url",
    envvar="LEDGER_DATABASE_URL",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL of the ledger (default: the embedded SQLite file).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the ledger does.")
@click.version_option(package_name="cerebras-ledger")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, verbose: bool) -> None:
    """Cost accounting for the Cerebras Inference API (direct or through Lava).

    \b
    Example:
      cerebras-ledger demo
      cerebras-ledger events export --since 2026-11-01 --until 2026-12-01 --format csv
    """
    log_to_stderr(logging.INFO if verbose else logging.WARNING)
    ctx.obj = {"url": database_url(db_url)}
    remember_secrets(ctx.obj["url"])  # hidden in every message, whatever quotes them


for command in (
    demo,
    chat,
    db,
    prices,
    events,
    summary,
    verify_cmd,
    rollup_cmd,
    report_cmd,
    export_group,
    budget_group,
    alerts_group,
    scheduler_cmd,
    serve_cmd,
    tokens_group,
):
    cli.add_command(command)


def _error(line: str) -> None:
    """Print one ``error:`` line, every credential hidden (a driver's message may quote the URL)."""
    click.echo(f"error: {redact(line)}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    from ledger.money import MoneyError

    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None, prog_name="cerebras-ledger", standalone_mode=False
        )
        if isinstance(rv, int):
            return rv
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        _error(f"{exc.format_message()}")
        return 2
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        _error(f"{exc.format_message()}")
        return 1
    except (ConfigError, MoneyError, ValueError, OSError) as exc:
        _error(first_line(exc, None) or type(exc).__name__)
        return 1
    except Exception as exc:  # noqa: BLE001 - a database or library failure: still one line
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            orig = getattr(exc, "orig", None) or exc
            _error(f"database problem: {first_line(orig, 300)}")
            return 1
        _error(describe(exc, 300))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
