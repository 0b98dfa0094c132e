"""Paid spend from the rollups: the one figure the alert rules (:mod:`ledger.budgets.rules`) and
the hard stops (:mod:`ledger.budgets.stops`) compare with a budget.

**Paid spend** is the sum of ``cost_nanos`` over ``usage_rollup`` rows with ``free = false``:
priced usage of non-free models plus the cost deltas of correction rows (the same figure as
``summary``'s ``paid_usd``). Unpriced usage has no cost and adds nothing. Every rule reads the
rollups only; :func:`ledger.budgets.check.check` runs :func:`ledger.store.rollup.rollup` first.
Rollup buckets are UTC quarter hours, and every time zone in use today is a whole number of
quarter hours from UTC, so local days and months are exact sums of buckets (a zone that is not
is refused, :func:`ledger.budgets.budgets.parse_timezone`).
"""

from __future__ import annotations

from datetime import date, datetime, tzinfo

from sqlalchemy import Connection, case, func, select

from ledger.calendar import month_of, period_bounds
from ledger.store.schema import UsageRollupRow

__all__ = ["month_bounds", "paid"]


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
