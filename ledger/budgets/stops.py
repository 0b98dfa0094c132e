"""Hard budgets: the ``budget_stops`` table (:func:`update_stops`), the stops in force, and the
stop file the call path reads.

:func:`ledger.budgets.check.check` keeps the ``budget_stops`` table (:func:`update_stops`):
a row for every ``hard`` budget whose paid spend this local month has reached its monthly
amount (exactly: ``spent ≥ budget`` in nano-dollars), with the month's end in UTC; none for
any other project. Setting or removing a budget deletes its
row at once (the next check puts it back if it is still spent). The wrapper refuses the
project's paid-model calls while a row is in force; how that reaches the call path, and how
fresh it is, is :mod:`ledger.call.stops`'s docstring.

:func:`refresh` is the writer's part of the hand-over described in
:mod:`ledger.call.stops`: it reads the stops in force and publishes them, with the free models
of every price book, as the stop file (:func:`ledger.call.stops.publish`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, select

from ledger.budgets.budgets import list_budgets, utc_now
from ledger.budgets.spend import month_bounds, paid
from ledger.calendar import iso_z
from ledger.call.stops import Stop, publish
from ledger.money import Money
from ledger.pricing import PriceBook
from ledger.store import dialect_insert, write_transaction
from ledger.store.schema import BudgetStopRow

__all__ = ["read_stops", "refresh", "update_stops"]

log = logging.getLogger("ledger.alerts")


def read_stops(conn: Connection, now: datetime) -> list[Stop]:
    """The stops in force at ``now``, from the ``budget_stops`` table."""
    t = BudgetStopRow.__table__.c
    rows = conn.execute(
        select(t.project, t.period, t.until, t.budget_nanos, t.spent_nanos)
        .where(t.until > now)
        .order_by(t.project)
    )
    return [
        Stop(r.project, r.period, r.until, Money(int(r.budget_nanos)), Money(int(r.spent_nanos)))
        for r in rows
    ]


def refresh(
    conn: Connection, book: Callable[[], PriceBook], folder: Path, now: datetime | None = None
) -> bool:
    """The writer's part: read the stops in force and publish them (with the free models of
    every book, from ``book()``, asked for only when some project is stopped)."""
    at = now or datetime.now(UTC)
    stops = read_stops(conn, at)
    free: dict[str, frozenset[str]] = {}
    if stops:
        prices = book()
        free = {name: prices.free_models(name, at) for name in prices.books()}
    return publish(folder, stops, free)


def update_stops(
    engine: Engine, *, now: datetime | None = None, projects: Sequence[str] | None = None
) -> list[Stop]:
    """Keep ``budget_stops`` true to the rollups (see the module docstring) and return the stops
    in force. A project stopped for the first time is logged (``ledger.alerts``, WARNING)."""
    when = utc_now(now)
    t = BudgetStopRow.__table__
    with write_transaction(engine) as conn:
        budgets = [b for b in list_budgets(conn) if (projects is None or b.project in projects)]
        stops: list[Stop] = []
        for b in budgets:
            if not b.hard or b.monthly is None:
                continue
            start, end = month_bounds(when.astimezone(b.zone).date(), b.zone)
            spent, _ = paid(conn, b.project, start, end)
            if spent >= b.monthly.nanos:
                stops.append(
                    Stop(b.project, start.astimezone(b.zone).strftime("%Y-%m"), end, b.monthly, Money(spent))
                )
        held = {r.project: r.period for r in conn.execute(select(t.c.project, t.c.period))}
        keep = {s.project for s in stops}
        gone = [p for p in held if p not in keep and (projects is None or p in projects)]
        if gone:
            conn.execute(delete(BudgetStopRow).where(t.c.project.in_(gone)))
        for s in stops:
            values = {
                "period": s.period,
                "until": s.until,
                "budget_nanos": s.budget.nanos,
                "spent_nanos": s.spent.nanos,
                "updated_at": when,
            }
            conn.execute(
                dialect_insert(conn, t)
                .values(project=s.project, **values)
                .on_conflict_do_update(index_elements=["project"], set_=values)
            )
            if held.get(s.project) != s.period:
                log.warning(
                    "hard budget spent: project %r has spent %s of its %s USD for %s; its paid-model "
                    "calls are refused until %s",
                    s.project,
                    s.spent,
                    s.budget,
                    s.period,
                    iso_z(s.until),
                )
        return read_stops(conn, when)
