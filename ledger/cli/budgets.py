"""The ``budget`` group (set, list, remove paid-spend budgets) and the ``alerts`` group (check
budgets and spikes, deliver to the webhook, list alerts), over :mod:`ledger.budgets`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from ledger.cli.common import (
    UserError,
    cli_value,
    format_option,
    iso_z_or_none,
    open_engine,
    open_ledger,
    parse_when,
    rows_out,
)
from ledger.config import ConfigError, first_line

__all__ = ["alerts_group", "budget_group"]


def _budget_row(b: Any, stop: Any = None) -> dict[str, Any]:
    return {
        "project": b.project,
        "monthly_usd": None if b.monthly is None else str(b.monthly),
        "daily_usd": None if b.daily is None else str(b.daily),
        "thresholds": ",".join(map(str, b.thresholds)),
        "timezone": b.timezone,
        "free_only": b.free_only,
        "hard": b.hard,
        "refused_until": iso_z_or_none(stop.until) if stop else None,
        "updated_at": iso_z_or_none(b.updated_at),
    }


BUDGET_COLUMNS = [
    "project",
    "monthly_usd",
    "daily_usd",
    "thresholds",
    "timezone",
    "free_only",
    "hard",
    "refused_until",
    "updated_at",
]


@click.group("budget")
def budget_group() -> None:
    """Paid-spend budgets per project (alerts fire at thresholds of them).

    \b
    Example:
      cerebras-ledger budget set search --monthly 500 --daily 40 --thresholds 50,80,100
    """


@budget_group.command("set")
@click.argument("project")
@click.option(
    "--monthly",
    metavar="USD",
    default=None,
    help="Paid-spend budget per month (decimal USD).",
    callback=cli_value(lambda v: _alerts().parse_amount(v, "monthly budget")),
)
@click.option(
    "--daily",
    metavar="USD",
    default=None,
    help="Paid-spend budget per day (decimal USD).",
    callback=cli_value(lambda v: _alerts().parse_amount(v, "daily budget")),
)
@click.option(
    "--thresholds",
    default="50,80,100",
    show_default=True,
    metavar="PCT,PCT",
    help="Alert at these percentages of each budget.",
    callback=cli_value(lambda v: _alerts().parse_thresholds(v)),
)
@click.option(
    "--timezone",
    "tz",
    default="UTC",
    show_default=True,
    metavar="ZONE",
    help="IANA zone where days and months are counted.",
    callback=cli_value(lambda v: _alerts().parse_timezone(v).key),
)
@click.option("--free-only", is_flag=True, help="Alert on any call to a paid model.")
@click.option(
    "--hard",
    is_flag=True,
    help="Refuse the project's paid-model calls once the monthly budget is spent "
    "(takes effect after the next alerts check).",
)
@click.pass_context
def budget_set(
    ctx: click.Context,
    project: str,
    monthly: Any,
    daily: Any,
    thresholds: tuple[int, ...],
    tz: str,
    free_only: bool,
    hard: bool,
) -> None:
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
    with open_ledger(ctx) as led:
        b = led.budgets.set(
            project,
            monthly=monthly,
            daily=daily,
            thresholds=thresholds,
            timezone=tz,
            free_only=free_only,
            hard=hard,
        )
    click.echo(
        f"budget for {b.project!r}: monthly {b.monthly or '-'} USD, daily {b.daily or '-'} USD, "
        f"thresholds {','.join(map(str, b.thresholds))}%, {b.timezone}"
        f"{', free-only' if b.free_only else ''}{', hard' if b.hard else ''}"
    )


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
    with open_ledger(ctx) as led, led.engine.connect() as conn:
        from ledger.budgets.stops import read_stops

        stops = {s.project: s for s in read_stops(conn, datetime.now(UTC))}
        rows = [_budget_row(b, stops.get(b.project)) for b in led.budgets.list()]
    rows_out(rows, fmt, BUDGET_COLUMNS)


@budget_group.command("remove")
@click.argument("project")
@click.pass_context
def budget_remove(ctx: click.Context, project: str) -> None:
    """Remove PROJECT's budget (its past alerts stay).

    \b
    Example:
      cerebras-ledger budget remove search
    """
    with open_ledger(ctx) as led:
        if not led.budgets.remove(project):
            raise UserError(f"no budget for project {project!r}")
    click.echo(f"removed the budget of {project!r}")


def _alerts() -> Any:
    from ledger.budgets import budgets

    return budgets


ALERT_COLUMNS = [
    "created_at",
    "project",
    "rule",
    "period",
    "threshold",
    "status",
    "attempts",
    "message",
    "alert_id",
    "last_error",
]


def _alert_row(alert: Any, record: Any = None) -> dict[str, Any]:
    return {
        "created_at": iso_z_or_none(alert.created_at),
        "project": alert.project,
        "rule": alert.rule,
        "period": alert.period,
        "threshold": alert.threshold,
        "status": record.status if record else "new",
        "attempts": record.attempts if record else 0,
        "message": alert.message,
        "alert_id": alert.alert_id,
        "last_error": record.last_error if record else None,
        "evidence": alert.evidence,
    }


@click.group("alerts")
def alerts_group() -> None:
    """Check budgets and spikes, and list alerts (webhook: LEDGER_ALERT_WEBHOOK_URL).

    \b
    Example:
      cerebras-ledger alerts check
    """


@alerts_group.command("check")
@click.option(
    "--now", "now_", default=None, metavar="WHEN", help="Evaluate as of this ISO time (default: now)."
)
@click.option(
    "--spike-factor",
    default="3",
    show_default=True,
    metavar="X",
    help="Spike: last window's paid spend above X times the trailing average.",
)
@click.option(
    "--spike-min",
    default="1.00",
    show_default=True,
    metavar="USD",
    help="Spike: and at least this much paid spend in the window.",
)
@click.option(
    "--spike-window",
    default=60,
    show_default=True,
    type=click.IntRange(15, 24 * 60),
    metavar="MIN",
    help="Spike window in minutes (a multiple of 15).",
)
@click.option(
    "--spike-trailing",
    default=24,
    show_default=True,
    type=click.IntRange(1, 24 * 31),
    metavar="HOURS",
    help="Trailing period of the average, in hours.",
)
@click.option("--no-deliver", is_flag=True, help="Fire and log alerts, but do not POST to the webhook.")
@format_option()
@click.pass_context
def alerts_check(
    ctx: click.Context,
    now_: str | None,
    spike_factor: str,
    spike_min: str,
    spike_window: int,
    spike_trailing: int,
    no_deliver: bool,
    fmt: str,
) -> None:
    """Roll up, fire due alerts (each once), and deliver undelivered ones to the webhook.

    \b
    Example:
      LEDGER_ALERT_WEBHOOK_URL=https://hooks.slack.com/services/... cerebras-ledger alerts check
    """
    from ledger.budgets import check, rules
    from ledger.budgets.webhook import webhook_from_env

    now = parse_when(now_, "--now") if now_ else None
    try:
        spike = rules.SpikeRule.parse(spike_factor, spike_min, spike_window, spike_trailing)
    except ConfigError as exc:
        raise click.UsageError(first_line(exc, None)) from None
    try:
        webhook = webhook_from_env()
    except ConfigError as exc:
        raise UserError(first_line(exc, None)) from None
    with open_engine(ctx) as engine:
        created, result = check.check(
            engine, now=now, spike=spike, webhook=webhook, deliver_now=not no_deliver
        )
        from ledger.budgets.stops import read_stops

        with engine.connect() as conn:
            stops = read_stops(conn, now or datetime.now(UTC))
    rows = [_alert_row(a) for a in created]
    if fmt == "table":
        click.echo(f"{len(created)} new alert(s)")
        for stop in stops:
            click.echo(
                f"hard budget spent: {stop.project!r} ({stop.spent} of {stop.budget} USD in "
                f"{stop.period}); paid-model calls refused until {iso_z_or_none(stop.until)}"
            )
    if rows or fmt != "table":
        rows_out(rows, fmt, ALERT_COLUMNS[:5] + ["message", "alert_id"])
    if webhook is None:
        note = "webhook: not configured (LEDGER_ALERT_WEBHOOK_URL); alerts were logged only"
    elif no_deliver:
        note = "webhook: delivery skipped (--no-deliver)"
    else:
        note = (
            f"webhook {webhook.label}: {result.delivered} delivered, {result.failed} failed (retried later)"
        )
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
    from ledger.budgets import check

    with open_engine(ctx) as engine, engine.connect() as conn:
        records = check.list_alerts(conn, project, undelivered=undelivered, limit=limit)
    rows = [_alert_row(r.alert, r) for r in records]
    rows_out(rows, fmt, ALERT_COLUMNS)
