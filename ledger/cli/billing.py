"""The ``export`` group: ``export billing`` issues a month's FOCUS 1.2 billing file (or every
month due), via :mod:`ledger.exports.focus`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ledger.cli.common import open_ledger

__all__ = ["export_group"]


@click.group("export")
def export_group() -> None:
    """Billing exports for FinOps tools (FOCUS 1.2).

    \b
    Example:
      cerebras-ledger export billing --month 2026-11 --out focus-2026-11.csv
    """


def _billing_month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from ledger.exports.billing import parse_month
    from ledger.exports.focus import BillingError

    if value is None:
        return None
    try:
        return parse_month(value)
    except BillingError as exc:
        raise click.BadParameter(str(exc)) from None


@export_group.command("billing")
@click.option(
    "--month", metavar="YYYY-MM", callback=_billing_month, help="The UTC month to bill; it must have ended."
)
@click.option(
    "--due",
    "due_dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Instead of --month: issue every ended month since the first event that was never issued, "
    "or whose file is not in DIR, into DIR/focus-YYYY-MM.<format>, oldest first (the "
    "scheduler's billing job).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here (whole or not at all) instead of stdout; parquet needs it.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default="csv",
    show_default=True,
    help="parquet needs the `parquet` extra (pyarrow).",
)
@click.pass_context
def export_billing_cmd(
    ctx: click.Context, month: str | None, due_dir: Path | None, out: Path | None, fmt: str
) -> None:
    """Issue a month's FOCUS 1.2 billing file: one row per project, model, token type and price.

    The first run closes the month; running it again writes the identical file. Usage that
    arrives after its month was issued is billed once, by the next export, as Correction rows.

    \b
    Example:
      cerebras-ledger export billing --month 2026-11 --out focus-2026-11.csv
      cerebras-ledger export billing --month 2026-11 --format parquet --out focus-2026-11.parquet
      cerebras-ledger export billing --due reports/billing
    """
    from ledger.exports.focusfiles import write_csv

    if (month is None) == (due_dir is None):
        raise click.UsageError("give --month YYYY-MM, or --due DIR (every month not yet issued)")
    if due_dir is not None:
        if out is not None:
            raise click.UsageError("--due writes into its folder; --out goes with --month")
        if due_dir.exists() and not due_dir.is_dir():
            raise click.UsageError(f"--due: {due_dir} is not a folder")
        with open_ledger(ctx) as led:
            done = led.export_billing_due(due_dir, fmt)
        for result in done:
            _billing_said(result, due_dir / f"focus-{result.month}.{fmt}")
        if not done:
            click.echo("nothing due: every ended month is issued and its file is there", err=True)
        return
    assert month is not None
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    with open_ledger(ctx) as led:
        result = led.export_billing(month, out, fmt)
    if out is None:
        write_csv(result.rows, sys.stdout)
    _billing_said(result, out)


def _billing_said(result: Any, out: Path | None) -> None:
    click.echo(
        f"{'reissued' if result.reissued else 'issued'} {result.month}: {len(result.rows)} row(s), "
        f"{result.corrections} correction row(s), billed {result.billed} USD"
        + (f", written to {out}" if out is not None else ""),
        err=True,
    )
    if result.unpriced:
        click.echo(
            f"warning: {result.unpriced} event(s) with usage but no price are not billed; "
            "see `cerebras-ledger prices check`",
            err=True,
        )
