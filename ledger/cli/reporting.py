"""The commands that read the ledger back: ``summary`` (per-project totals), ``verify``
(integrity checks), ``rollup`` (quarter-hour rollups) and ``report`` (a period's spend report).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import click

from ledger.calendar import CalendarError, parse_period, parse_zone, period_bounds
from ledger.cli.common import UserError, format_option, open_ledger, parse_when, rows_out
from ledger.config import ConfigError

__all__ = ["report_cmd", "rollup_cmd", "summary", "verify_cmd"]


@click.command()
@click.option("--since", default=None, metavar="DATE")
@click.option("--until", default=None, metavar="DATE")
@format_option()
@click.pass_context
def summary(ctx: click.Context, since: str | None, until: str | None, fmt: str) -> None:
    """Per-project totals: calls, errors, tokens, paid cost, free usage, unpriced calls.

    \b
    Example:
      cerebras-ledger summary --since 2026-11-01 --format json
    """
    start = parse_when(since, "--since") if since else None
    end = parse_when(until, "--until") if until else None
    with open_ledger(ctx) as led:
        rows = [
            {
                "project": s.project,
                "calls": s.calls,
                "errors": s.errors,
                "incomplete": s.incomplete,
                "tokens": s.tokens,
                "paid_usd": str(s.paid_cost),
                "free_calls": s.free_calls,
                "free_tokens": s.free_tokens,
                "unpriced": s.unpriced,
            }
            for s in led.summary(start, end)
        ]
    rows_out(
        rows,
        fmt,
        [
            "project",
            "calls",
            "errors",
            "incomplete",
            "tokens",
            "paid_usd",
            "free_calls",
            "free_tokens",
            "unpriced",
        ],
    )


@click.command("verify")
@format_option()
@click.pass_context
def verify_cmd(ctx: click.Context, fmt: str) -> None:
    """Check the ledger's integrity; exits 1 and lists the problems if there are any.

    Checks that rollups equal events, unpriced events are flagged, the spool has drained, the
    price book has no ambiguous points, every correction points at a real event, and every
    corrected event adds up to its latest restatement's price (no doubled correction set).

    \b
    Example:
      cerebras-ledger verify --format json
    """
    with open_ledger(ctx) as led:
        found = led.verify()
    if fmt == "table" and not found:
        click.echo("ledger is consistent")
        return
    rows_out([{"check": f.check, "problem": f.problem} for f in found], fmt, ["check", "problem"])
    if found:
        ctx.exit(1)


@click.command("rollup")
@click.option("--rebuild", is_flag=True, help="Empty the rollups and build them again from every event.")
@format_option()
@click.pass_context
def rollup_cmd(ctx: click.Context, rebuild: bool, fmt: str) -> None:
    """Add newly arrived events to the quarter-hour rollups (exactly once; safe to run anywhere).

    Incremental: only ingest batches not rolled up yet are read. Two runs at once serialize.

    \b
    Example:
      cerebras-ledger rollup
      cerebras-ledger rollup --rebuild
    """
    from ledger.store import rollup

    with open_ledger(ctx) as led:
        _, waiting = rollup.pending(led.engine)
        if rebuild:
            with led.engine.connect() as conn:
                from sqlalchemy import func, select

                from ledger.store.schema import EventRow

                waiting = int(conn.execute(select(func.count()).select_from(EventRow)).scalar_one())
        with click.progressbar(length=waiting, label="rolling up", file=sys.stderr) as bar:
            result = led.rollup(rebuild=rebuild, progress=bar.update)
    row = {"batches": result.batches, "events": result.events, "rebuilt": rebuild}
    if fmt == "table":
        click.echo(f"rolled up {result.events} event(s) from {result.batches} batch(es)")
    else:
        rows_out([row], fmt, ["batches", "events", "rebuilt"])


@click.command("report")
@click.option("--project", default=None, help="The project to report on (default: all projects).")
@click.option(
    "--period",
    required=True,
    metavar="PERIOD",
    help="A day (2026-11-27), an ISO week (2026-W48) or a month (2026-11).",
)
@click.option(
    "--tz",
    "tz_name",
    default="UTC",
    show_default=True,
    metavar="ZONE",
    help="IANA time zone whose local midnights bound the period and its days.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json", "html"]),
    default="html",
    show_default=True,
    help="CSV or JSON (every figure), or an HTML dashboard with charts.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE_OR_DIR",
    help="Write here (a file, or a folder for the default name) instead of "
    "$LEDGER_REPORTS_DIR/<project>/ (default ./reports).",
)
@click.pass_context
def report_cmd(
    ctx: click.Context, project: str | None, period: str, tz_name: str, fmt: str, out: Path | None
) -> None:
    """Write a spend report: calls, tokens, paid and free cost by day and model, top tags,
    unpriced usage, free usage at list price, and the change against the previous period.

    Reads the rollups (rolled up first, so the report is current). Prints the file's path.

    \b
    Example:
      cerebras-ledger report --project search --period 2026-11 --tz Europe/Berlin --format html
    """
    from ledger.config import check_project
    from ledger.reports import build as reports
    from ledger.reports import files as report_files

    try:
        spec = parse_period(period)
    except ValueError as exc:
        raise UserError(f"--period: {exc}") from None
    try:
        zone = parse_zone(tz_name)
        period_bounds(spec, zone)
        period_bounds(spec.previous(), zone)
    except ValueError as exc:
        raise UserError(f"--tz: {exc}") from None
    if project is not None:
        try:
            check_project(project)
        except ConfigError as exc:
            raise UserError(f"--project: {exc}") from None
    if out is not None and not out.is_dir() and not str(out).endswith(("/", os.sep)):
        from ledger.outfile import check_target

        check_target(out)  # before any work: never over a device or a symlink
    with open_ledger(ctx) as led, ExitStack() as stack:
        tick: Callable[[int], None] | None = None
        if spec.days > 7:  # a long period: show progress, now that every input is known to be good
            tick = stack.enter_context(
                click.progressbar(
                    length=reports.BUILD_STEPS + 1, label=f"report {spec.label}", file=sys.stderr
                )
            ).update
        try:
            built = led.report(project, period, tz_name, progress=tick)
        except (reports.ReportError, CalendarError) as exc:
            raise UserError(str(exc)) from None
        path = report_files.write_report(built, fmt, out=out)
        if tick is not None:
            tick(1)
    click.echo(str(path))
