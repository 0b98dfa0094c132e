"""Budgets: the :class:`Budget` record, parsing its amounts, thresholds and time zone, and the
``budgets`` table (set, get, list, remove).

A project is watched once it has a row in ``budgets`` (:func:`set_budget`): an optional
paid-spend budget per month and per day (exact :class:`~ledger.money.Money`), thresholds in
percent (default 50, 80, 100), the IANA time zone its days and months are counted in (default
UTC), a ``free_only`` flag (the project should only ever call free models) and a ``hard`` flag
(:mod:`ledger.budgets.stops`). A budget with no amounts still watches for spikes and, with
``free_only``, for paid calls (:mod:`ledger.budgets.rules`). Setting or removing a budget deletes
its ``budget_stops`` row at once (the next check puts it back if it is still spent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, delete, select

from ledger.calendar import QUARTER_HOUR, parse_zone
from ledger.config import ConfigError, check_project
from ledger.money import Money, MoneyError, usd
from ledger.store import dialect_insert, write_transaction
from ledger.store.schema import BudgetRow, BudgetStopRow

__all__ = [
    "Budget",
    "get_budget",
    "list_budgets",
    "parse_amount",
    "parse_thresholds",
    "parse_timezone",
    "remove_budget",
    "set_budget",
    "utc_now",
]

DEFAULT_THRESHOLDS: tuple[int, ...] = (50, 80, 100)
MAX_THRESHOLD = 1000


def utc_now(now: datetime | None) -> datetime:
    """``now`` in UTC (it must be timezone-aware), or the current time when it is None."""
    if now is None:
        return datetime.now(UTC)
    if now.utcoffset() is None:
        raise ValueError("naive datetime given as now; use timezone-aware UTC")
    return now.astimezone(UTC)


# -- parsing and validation ----------------------------------------------------------------------


def parse_amount(value: str | Money, name: str = "amount") -> Money:
    """A budget amount: USD as a decimal string (exact), more than zero."""
    try:
        amount = value if isinstance(value, Money) else usd(value)
    except MoneyError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if amount.nanos <= 0:
        raise ConfigError(f"{name}: must be more than zero, got {amount}")
    return amount


def parse_thresholds(value: str | Iterable[int]) -> tuple[int, ...]:
    """Percentages such as ``"50,80,100"``: whole numbers from 1 to 1000, sorted, no repeats."""
    items: list[Any] = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"threshold {item!r} is not a whole percentage")
        try:
            pct = int(item)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold {item!r} is not a whole percentage (e.g. 50,80,100)") from None
        if isinstance(item, str) and item != str(pct):
            raise ConfigError(f"threshold {item!r} is not a whole percentage (e.g. 50,80,100)")
        if not 1 <= pct <= MAX_THRESHOLD:
            raise ConfigError(f"threshold {pct} is out of range (1 to {MAX_THRESHOLD} %)")
        out.append(pct)
    if not out:
        raise ConfigError("at least one threshold is needed (e.g. 50,80,100)")
    if len(set(out)) != len(out):
        raise ConfigError(f"thresholds repeat: {','.join(map(str, out))}")
    text = ",".join(map(str, sorted(out)))
    if len(text) > 100:
        raise ConfigError("too many thresholds")
    return tuple(sorted(out))


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA zone (:func:`ledger.calendar.parse_zone`) whose offset is a whole number of quarter
    hours now (every zone in use today)."""
    zone = parse_zone(name)
    offset = datetime.now(UTC).astimezone(zone).utcoffset()
    if not isinstance(zone, ZoneInfo) or offset is None or offset.total_seconds() % QUARTER_HOUR:
        raise ConfigError(f"time zone {name!r} is not a whole number of quarter hours from UTC")
    return zone


# -- budgets -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """One project's budget and alert settings (see the module docstring)."""

    project: str
    monthly: Money | None = None
    daily: Money | None = None
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    free_only: bool = False
    hard: bool = False
    timezone: str = "UTC"
    updated_at: datetime | None = None

    @property
    def zone(self) -> ZoneInfo:
        return parse_timezone(self.timezone)


def _budget_of(row: Any) -> Budget:
    return Budget(
        project=row.project,
        monthly=None if row.monthly_nanos is None else Money(int(row.monthly_nanos)),
        daily=None if row.daily_nanos is None else Money(int(row.daily_nanos)),
        thresholds=tuple(int(t) for t in row.thresholds.split(",") if t),
        free_only=bool(row.free_only),
        hard=bool(row.hard),
        timezone=row.timezone,
        updated_at=row.updated_at,
    )


def set_budget(
    engine: Engine,
    project: str,
    *,
    monthly: str | Money | None = None,
    daily: str | Money | None = None,
    thresholds: str | Iterable[int] = DEFAULT_THRESHOLDS,
    timezone: str = "UTC",
    free_only: bool = False,
    hard: bool = False,
    now: datetime | None = None,
) -> Budget:
    """Create or replace ``project``'s budget. Amounts are USD decimal strings (or Money)."""
    project = check_project(project)
    budget = Budget(
        project=project,
        monthly=None if monthly is None else parse_amount(monthly, "monthly budget"),
        daily=None if daily is None else parse_amount(daily, "daily budget"),
        thresholds=parse_thresholds(thresholds),
        free_only=bool(free_only),
        hard=bool(hard),
        timezone=parse_timezone(timezone).key,
        updated_at=utc_now(now),
    )
    values = {
        "project": budget.project,
        "monthly_nanos": None if budget.monthly is None else budget.monthly.nanos,
        "daily_nanos": None if budget.daily is None else budget.daily.nanos,
        "thresholds": ",".join(map(str, budget.thresholds)),
        "free_only": budget.free_only,
        "hard": budget.hard,
        "timezone": budget.timezone,
        "updated_at": budget.updated_at,
    }
    with write_transaction(engine) as conn:
        stmt = dialect_insert(conn, BudgetRow.__table__).values(values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["project"], set_={k: v for k, v in values.items() if k != "project"}
            )
        )
        conn.execute(delete(BudgetStopRow).where(BudgetStopRow.__table__.c.project == project))
    return budget


def get_budget(conn: Connection, project: str) -> Budget | None:
    row = conn.execute(select(BudgetRow.__table__).where(BudgetRow.__table__.c.project == project)).first()
    return None if row is None else _budget_of(row)


def list_budgets(conn: Connection) -> list[Budget]:
    b = BudgetRow.__table__.c
    return [_budget_of(r) for r in conn.execute(select(BudgetRow.__table__).order_by(b.project))]


def remove_budget(engine: Engine, project: str) -> bool:
    """Remove ``project``'s budget; its alerts stay. Returns whether there was one."""
    with write_transaction(engine) as conn:
        conn.execute(delete(BudgetStopRow).where(BudgetStopRow.__table__.c.project == project))
        result = conn.execute(delete(BudgetRow).where(BudgetRow.__table__.c.project == project))
        return bool(result.rowcount)
