"""What every ``cerebras-ledger`` command shares: the output formats and their table/CSV/JSON
rendering, the one-line :class:`UserError`, parsing of dates and option values, and opening the
chosen ledger (or its engine) for a command.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click

from ledger.calendar import CalendarError, iso_z, parse_instant
from ledger.config import ConfigError, first_line
from ledger.outfile import csv_cell

__all__ = [
    "FORMATS",
    "UserError",
    "cli_value",
    "format_option",
    "iso_z_or_none",
    "open_engine",
    "open_ledger",
    "parse_when",
    "rows_out",
]

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "csv", "json")


class UserError(click.ClickException):
    """A one-line problem with what the user asked for."""


def parse_when(value: str, name: str) -> datetime:
    """A date (``2026-11-01``, midnight UTC) or an ISO timestamp with zone, as aware UTC
    (:func:`ledger.calendar.parse_instant`), or a one-line :class:`UserError`."""
    try:
        return parse_instant(value, name)
    except CalendarError as exc:
        raise UserError(str(exc)) from None


def rows_out(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, ensure_ascii=False, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([csv_cell(r[c]) for c in columns])
    else:
        cells = [[str(c) for c in columns]] + [[csv_cell(r[c]) for c in columns] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for n, row in enumerate(cells):
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                click.echo("  ".join("-" * w for w in widths))


def format_option(choices: Sequence[str] = FORMATS, default: str = "table") -> Callable[[F], F]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help="Output for people (table) or machines.",
    )


@contextmanager
def open_ledger(ctx: click.Context) -> Iterator[Any]:
    """The chosen :class:`ledger.Ledger`, opened now: schema ready, dead processes' spools
    written first (an unusable database is one ``error:`` line)."""
    from ledger.api import Ledger

    led = Ledger(ctx.obj["url"])
    try:
        led.engine  # noqa: B018 - opens it
        yield led
    finally:
        led.close()


@contextmanager
def open_engine(ctx: click.Context) -> Iterator[Any]:
    """The opened ledger's engine (see :func:`open_ledger`)."""
    with open_ledger(ctx) as led:
        yield led.engine


def cli_value(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback turning the library's one-line ConfigError into a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(first_line(exc, None)) from None

    return callback


def iso_z_or_none(when: datetime | None) -> str | None:
    return iso_z(when) if when else None
