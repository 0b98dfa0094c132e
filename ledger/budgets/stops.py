"""Hard budgets, the database side: the stops in force, and the stop file the call path reads.

The alerts check keeps the ``budget_stops`` table (one row per project whose hard budget is
spent). :func:`refresh` is the writer's part of the hand-over described in
:mod:`ledger.call.stops`: it reads the stops in force and publishes them, with the free models
of every price book, as the stop file (:func:`ledger.call.stops.publish`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, select

from ledger.call.stops import Stop, publish
from ledger.money import Money
from ledger.pricing import PriceBook
from ledger.store.schema import BudgetStopRow

__all__ = ["read_stops", "refresh"]


def read_stops(conn: Connection, now: datetime) -> list[Stop]:
    """The stops in force at ``now``, from the ``budget_stops`` table."""
    t = BudgetStopRow.__table__.c
    rows = conn.execute(select(t.project, t.period, t.until, t.budget_nanos, t.spent_nanos)
                        .where(t.until > now).order_by(t.project))
    return [Stop(r.project, r.period, r.until, Money(int(r.budget_nanos)), Money(int(r.spent_nanos)))
            for r in rows]


def refresh(conn: Connection, book: Callable[[], PriceBook], folder: Path, now: datetime | None = None) -> bool:
    """The writer's part: read the stops in force and publish them (with the free models of
    every book, from ``book()``, asked for only when some project is stopped)."""
    at = now or datetime.now(UTC)
    stops = read_stops(conn, at)
    free: dict[str, frozenset[str]] = {}
    if stops:
        prices = book()
        free = {name: prices.free_models(name, at) for name in prices.books()}
    return publish(folder, stops, free)
