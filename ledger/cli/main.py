"""The ``cerebras-ledger`` command line: a thin click layer over library calls.

Every command has ``--help`` with an example. Output is for people by default; listings take
``--format csv|json``. Bad input (arguments, config, price or import files, an unreachable
database) ends with one ``error: …`` line on stderr and a non-zero exit (2 for usage
mistakes, 1 for everything else), never a traceback. Commands that open the ledger first write
what dead processes left in its spool.
"""

from __future__ import annotations

import csv
import json
import io
import os
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ledger.outfile import csv_cell
from ledger.calendar import CalendarError, iso_z, parse_instant, parse_period, parse_zone, period_bounds
from ledger.config import ConfigError, database_url, describe, first_line, log_to_stderr, redact, redact_url, remember_secrets

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "csv", "json")


class UserError(click.ClickException):
    """A one-line problem with what the user asked for."""


def _parse_when(value: str, name: str) -> datetime:
    """A date (``2026-11-01``, midnight UTC) or an ISO timestamp with zone, as aware UTC
    (:func:`ledger.calendar.parse_instant`), or a one-line :class:`UserError`."""
    try:
        return parse_instant(value, name)
    except CalendarError as exc:
        raise UserError(str(exc)) from None



def _rows_out(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
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
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default, show_default=True,
                        help="Output for people (table) or machines.")


@contextmanager
def _ledger(ctx: click.Context) -> Iterator[Any]:
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
def _engine(ctx: click.Context) -> Iterator[Any]:
    """The opened ledger's engine (see :func:`_ledger`)."""
    with _ledger(ctx) as led:
        yield led.engine


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database-url", "db_url", envvar="LEDGER_DATABASE_URL", default=None, metavar="URL",
              help="SQLAlchemy URL of the ledger (default: the embedded SQLite file).")
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


# -- demo and chat -----------------------------------------------------------------------------


@cli.command()
@click.option("--calls", default=60, show_default=True, type=click.IntRange(1, 100_000), help="How many calls.")
@click.option("--seed", default=7, show_default=True, help="Seed of the call mix.")
@format_option()
@click.pass_context
def demo(ctx: click.Context, calls: int, seed: int, fmt: str) -> None:
    """Run a realistic mix of calls against a built-in stand-in upstream and summarize them.

    No key and no network needed: the stand-in listens on 127.0.0.1 and speaks the real wire
    format. Events go to the ledger (the embedded SQLite file unless --database-url says
    otherwise).

    \b
    Example:
      cerebras-ledger demo --calls 100
    """
    from ledger.cli.demo import run_demo

    with _engine(ctx):
        pass  # create the ledger (and surface a bad URL) before sending anything
    with click.progressbar(length=calls, label="calls", file=sys.stderr) as bar:
        summaries, waiting = run_demo(calls, seed, ctx.obj["url"], bar.update)
    rows = [{
        "project": s.project, "calls": s.calls, "errors": s.errors, "incomplete": s.incomplete,
        "tokens": s.tokens, "paid_usd": str(s.paid_cost), "free_calls": s.free_calls,
        "free_tokens": s.free_tokens, "unpriced": s.unpriced,
    } for s in summaries]
    if fmt == "table":
        click.echo(f"ledger: {redact_url(ctx.obj['url'])}")
    _rows_out(rows, fmt, ["project", "calls", "errors", "incomplete", "tokens", "paid_usd", "free_calls",
                          "free_tokens", "unpriced"])
    if waiting:
        click.echo("note: some events are still in the spool; they will be written on next use", err=True)


@cli.command()
@click.option("--model", "-m", required=True, help="Model id, e.g. gpt-oss-120b.")
@click.option("--message", "-p", default=None, help="The user message (default: read stdin).")
@click.option("--stream/--no-stream", default=False, help="Stream the reply.")
@click.option("--project", envvar="LEDGER_PROJECT", help="Project to bill (default $LEDGER_PROJECT).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag; repeat for more.")
@click.option("--max-tokens", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def chat(ctx: click.Context, model: str, message: str | None, stream: bool, project: str | None,
         tags: tuple[str, ...], max_tokens: int | None, fmt: str) -> None:
    """Send one chat completion and record it.

    Uses CEREBRAS_API_KEY (or LAVA_FORWARD_TOKEN to go through Lava) and CEREBRAS_BASE_URL.

    \b
    Example:
      cerebras-ledger chat -m llama3.1-8b -p "Say hi" --project search --tag user=ana --stream
    """
    from ledger.call.client import CerebrasClient
    from ledger.call.errors import APIError

    tag_map: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise UserError(f"--tag {t!r}: use KEY=VALUE")
        tag_map[key] = value
    text = message if message is not None else sys.stdin.read()
    params: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    with CerebrasClient(project, database_url=ctx.obj["url"], tags=tag_map) as client:
        try:
            messages = [{"role": "user", "content": text}]
            if stream:
                for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **params):
                    if fmt == "json":
                        click.echo(json.dumps(chunk))
                        continue
                    for choice in chunk.get("choices") or []:
                        click.echo((choice.get("delta") or {}).get("content") or "", nl=False)
                if fmt == "text":
                    click.echo()
                return
            reply = client.chat.completions.create(model=model, messages=messages, **params)
            if fmt == "json":
                click.echo(json.dumps(reply))
            else:
                for choice in reply.get("choices") or []:
                    click.echo((choice.get("message") or {}).get("content") or "")
        except APIError as exc:
            raise UserError(f"upstream error: {exc}") from None


# -- db ----------------------------------------------------------------------------------------


@cli.group()
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


# -- prices ------------------------------------------------------------------------------------


@cli.group()
def prices() -> None:
    """List, add, sync and check dated price points.

    \b
    Example:
      cerebras-ledger prices list --book lava
    """


@prices.command("list")
@click.option("--book", type=click.Choice(["cerebras", "lava"]), default=None)
@format_option()
@click.pass_context
def prices_list(ctx: click.Context, book: str | None, fmt: str) -> None:
    """List every price point (USD per million tokens).

    \b
    Example:
      cerebras-ledger prices list --book cerebras --format json
    """
    with _ledger(ctx) as led:
        points = led.prices.list(book)
    rows = [{
        "price_id": p.price_id, "book": p.book, "model": p.model,
        "effective_from": _iso_z(p.effective_from),
        "input_per_m": str(p.input.per_million()), "cached_per_m": str(p.cached.per_million()) if p.cached else None,
        "output_per_m": str(p.output.per_million()), "free": p.free, "source": p.source,
    } for p in points]
    _rows_out(rows, fmt, ["book", "model", "effective_from", "input_per_m", "cached_per_m", "output_per_m", "free",
                          "source", "price_id"])


@prices.command("add")
@click.option("--book", type=click.Choice(["cerebras", "lava"]), required=True)
@click.option("--model", required=True)
@click.option("--input", "input_", required=True, metavar="USD", help="USD per million input tokens.")
@click.option("--output", required=True, metavar="USD", help="USD per million output tokens.")
@click.option("--cached", default=None, metavar="USD", help="USD per million cached input tokens.")
@click.option("--free", is_flag=True, help="The model is free in this book.")
@click.option("--from", "from_", default=None, metavar="WHEN", help="Effective date (default: now).")
@click.pass_context
def prices_add(ctx: click.Context, book: str, model: str, input_: str, output: str, cached: str | None,
               free: bool, from_: str | None) -> None:
    """Add a dated price point. Events already priced keep their price.

    \b
    Example:
      cerebras-ledger prices add --book cerebras --model zai-glm-4.7 --input 2.25 --output 2.75 --from 2026-12-01
    """
    from ledger.store.prices import new_point

    when = _parse_when(from_, "--from") if from_ else None
    new_point(book, model, input_, output, cached_per_m=cached, free=free, effective_from=when)  # before opening
    with _ledger(ctx) as led:
        point = led.prices.add(book, model, input_, output, cached=cached, free=free, effective_from=when)
    click.echo(f"added {point.price_id}")


@prices.command("sync")
@click.option("--feed-url", envvar="LEDGER_PRICES_FEED_URL", default="https://api.cerebras.ai", show_default=True,
              help="Base URL of the public model feed.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@format_option()
@click.pass_context
def prices_sync(ctx: click.Context, feed_url: str, dry_run: bool, fmt: str) -> None:
    """Add a newly dated `cerebras` price wherever the public feed's price changed.

    \b
    Example:
      cerebras-ledger prices sync --dry-run
    """
    from ledger import store
    from ledger.store.prices import feed_points, fetch_feed

    feed = fetch_feed(feed_url)
    now = datetime.now(UTC).replace(microsecond=0)
    with _engine(ctx) as engine, store.write_transaction(engine) as conn:
        points, problems = feed_points(feed, store.load_price_book(conn), now)
        if not dry_run:
            store.insert_prices(conn, points)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    rows = [{"model": p.model, "input_per_m": str(p.input.per_million()), "output_per_m": str(p.output.per_million()),
             "price_id": p.price_id} for p in points]
    if fmt == "table":
        click.echo(f"{'would add' if dry_run else 'added'} {len(points)} price point(s)")
    if rows or fmt != "table":
        _rows_out(rows, fmt, ["model", "input_per_m", "output_per_m", "price_id"])


@prices.command("check")
@format_option()
@click.pass_context
def prices_check(ctx: click.Context, fmt: str) -> None:
    """List models with usage but no price; exits 1 if there are any.

    \b
    Example:
      cerebras-ledger prices check --format json
    """
    with _ledger(ctx) as led:
        found = led.prices.check()
    rows = [{"book": u.book, "model": u.model, "events": u.events, "tokens": u.tokens} for u in found]
    if fmt == "table" and not rows:
        click.echo("every event with known usage is priced")
        return
    _rows_out(rows, fmt, ["book", "model", "events", "tokens"])
    if rows:
        ctx.exit(1)


@prices.command("reprice")
@click.option("--since", required=True, metavar="DATE", help="Start (inclusive), date or ISO timestamp.")
@click.option("--until", required=True, metavar="DATE", help="End (exclusive).")
@click.option("--project", default=None)
@click.option("--dry-run", is_flag=True)
@click.option("--include-imported", is_flag=True,
              help="Also re-price events whose cost was imported (cost_usd), which are otherwise kept.")
@click.pass_context
def prices_reprice(ctx: click.Context, since: str, until: str, project: str | None, dry_run: bool,
                   include_imported: bool) -> None:
    """Re-price a past period with today's price book, writing correction rows (never updates).

    Events imported with a cost_usd keep it unless --include-imported. Two runs at once are
    safe: the second waits, then finds the first one's corrections.

    \b
    Example:
      cerebras-ledger prices reprice --since 2026-11-01 --until 2026-12-01
    """
    start, end = _parse_when(since, "--since"), _parse_when(until, "--until")
    if end <= start:
        raise UserError("--until must be after --since")
    with _ledger(ctx) as led:
        result = led.prices.reprice(start, end, project, dry_run=dry_run, include_imported=include_imported)
    verb = "would write" if dry_run else "wrote"
    click.echo(f"examined {result.examined} event(s); {verb} {result.corrections} correction(s) "
               f"totalling {result.delta} USD")


# -- events ------------------------------------------------------------------------------------


@cli.group()
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
@click.option("--out", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write here instead of stdout (written whole or not at all).")
@click.pass_context
def events_export(ctx: click.Context, since: str, until: str, project: str | None, fmt: str,
                  out: Path | None) -> None:
    """Stream events of a period, oldest first.

    \b
    Example:
      cerebras-ledger events export --since 2026-11-01 --until 2026-12-01 --project search --format csv
    """
    from ledger.exports.eventfiles import write_rows

    start, end = _parse_when(since, "--since"), _parse_when(until, "--until")
    if end <= start:
        raise UserError("--until must be after --since")
    with _ledger(ctx) as led:
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
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Default: from the file name, else its first byte.")
@click.pass_context
def events_import(ctx: click.Context, file: Path, fmt: str | None) -> None:
    """Back-fill events from FILE (the export's columns). All rows or none; idempotent by event_id.

    \b
    Example:
      cerebras-ledger events import usage-from-elsewhere.csv
    """
    from ledger.exports.eventfiles import import_file

    with _engine(ctx) as engine, ExitStack() as stack:
        bars: list[Any] = []

        def tick(n: int) -> None:
            # The bar opens on the first write, after every row was checked: a bad file
            # prints its one error line and nothing else.
            if not bars:
                bars.append(stack.enter_context(
                    click.progressbar(length=0, label="importing", file=sys.stderr, show_pos=True)))
            bars[0].update(n)

        result = import_file(engine, file, fmt, tick)
    click.echo(f"{result.rows} row(s) read; {result.inserted} new, {result.rows - result.inserted} already present")


# -- summary -----------------------------------------------------------------------------------


@cli.command()
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
    start = _parse_when(since, "--since") if since else None
    end = _parse_when(until, "--until") if until else None
    with _ledger(ctx) as led:
        rows = [{
            "project": s.project, "calls": s.calls, "errors": s.errors, "incomplete": s.incomplete,
            "tokens": s.tokens, "paid_usd": str(s.paid_cost), "free_calls": s.free_calls,
            "free_tokens": s.free_tokens, "unpriced": s.unpriced,
        } for s in led.summary(start, end)]
    _rows_out(rows, fmt, ["project", "calls", "errors", "incomplete", "tokens", "paid_usd", "free_calls",
                          "free_tokens", "unpriced"])


@cli.command("verify")
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
    with _ledger(ctx) as led:
        found = led.verify()
    if fmt == "table" and not found:
        click.echo("ledger is consistent")
        return
    _rows_out([{"check": f.check, "problem": f.problem} for f in found], fmt, ["check", "problem"])
    if found:
        ctx.exit(1)


# == rollup ===================================================================================


@cli.command("rollup")
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

    with _ledger(ctx) as led:
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
        _rows_out([row], fmt, ["batches", "events", "rebuilt"])


# == reports ==================================================================================


@cli.command("report")
@click.option("--project", default=None, help="The project to report on (default: all projects).")
@click.option("--period", required=True, metavar="PERIOD",
              help="A day (2026-11-27), an ISO week (2026-W48) or a month (2026-11).")
@click.option("--tz", "tz_name", default="UTC", show_default=True, metavar="ZONE",
              help="IANA time zone whose local midnights bound the period and its days.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "html"]), default="html", show_default=True,
              help="CSV or JSON (every figure), or an HTML dashboard with charts.")
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="FILE_OR_DIR",
              help="Write here (a file, or a folder for the default name) instead of "
                   "$LEDGER_REPORTS_DIR/<project>/ (default ./reports).")
@click.pass_context
def report_cmd(ctx: click.Context, project: str | None, period: str, tz_name: str, fmt: str,
               out: Path | None) -> None:
    """Write a spend report: calls, tokens, paid and free cost by day and model, top tags,
    unpriced usage, free usage at list price, and the change against the previous period.

    Reads the rollups (rolled up first, so the report is current). Prints the file's path.

    \b
    Example:
      cerebras-ledger report --project search --period 2026-11 --tz Europe/Berlin --format html
    """
    from ledger.reports import build as reports
    from ledger.reports import files as report_files
    from ledger.config import check_project

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
    with _ledger(ctx) as led, ExitStack() as stack:
        tick: Callable[[int], None] | None = None
        if spec.days > 7:  # a long period: show progress, now that every input is known to be good
            tick = stack.enter_context(click.progressbar(
                length=reports.BUILD_STEPS + 1, label=f"report {spec.label}", file=sys.stderr)).update
        try:
            built = led.report(project, period, tz_name, progress=tick)
        except (reports.ReportError, CalendarError) as exc:
            raise UserError(str(exc)) from None
        path = report_files.write_report(built, fmt, out=out)
        if tick is not None:
            tick(1)
    click.echo(str(path))


# == billing export ===========================================================================


@cli.group("export")
def export_group() -> None:
    """Billing exports for FinOps tools (FOCUS 1.2).

    \b
    Example:
      cerebras-ledger export billing --month 2026-11 --out focus-2026-11.csv
    """


def _billing_month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from ledger.exports.focus import BillingError, parse_month

    if value is None:
        return None
    try:
        return parse_month(value)
    except BillingError as exc:
        raise click.BadParameter(str(exc)) from None


@export_group.command("billing")
@click.option("--month", metavar="YYYY-MM", callback=_billing_month,
              help="The UTC month to bill; it must have ended.")
@click.option("--due", "due_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Instead of --month: issue every ended month since the first event that was never issued, "
                   "or whose file is not in DIR, into DIR/focus-YYYY-MM.<format>, oldest first (the "
                   "scheduler's billing job).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (whole or not at all) instead of stdout; parquet needs it.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True,
              help="parquet needs the `parquet` extra (pyarrow).")
@click.pass_context
def export_billing_cmd(ctx: click.Context, month: str | None, due_dir: Path | None, out: Path | None,
                       fmt: str) -> None:
    """Issue a month's FOCUS 1.2 billing file: one row per project, model, token type and price.

    The first run closes the month; running it again writes the identical file. Usage that
    arrives after its month was issued is billed once, by the next export, as Correction rows.

    \b
    Example:
      cerebras-ledger export billing --month 2026-11 --out focus-2026-11.csv
      cerebras-ledger export billing --month 2026-11 --format parquet --out focus-2026-11.parquet
      cerebras-ledger export billing --due reports/billing
    """
    from ledger.exports.focus import write_csv

    if (month is None) == (due_dir is None):
        raise click.UsageError("give --month YYYY-MM, or --due DIR (every month not yet issued)")
    if due_dir is not None:
        if out is not None:
            raise click.UsageError("--due writes into its folder; --out goes with --month")
        if due_dir.exists() and not due_dir.is_dir():
            raise click.UsageError(f"--due: {due_dir} is not a folder")
        with _ledger(ctx) as led:
            done = led.export_billing_due(due_dir, fmt)
        for result in done:
            _billing_said(result, due_dir / f"focus-{result.month}.{fmt}")
        if not done:
            click.echo("nothing due: every ended month is issued and its file is there", err=True)
        return
    assert month is not None
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    with _ledger(ctx) as led:
        result = led.export_billing(month, out, fmt)
    if out is None:
        write_csv(result.rows, sys.stdout)
    _billing_said(result, out)


def _billing_said(result: Any, out: Path | None) -> None:
    click.echo(f"{'reissued' if result.reissued else 'issued'} {result.month}: {len(result.rows)} row(s), "
               f"{result.corrections} correction row(s), billed {result.billed} USD"
               + (f", written to {out}" if out is not None else ""), err=True)
    if result.unpriced:
        click.echo(f"warning: {result.unpriced} event(s) with usage but no price are not billed; "
                   "see `cerebras-ledger prices check`", err=True)


# == budgets and alerts =======================================================================


def _cli_value(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback turning the library's one-line ConfigError into a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(first_line(exc, None)) from None

    return callback


def _iso_z(when: datetime | None) -> str | None:
    return iso_z(when) if when else None


def _budget_row(b: Any, stop: Any = None) -> dict[str, Any]:
    return {"project": b.project, "monthly_usd": None if b.monthly is None else str(b.monthly),
            "daily_usd": None if b.daily is None else str(b.daily), "thresholds": ",".join(map(str, b.thresholds)),
            "timezone": b.timezone, "free_only": b.free_only, "hard": b.hard,
            "refused_until": _iso_z(stop.until) if stop else None, "updated_at": _iso_z(b.updated_at)}


BUDGET_COLUMNS = ["project", "monthly_usd", "daily_usd", "thresholds", "timezone", "free_only", "hard",
                  "refused_until", "updated_at"]


@cli.group("budget")
def budget_group() -> None:
    """Paid-spend budgets per project (alerts fire at thresholds of them).

    \b
    Example:
      cerebras-ledger budget set search --monthly 500 --daily 40 --thresholds 50,80,100
    """


@budget_group.command("set")
@click.argument("project")
@click.option("--monthly", metavar="USD", default=None, help="Paid-spend budget per month (decimal USD).",
              callback=_cli_value(lambda v: _alerts().parse_amount(v, "monthly budget")))
@click.option("--daily", metavar="USD", default=None, help="Paid-spend budget per day (decimal USD).",
              callback=_cli_value(lambda v: _alerts().parse_amount(v, "daily budget")))
@click.option("--thresholds", default="50,80,100", show_default=True, metavar="PCT,PCT",
              help="Alert at these percentages of each budget.", callback=_cli_value(lambda v: _alerts().parse_thresholds(v)))
@click.option("--timezone", "tz", default="UTC", show_default=True, metavar="ZONE",
              help="IANA zone where days and months are counted.",
              callback=_cli_value(lambda v: _alerts().parse_timezone(v).key))
@click.option("--free-only", is_flag=True, help="Alert on any call to a paid model.")
@click.option("--hard", is_flag=True, help="Refuse the project's paid-model calls once the monthly budget is spent "
              "(takes effect after the next alerts check).")
@click.pass_context
def budget_set(ctx: click.Context, project: str, monthly: Any, daily: Any, thresholds: tuple[int, ...], tz: str,
               free_only: bool, hard: bool) -> None:
    """Create or replace PROJECT's budget (options not given take their defaults).

    \b
    Example:
      cerebras-ledger budget set search --monthly 500.00 --daily 40 --timezone Europe/Berlin
    """
    from ledger.config import check_project

    try:
        check_project(project)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="PROJECT") from None
    with _ledger(ctx) as led:
        b = led.budgets.set(project, monthly=monthly, daily=daily, thresholds=thresholds, timezone=tz,
                            free_only=free_only, hard=hard)
    click.echo(f"budget for {b.project!r}: monthly {b.monthly or '-'} USD, daily {b.daily or '-'} USD, "
               f"thresholds {','.join(map(str, b.thresholds))}%, {b.timezone}"
               f"{', free-only' if b.free_only else ''}{', hard' if b.hard else ''}")


@budget_group.command("list")
@format_option()
@click.pass_context
def budget_list(ctx: click.Context, fmt: str) -> None:
    """List every project's budget; refused_until is set while a hard budget is spent
    (as of the last alerts check).

    \b
    Example:
      cerebras-ledger budget list --format json
    """
    with _ledger(ctx) as led, led.engine.connect() as conn:
        from ledger.budgets.stops import read_stops

        stops = {s.project: s for s in read_stops(conn, datetime.now(UTC))}
        rows = [_budget_row(b, stops.get(b.project)) for b in led.budgets.list()]
    _rows_out(rows, fmt, BUDGET_COLUMNS)


@budget_group.command("remove")
@click.argument("project")
@click.pass_context
def budget_remove(ctx: click.Context, project: str) -> None:
    """Remove PROJECT's budget (its past alerts stay).

    \b
    Example:
      cerebras-ledger budget remove search
    """
    with _ledger(ctx) as led:
        if not led.budgets.remove(project):
            raise UserError(f"no budget for project {project!r}")
    click.echo(f"removed the budget of {project!r}")


def _alerts() -> Any:
    from ledger.budgets import alerts

    return alerts


ALERT_COLUMNS = ["created_at", "project", "rule", "period", "threshold", "status", "attempts", "message",
                 "alert_id", "last_error"]


def _alert_row(alert: Any, record: Any = None) -> dict[str, Any]:
    return {"created_at": _iso_z(alert.created_at), "project": alert.project,
            "rule": alert.rule, "period": alert.period, "threshold": alert.threshold,
            "status": record.status if record else "new", "attempts": record.attempts if record else 0,
            "message": alert.message, "alert_id": alert.alert_id,
            "last_error": record.last_error if record else None, "evidence": alert.evidence}


@cli.group("alerts")
def alerts_group() -> None:
    """Check budgets and spikes, and list alerts (webhook: LEDGER_ALERT_WEBHOOK_URL).

    \b
    Example:
      cerebras-ledger alerts check
    """


@alerts_group.command("check")
@click.option("--now", "now_", default=None, metavar="WHEN", help="Evaluate as of this ISO time (default: now).")
@click.option("--spike-factor", default="3", show_default=True, metavar="X",
              help="Spike: last window's paid spend above X times the trailing average.")
@click.option("--spike-min", default="1.00", show_default=True, metavar="USD",
              help="Spike: and at least this much paid spend in the window.")
@click.option("--spike-window", default=60, show_default=True, type=click.IntRange(15, 24 * 60), metavar="MIN",
              help="Spike window in minutes (a multiple of 15).")
@click.option("--spike-trailing", default=24, show_default=True, type=click.IntRange(1, 24 * 31), metavar="HOURS",
              help="Trailing period of the average, in hours.")
@click.option("--no-deliver", is_flag=True, help="Fire and log alerts, but do not POST to the webhook.")
@format_option()
@click.pass_context
def alerts_check(ctx: click.Context, now_: str | None, spike_factor: str, spike_min: str, spike_window: int,
                 spike_trailing: int, no_deliver: bool, fmt: str) -> None:
    """Roll up, fire due alerts (each once), and deliver undelivered ones to the webhook.

    \b
    Example:
      LEDGER_ALERT_WEBHOOK_URL=https://hooks.slack.com/services/... cerebras-ledger alerts check
    """
    mod = _alerts()
    now = _parse_when(now_, "--now") if now_ else None
    try:
        spike = mod.SpikeRule.parse(spike_factor, spike_min, spike_window, spike_trailing)
    except ConfigError as exc:
        raise click.UsageError(first_line(exc, None)) from None
    try:
        webhook = mod.webhook_from_env()
    except ConfigError as exc:
        raise UserError(first_line(exc, None)) from None
    with _engine(ctx) as engine:
        created, result = mod.check(engine, now=now, spike=spike, webhook=webhook, deliver_now=not no_deliver)
        from ledger.budgets.stops import read_stops

        with engine.connect() as conn:
            stops = read_stops(conn, now or datetime.now(UTC))
    rows = [_alert_row(a) for a in created]
    if fmt == "table":
        click.echo(f"{len(created)} new alert(s)")
        for stop in stops:
            click.echo(f"hard budget spent: {stop.project!r} ({stop.spent} of {stop.budget} USD in "
                       f"{stop.period}); paid-model calls refused until {_iso_z(stop.until)}")
    if rows or fmt != "table":
        _rows_out(rows, fmt, ALERT_COLUMNS[:5] + ["message", "alert_id"])
    if webhook is None:
        note = "webhook: not configured (LEDGER_ALERT_WEBHOOK_URL); alerts were logged only"
    elif no_deliver:
        note = "webhook: delivery skipped (--no-deliver)"
    else:
        note = f"webhook {webhook.label}: {result.delivered} delivered, {result.failed} failed (retried later)"
    click.echo(note, err=fmt != "table")


@alerts_group.command("list")
@click.option("--project", default=None)
@click.option("--undelivered", is_flag=True, help="Only alerts the webhook has not acknowledged.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@format_option()
@click.pass_context
def alerts_list(ctx: click.Context, project: str | None, undelivered: bool, limit: int, fmt: str) -> None:
    """List alerts, newest first, with their delivery state.

    \b
    Example:
      cerebras-ledger alerts list --project search --format json
    """
    with _engine(ctx) as engine, engine.connect() as conn:
        records = _alerts().list_alerts(conn, project, undelivered=undelivered, limit=limit)
    rows = [_alert_row(r.alert, r) for r in records]
    _rows_out(rows, fmt, ALERT_COLUMNS)


# == scheduler ================================================================================


@cli.command("scheduler")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file with a [scheduler] table (LEDGER_SCHEDULE_* variables override it).")
@click.option("--list", "list_only", is_flag=True, help="Print the jobs and their next run times, then exit.")
@format_option()
@click.pass_context
def scheduler_cmd(ctx: click.Context, config_file: Path | None, list_only: bool, fmt: str) -> None:
    """Run the ledger's jobs on a schedule until SIGTERM: rollups and alert checks every few
    minutes, daily per-project reports, and the monthly billing export.

    Safe to run twice against one ledger: each job run takes a lease in the database.

    \b
    Example:
      LEDGER_SCHEDULE_ROLLUP_SECONDS=60 cerebras-ledger scheduler
      cerebras-ledger scheduler --config ledger.toml --list
    """
    from ledger.scheduler.runner import build_scheduler, load_schedule, run_scheduler

    schedule = load_schedule(config_file)
    with _engine(ctx) as engine:
        if not list_only:
            run_scheduler(engine, schedule)
            return
        sched = build_scheduler(engine, schedule)
        now = datetime.now(UTC)
        rows = [{"job": job.id, "trigger": str(job.trigger),
                 "next_run": (job.trigger.get_next_fire_time(None, now) or now).astimezone(UTC).isoformat()}
                for job in sched.get_jobs()]
    _rows_out(rows, fmt, ["job", "trigger", "next_run"])


def _error(line: str) -> None:
    """Print one ``error:`` line, every credential hidden (a driver's message may quote the URL)."""
    click.echo(f"error: {redact(line)}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    from ledger.money import MoneyError

    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="cerebras-ledger",
                      standalone_mode=False)
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
    except Exception as exc:  # a database or library failure: still one line
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
