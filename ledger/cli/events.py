"""The ``events`` group: export a period's events and back-fill events from a file (CSV or
JSON Lines, :mod:`ledger.exports.eventfiles`).
"""

from __future__ import annotations

import io
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from ledger.cli.common import UserError, open_engine, open_ledger, parse_when

__all__ = ["events"]


@click.group()
def events() -> None:
    """Export and import events (CSV or JSON Lines).

    \b
    Example:
      cerebras-ledger events export --since 2026-11-01 --until 2026-12-01 --format jsonl --out nov.jsonl
    """


@events.command("export")
@click.option("--since", required=True, metavar="DATE", help="Start (inclusive), date or ISO timestamp.")
@click.option("--until", required=True, metavar="DATE", help="End (exclusive).")
@click.option("--project", default=None)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write here instead of stdout (written whole or not at all).",
)
@click.pass_context
def events_export(
    ctx: click.Context, since: str, until: str, project: str | None, fmt: str, out: Path | None
) -> None:
    """Stream events of a period, oldest first.

    \b
    Example:
      cerebras-ledger events export --since 2026-11-01 --until 2026-12-01 --project search --format csv
    """
    from ledger.exports.eventfiles import write_rows

    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if end <= start:
        raise UserError("--until must be after --since")
    with open_ledger(ctx) as led:
        rows = led.events(start, end, project)
        if out is None:
            write_rows(rows, sys.stdout, fmt)
            return
        from ledger.outfile import OutFile

        with OutFile(out) as target:  # whole or not at all; never over a device or a symlink
            text = io.TextIOWrapper(target.file, encoding="utf-8", newline="")
            n = write_rows(rows, text, fmt)
            text.flush()
            text.detach()
    click.echo(f"wrote {n} event(s) to {out}", err=True)


@events.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file name, else its first byte.",
)
@click.pass_context
def events_import(ctx: click.Context, file: Path, fmt: str | None) -> None:
    """Back-fill events from FILE (the export's columns). All rows or none; idempotent by event_id.

    \b
    Example:
      cerebras-ledger events import usage-from-elsewhere.csv
    """
    from ledger.exports.eventimport import import_file

    with open_engine(ctx) as engine, ExitStack() as stack:
        bars: list[Any] = []

        def tick(n: int) -> None:
            # The bar opens on the first write, after every row was checked: a bad file
            # prints its one error line and nothing else.
            if not bars:
                bars.append(
                    stack.enter_context(
                        click.progressbar(length=0, label="importing", file=sys.stderr, show_pos=True)
                    )
                )
            bars[0].update(n)

        result = import_file(engine, file, fmt, tick)
    click.echo(
        f"{result.rows} row(s) read; {result.inserted} new, {result.rows - result.inserted} already present"
    )
