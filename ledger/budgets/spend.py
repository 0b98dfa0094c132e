"""Paid spend from the rollups: the one figure the alert rules (:mod:`ledger.budgets.rules`) and
the hard stops (:mod:`ledger.budgets.stops`) compare with a budget.

**Paid spend** is the sum of ``cost_nanos`` over ``usage_rollup`` rows with ``free = false``:
priced usage of non-free models plus the cost deltas of correction rows (the same figure as
``summary``'s ``paid_usd``). Unpriced usage has no cost and adds nothing. Every rule reads the
rollups only; :func:`ledger.budgets.check.check` runs :func:`ledger.store.rollup.rollup` first.
Rollup buckets are UTC quarter hours, and every time zone in use today is a whole number of
quarter hours from UTC, so local days and months are exact sums of buckets (a zone that is not
is refused, :func:`ledger.budgets.budgets.parse_timezone`).

**Where a budget stands** (:func:`budget_status`, for the dashboard, the JSON API and the
metrics alike, so they agree): the paid spend of the budget's current local month (or day, for a
budget with only a daily amount), what is left (negative once overspent; never infinite, and a
project without a budget has no status at all), and a month-end *forecast*: the spend so far,
extrapolated linearly over the whole period, ``spent * period_length // elapsed`` in integer
nano-dollars. The elapsed time counts at least one hour, so the first minutes of a month do not
forecast a thousandfold overshoot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from sqlalchemy import Connection, case, func, select

from ledger.budgets.budgets import Budget
from ledger.calendar import day_of, month_of, period_bounds
from ledger.store.schema import UsageRollupRow

__all__ = ["BudgetStatus", "budget_status", "month_bounds", "paid"]


def month_bounds(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """The start and end (in UTC) of the local month in ``tz`` that holds ``day``."""
    bounds = period_bounds(month_of(day), tz)
    return bounds[0], bounds[-1]


def paid(conn: Connection, project: str, start: datetime, end: datetime) -> tuple[int, int]:
    """(paid spend in nano-dollars, paid usage calls) of ``project`` over buckets in [start, end)."""
    r = UsageRollupRow.__table__.c
    row = conn.execute(
        select(
            func.coalesce(func.sum(r.cost_nanos), 0),
            func.coalesce(func.sum(case((r.kind == "usage", r.events), else_=0)), 0),
        ).where(r.project == project, r.free.is_(False), r.bucket >= start, r.bucket < end)
    ).one()
    return int(row[0]), int(row[1])


MIN_ELAPSED = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where one budget stands now. Amounts are integer nano-dollars.

    Attributes:
        project: the budget's project.
        period: the local month (``2026-12``) or, for a daily-only budget, day.
        start, end: the period's bounds in UTC.
        budget_nanos: the period's budget.
        spent_nanos: paid spend so far in the period.
        remaining_nanos: ``budget_nanos - spent_nanos`` (negative once overspent).
        forecast_nanos: the spend at the period's end if it goes on at the rate so far.
        hard: whether the budget refuses paid calls once spent.
    """

    project: str
    period: str
    start: datetime
    end: datetime
    budget_nanos: int
    spent_nanos: int
    remaining_nanos: int
    forecast_nanos: int
    hard: bool


def budget_status(conn: Connection, budget: Budget, now: datetime) -> BudgetStatus | None:
    """Where ``budget`` stands at ``now`` (UTC); ``None`` for a budget with no amount (free-only)."""
    zone = budget.zone
    today = now.astimezone(zone).date()
    if budget.monthly is not None:
        period, amount = month_of(today), budget.monthly.nanos
    elif budget.daily is not None:
        period, amount = day_of(today), budget.daily.nanos
    else:
        return None
    bounds = period_bounds(period, zone)
    start, end = bounds[0], bounds[-1]
    spent, _ = paid(conn, budget.project, start, end)
    elapsed = max(now - start, MIN_ELAPSED)
    length = end - start
    forecast = spent if elapsed >= length else spent * _micros(length) // _micros(elapsed)
    return BudgetStatus(
        project=budget.project,
        period=period.label,
        start=start,
        end=end,
        budget_nanos=amount,
        spent_nanos=spent,
        remaining_nanos=amount - spent,
        forecast_nanos=forecast,
        hard=budget.hard,
    )


def _micros(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
