"""The ``prices`` group: list, add, sync (public feed) and check dated price points, and
re-price a past period with correction rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from ledger.cli.common import (
    UserError,
    format_option,
    iso_z_or_none,
    open_engine,
    open_ledger,
    parse_when,
    rows_out,
)

__all__ = ["prices"]


@click.group()
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
    with open_ledger(ctx) as led:
        points = led.prices.list(book)
    rows = [
        {
            "price_id": p.price_id,
            "book": p.book,
            "model": p.model,
            "effective_from": iso_z_or_none(p.effective_from),
            "input_per_m": str(p.input.per_million()),
            "cached_per_m": str(p.cached.per_million()) if p.cached else None,
            "output_per_m": str(p.output.per_million()),
            "free": p.free,
            "source": p.source,
        }
        for p in points
    ]
    rows_out(
        rows,
        fmt,
        [
            "book",
            "model",
            "effective_from",
            "input_per_m",
            "cached_per_m",
            "output_per_m",
            "free",
            "source",
            "price_id",
        ],
    )


@prices.command("add")
@click.option("--book", type=click.Choice(["cerebras", "lava"]), required=True)
@click.option("--model", required=True)
@click.option("--input", "input_", required=True, metavar="USD", help="USD per million input tokens.")
@click.option("--output", required=True, metavar="USD", help="USD per million output tokens.")
@click.option("--cached", default=None, metavar="USD", help="USD per million cached input tokens.")
@click.option("--free", is_flag=True, help="The model is free in this book.")
@click.option("--from", "from_", default=None, metavar="WHEN", help="Effective date (default: now).")
@click.pass_context
def prices_add(
    ctx: click.Context,
    book: str,
    model: str,
    input_: str,
    output: str,
    cached: str | None,
    free: bool,
    from_: str | None,
) -> None:
    """Add a dated price point. Events already priced keep their price.

    \b
    Example:
      cerebras-ledger prices add --book cerebras --model zai-glm-4.7 --input 2.25 --output 2.75 --from 2026-12-01
    """
    from ledger.store.prices import new_point

    when = parse_when(from_, "--from") if from_ else None
    new_point(
        book, model, input_, output, cached_per_m=cached, free=free, effective_from=when
    )  # before opening
    with open_ledger(ctx) as led:
        point = led.prices.add(book, model, input_, output, cached=cached, free=free, effective_from=when)
    click.echo(f"added {point.price_id}")


@prices.command("sync")
@click.option(
    "--feed-url",
    envvar="LEDGER_PRICES_FEED_URL",
    default="https://api.cerebras.ai",
    show_default=True,
    help="Base URL of the public model feed.",
)
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
    with open_engine(ctx) as engine, store.write_transaction(engine) as conn:
        points, problems = feed_points(feed, store.load_price_book(conn), now)
        if not dry_run:
            store.insert_prices(conn, points)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    rows = [
        {
            "model": p.model,
            "input_per_m": str(p.input.per_million()),
            "output_per_m": str(p.output.per_million()),
            "price_id": p.price_id,
        }
        for p in points
    ]
    if fmt == "table":
        click.echo(f"{'would add' if dry_run else 'added'} {len(points)} price point(s)")
    if rows or fmt != "table":
        rows_out(rows, fmt, ["model", "input_per_m", "output_per_m", "price_id"])


@prices.command("check")
@format_option()
@click.pass_context
def prices_check(ctx: click.Context, fmt: str) -> None:
    """List models with usage but no price; exits 1 if there are any.

    \b
    Example:
      cerebras-ledger prices check --format json
    """
    with open_ledger(ctx) as led:
        found = led.prices.check()
    rows = [{"book": u.book, "model": u.model, "events": u.events, "tokens": u.tokens} for u in found]
    if fmt == "table" and not rows:
        click.echo("every event with known usage is priced")
        return
    rows_out(rows, fmt, ["book", "model", "events", "tokens"])
    if rows:
        ctx.exit(1)


@prices.command("reprice")
@click.option("--since", required=True, metavar="DATE", help="Start (inclusive), date or ISO timestamp.")
@click.option("--until", required=True, metavar="DATE", help="End (exclusive).")
@click.option("--project", default=None)
@click.option("--dry-run", is_flag=True)
@click.option(
    "--include-imported",
    is_flag=True,
    help="Also re-price events whose cost was imported (cost_usd), which are otherwise kept.",
)
@click.pass_context
def prices_reprice(
    ctx: click.Context, since: str, until: str, project: str | None, dry_run: bool, include_imported: bool
) -> None:
    """Re-price a past period with today's price book, writing correction rows (never updates).

    Events imported with a cost_usd keep it unless --include-imported. Two runs at once are
    safe: the second waits, then finds the first one's corrections.

    \b
    Example:
      cerebras-ledger prices reprice --since 2026-11-01 --until 2026-12-01
    """
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if end <= start:
        raise UserError("--until must be after --since")
    with open_ledger(ctx) as led:
        result = led.prices.reprice(start, end, project, dry_run=dry_run, include_imported=include_imported)
    verb = "would write" if dry_run else "wrote"
    click.echo(
        f"examined {result.examined} event(s); {verb} {result.corrections} correction(s) "
        f"totalling {result.delta} USD"
    )
