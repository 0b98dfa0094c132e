"""Budgets and alerts: paid-model overuse, found in the rollups, fired once, delivered reliably.

**Budgets.** A project is watched once it has a row in ``budgets`` (:func:`set_budget`): an
optional paid-spend budget per month and per day (exact :class:`~ledger.money.Money`),
thresholds in percent (default 50, 80, 100), the IANA time zone its days and months are counted
in (default UTC), a ``free_only`` flag (the project should only ever call free models) and a
``hard`` flag (see below). A budget with no amounts still watches for spikes and, with
``free_only``, for paid calls.

**Hard budgets.** :func:`check` also keeps the ``budget_stops`` table (:func:`update_stops`):
a row for every ``hard`` budget whose paid spend this local month has reached its monthly
amount (exactly: ``spent ≥ budget`` in nano-dollars), with the month's end in UTC; none for
any other project. Setting or removing a budget deletes its
row at once (the next check puts it back if it is still spent). The wrapper refuses the
project's paid-model calls while a row is in force; how that reaches the call path, and how
fresh it is, is :mod:`ledger.call.stops`'s docstring.

**Paid spend** is the sum of ``cost_nanos`` over ``usage_rollup`` rows with ``free = false``:
priced usage of non-free models plus the cost deltas of correction rows (the same figure as
``summary``'s ``paid_usd``). Unpriced usage has no cost and adds nothing. Every rule reads the
rollups only; :func:`check` runs :func:`ledger.rollup.rollup` first. Rollup buckets are UTC
quarter hours, and every time zone in use today is a whole number of quarter hours from UTC,
so local days and months are exact sums of buckets (a zone that is not is refused).

**Rules** (``rule`` / ``period`` / ``threshold`` of the alert; ``period`` is local to the budget's
zone):

* ``month_actual`` / ``day_actual`` (period ``2026-11`` / ``2026-11-05``, threshold = the
  percentage): paid spend in the period ≥ threshold % of the budget, compared exactly
  (``spent × 100 ≥ budget × threshold`` in nano-dollars). The current period is checked, and
  so is the previous one if it ended after the budget was last set, so a crossing just before
  midnight is still reported by a run just after it.
* ``month_forecast`` (period ``2026-11``, threshold = the percentage): the forecast month-end
  paid spend ≥ threshold % of the monthly budget while the actual spend is still below it.
  **Forecast** = paid spend of the month so far (up to ``now``) + the paid spend of the 7
  complete local days before today × (time left until the local month end) ÷ (length of those 7
  days), i.e. the last week's average rate carried to the end of the month, in exact integer
  arithmetic rounded down to the nano-dollar (DST days count with their real length). Early in
  the month the 7 days lie (partly) in the previous month: the recent rate is used whatever month
  it came from. A project with no paid spend in those 7 days (new or idle) is forecast at its
  actual spend, so a forecast alert never rests on less than a complete day of history. Negative
  trailing spend (credits) counts as zero.
* ``free_only`` (period = the local month, threshold 0): a ``free_only`` project made a paid
  call: a usage event whose model is not free in its book (``free = false``), whatever its status
  and whether or not it could be priced (an unknown model is not known to be free): a call the
  wrapper refused for a spent hard budget is an attempt at a paid model and counts too (at no
  cost). Fires once per month; the evidence has the count and cost so far.
* ``spike`` (period = the UTC hour of ``now``, e.g. ``2026-11-05T13:00Z``; threshold = the
  factor × 100): the paid spend of the last window (default 60 minutes: the quarter-hour buckets
  up to and including the one holding ``now``) is at least ``min_spend`` (default 1.00 USD)
  **and** more than ``factor`` (default 3) times the average paid spend per window over the
  trailing period before it (default the 24 hours before the window):
  ``last × trailing > factor × trailing_spend × window``. With no trailing spend, reaching
  ``min_spend`` is a spike. At most one spike alert per project per UTC hour. See
  :class:`SpikeRule`.

**Once.** Each alert is inserted with ``ON CONFLICT DO NOTHING`` on the unique key (project,
rule, period, threshold), with evidence JSON (figures as exact decimal strings, window start
and end in ISO UTC, the threshold) and a message. Re-runs, restarts and concurrent processes
therefore never make a duplicate: the database decides which insert wins.

**Delivery.** Every new alert is logged (logger ``ledger.budgets.alerts``, WARNING) by the process that
created it. The ``alerts`` table is also the outbox for the webhook
(``LEDGER_ALERT_WEBHOOK_URL``, optional ``LEDGER_ALERT_WEBHOOK_SECRET`` and
``LEDGER_ALERT_WEBHOOK_TIMEOUT``), see :func:`deliver`: an alert due for delivery is claimed in a
write transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) with
a lease, ``claimed_until`` = the *database's* time + the attempt's deadline + 60 s, compared on
the database's clock too (:func:`ledger.store.db_now`), so hosts with skewed clocks agree and no
other process sends it while the attempt may still run; it is POSTed; then ``delivered_at`` is
set. Each attempt has one **total deadline** (default 10 s, from connect to the last byte read),
however slowly the receiver answers; at most 64 KiB of the answer is read; no redirect is
followed (a 3xx is a failure: ``HTTP 307 (redirect not followed)``); the URL must be http(s)
with a host, refused at configuration otherwise. A failure (non-2xx, network error, deadline)
increments ``attempts``, stores a short ``last_error`` (status or error class, never the URL or
secret) and sets ``next_attempt_at`` with exponential back-off (30 s × 2^(n-1), at most one
hour); a later run retries, forever, so an alert is never lost. With no URL configured nothing
is sent and alerts stay in the outbox (a URL configured later gets them).

Remaining at-least-once window: a process that crashes after the receiver accepted the POST
but before its ``delivered_at`` commit, or an attempt cut off at its deadline (or by SIGTERM)
after the receiver took it, sends that alert again on a later run. Every POST carries the
headers ``Idempotency-Key`` and ``X-Ledger-Alert-Id``, both the alert id, stable across
retries, so receivers can drop the repeat. With a
secret, ``X-Ledger-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` lets them verify it.
The secret is never logged or stored; the URL (whose path may itself be a credential, as with
Slack) is only ever shown as scheme://host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import Connection, Engine, and_, case, delete, func, or_, select, update

from ledger.calendar import QUARTER_HOUR, iso_z, local_midnight, month_of, parse_zone, period_bounds
from ledger.config import ConfigError, check_project
from ledger.events import new_event_id
from ledger.money import Money, MoneyError, usd
from ledger.store.rollup import rollup
from ledger.store.schema import AlertRow, BudgetRow, BudgetStopRow, UsageRollupRow
from ledger.budgets.stops import read_stops
from ledger.call.stops import Stop
from ledger.store import db_now as store_db_now
from ledger.store import dialect_insert, read_snapshot, write_transaction

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Alert",
    "AlertRecord",
    "Budget",
    "DeliveryResult",
    "SpikeRule",
    "Webhook",
    "check",
    "deliver",
    "evaluate",
    "get_budget",
    "list_alerts",
    "list_budgets",
    "parse_amount",
    "parse_thresholds",
    "parse_timezone",
    "payload",
    "remove_budget",
    "run_checks",
    "set_budget",
    "sign",
    "update_stops",
    "webhook_from_env",
]

log = logging.getLogger("ledger.budgets.alerts")

DEFAULT_THRESHOLDS: tuple[int, ...] = (50, 80, 100)
MAX_THRESHOLD = 1000
QUARTER = timedelta(minutes=15)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
WEBHOOK_TIMEOUT = 10.0  # seconds: the total deadline of one delivery attempt
MAX_WEBHOOK_TIMEOUT = 300.0
LEASE_MARGIN = timedelta(seconds=60)  # a claim outlasts its attempt's deadline by this much
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer body, the most ever read
STOP_POLL = 0.1  # seconds between looks at the stop flag while an attempt is in flight
RULES = ("month_actual", "day_actual", "month_forecast", "free_only", "spike")


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
        updated_at=_now(now),
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


# -- figures from the rollups --------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.utcoffset() is None:
        raise ValueError("naive datetime given as now; use timezone-aware UTC")
    return now.astimezone(UTC)


def _floor_quarter(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)


def _month_bounds(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    bounds = period_bounds(month_of(day), tz)
    return bounds[0], bounds[-1]


def _paid(conn: Connection, project: str, start: datetime, end: datetime) -> tuple[int, int]:
    """(paid spend in nano-dollars, paid usage calls) of ``project`` over buckets in [start, end)."""
    r = UsageRollupRow.__table__.c
    row = conn.execute(
        select(
            func.coalesce(func.sum(r.cost_nanos), 0),
            func.coalesce(func.sum(case((r.kind == "usage", r.events), else_=0)), 0),
        ).where(r.project == project, r.free.is_(False), r.bucket >= start, r.bucket < end)
    ).one()
    return int(row[0]), int(row[1])


def _usd(nanos: int) -> str:
    return str(Money(nanos))


def _share_usd(nanos: int, pct: int) -> str:
    """``nanos × pct / 100`` in USD, exactly (it may have more than nine decimals)."""
    if (nanos * pct) % 100 == 0:
        return _usd(nanos * pct // 100)
    return format(Decimal(nanos * pct).scaleb(-11), "f")


# -- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpikeRule:
    """A spike: ``last ≥ min_spend`` and ``last > factor × average per window over the trailing
    period``, where ``last`` is the paid spend of the ``window`` ending with the quarter-hour
    bucket that holds ``now`` and the trailing period is the ``trailing`` time just before it.

    Exactly: ``last × trailing > factor × trailing_spend × window`` (all exact). ``factor`` has at
    most two decimals (the alert's threshold is ``factor × 100``); ``window`` is a whole number
    of quarter hours."""

    factor: Decimal = Decimal(3)
    min_spend: Money = field(default_factory=lambda: usd("1.00"))
    window: timedelta = timedelta(hours=1)
    trailing: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not isinstance(self.factor, Decimal) or not self.factor.is_finite() or self.factor < 1:
            raise ConfigError(f"spike factor must be a number of at least 1, got {self.factor}")
        if (self.factor * 100) != (self.factor * 100).to_integral_value() or self.factor > 1000:
            raise ConfigError(f"spike factor {self.factor} has more than two decimals or is over 1000")
        if self.min_spend.nanos < 0:
            raise ConfigError("spike minimum must not be negative")
        for name, span in (("window", self.window), ("trailing period", self.trailing)):
            if span <= timedelta(0) or span % QUARTER:
                raise ConfigError(f"spike {name} must be a positive whole number of quarter hours")

    @staticmethod
    def parse(
        factor: str = "3", min_spend: str = "1.00", window_minutes: int = 60, trailing_hours: int = 24
    ) -> SpikeRule:
        try:
            f = Decimal(factor.strip())
        except InvalidOperation:
            raise ConfigError(f"spike factor {factor!r} is not a number") from None
        try:
            minimum = usd(min_spend)
        except MoneyError as exc:
            raise ConfigError(f"spike minimum: {exc}") from None
        return SpikeRule(f, minimum, timedelta(minutes=window_minutes), timedelta(hours=trailing_hours))


@dataclass(frozen=True, slots=True)
class Alert:
    """One fired alert (a row of ``alerts``, without its delivery state)."""

    alert_id: str
    project: str
    rule: str
    period: str
    threshold: int
    created_at: datetime
    message: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Candidate:
    project: str
    rule: str
    period: str
    threshold: int
    message: str
    evidence: dict[str, Any]


def _threshold_candidates(
    budget: Budget,
    rule: str,
    kind: str,
    period: str,
    budget_nanos: int,
    spent: int,
    start: datetime,
    end: datetime,
) -> list[_Candidate]:
    out = []
    for pct in budget.thresholds:
        if spent * 100 >= budget_nanos * pct:
            out.append(
                _Candidate(
                    budget.project,
                    rule,
                    period,
                    pct,
                    (
                        f"project {budget.project!r}: paid spend {_usd(spent)} USD reached {pct}% "
                        f"of its {kind} budget "
                        f"{_usd(budget_nanos)} USD ({period}, {budget.timezone})"
                    ),
                    {
                        "budget_usd": _usd(budget_nanos),
                        "spent_usd": _usd(spent),
                        "threshold_pct": pct,
                        "threshold_usd": _share_usd(budget_nanos, pct),
                        "window_start": iso_z(start),
                        "window_end": iso_z(end),
                        "timezone": budget.timezone,
                    },
                )
            )
    return out


def _budget_candidates(conn: Connection, budget: Budget, now: datetime, spike: SpikeRule) -> list[_Candidate]:
    tz = budget.zone
    today = now.astimezone(tz).date()
    set_at = budget.updated_at or now
    out: list[_Candidate] = []

    # Actual spend: this month and day, and the previous ones if they ended after the budget was set.
    month_start, month_end = _month_bounds(today, tz)
    prev_month_start, _ = _month_bounds(today.replace(day=1) - timedelta(days=1), tz)
    months = [(month_start, month_end, min(now, month_end))]
    if month_start > set_at:
        months.append((prev_month_start, month_start, month_start))
    if budget.monthly is not None:
        for start, _end, upto in months:
            spent, _ = _paid(conn, budget.project, start, upto)
            period = start.astimezone(tz).strftime("%Y-%m")
            out += _threshold_candidates(
                budget, "month_actual", "monthly", period, budget.monthly.nanos, spent, start, upto
            )
    if budget.daily is not None:
        day_start, day_end = local_midnight(today, tz), local_midnight(today + timedelta(days=1), tz)
        days = [(day_start, min(now, day_end), today)]
        if day_start > set_at:
            days.append((local_midnight(today - timedelta(days=1), tz), day_start, today - timedelta(days=1)))
        for start, upto, day in days:
            spent, _ = _paid(conn, budget.project, start, upto)
            out += _threshold_candidates(
                budget, "day_actual", "daily", day.isoformat(), budget.daily.nanos, spent, start, upto
            )

    # Forecast month-end spend (this month only).
    if budget.monthly is not None:
        spent, _ = _paid(conn, budget.project, month_start, now)
        trail_start, trail_end = local_midnight(today - timedelta(days=7), tz), local_midnight(today, tz)
        trailing, _ = _paid(conn, budget.project, trail_start, trail_end)
        remaining = month_end - now
        span = trail_end - trail_start
        extra = (
            max(trailing, 0) * (remaining // timedelta(microseconds=1)) // (span // timedelta(microseconds=1))
        )
        forecast = spent + extra
        period = month_start.astimezone(tz).strftime("%Y-%m")
        for pct in budget.thresholds:
            line = budget.monthly.nanos * pct
            if forecast * 100 >= line and spent * 100 < line:
                out.append(
                    _Candidate(
                        budget.project,
                        "month_forecast",
                        period,
                        pct,
                        (
                            f"project {budget.project!r}: paid spend is forecast to reach "
                            f"{_usd(forecast)} USD by the end of {period}, {pct}% or more of its monthly budget "
                            f"{_usd(budget.monthly.nanos)} USD "
                            f"(spent {_usd(spent)} USD so far)"
                        ),
                        {
                            "budget_usd": _usd(budget.monthly.nanos),
                            "spent_usd": _usd(spent),
                            "forecast_usd": _usd(forecast),
                            "threshold_pct": pct,
                            "threshold_usd": _share_usd(budget.monthly.nanos, pct),
                            "window_start": iso_z(month_start),
                            "window_end": iso_z(now),
                            "month_end": iso_z(month_end),
                            "trailing_usd": _usd(trailing),
                            "trailing_start": iso_z(trail_start),
                            "trailing_end": iso_z(trail_end),
                            "timezone": budget.timezone,
                            "method": "spent so far + paid spend of the last 7 complete local days"
                            " x time left / 7 days",
                        },
                    )
                )

    # A paid call in a free-only project.
    if budget.free_only:
        for start, _end, upto in months:
            spent, calls = _paid(conn, budget.project, start, upto)
            if calls > 0:
                period = start.astimezone(tz).strftime("%Y-%m")
                out.append(
                    _Candidate(
                        budget.project,
                        "free_only",
                        period,
                        0,
                        (
                            f"project {budget.project!r} is free-only but made {calls} call(s) "
                            f"to paid models in {period} "
                            f"({_usd(spent)} USD)"
                        ),
                        {
                            "paid_calls": calls,
                            "spent_usd": _usd(spent),
                            "threshold_pct": 0,
                            "window_start": iso_z(start),
                            "window_end": iso_z(upto),
                            "timezone": budget.timezone,
                        },
                    )
                )

    # A spike in the last window.
    win_end = _floor_quarter(now) + QUARTER
    win_start = win_end - spike.window
    trail_start = win_start - spike.trailing
    last, _ = _paid(conn, budget.project, win_start, win_end)
    base, _ = _paid(conn, budget.project, trail_start, win_start)
    base = max(base, 0)
    ratio = Fraction(spike.factor)
    us = timedelta(microseconds=1)
    if (
        last > 0
        and last >= spike.min_spend.nanos
        and last * (spike.trailing // us) > ratio * base * (spike.window // us)
    ):
        avg = base * (spike.window // us) // (spike.trailing // us)
        hour = now.replace(minute=0, second=0, microsecond=0)
        out.append(
            _Candidate(
                budget.project,
                "spike",
                hour.strftime("%Y-%m-%dT%H:00Z"),
                int(spike.factor * 100),
                (
                    f"project {budget.project!r}: paid spend spiked to {_usd(last)} USD "
                    f"in the {_minutes(spike.window)} "
                    f"to {iso_z(win_end)}, over {spike.factor}x its average of {_usd(avg)} USD per "
                    f"{_minutes(spike.window)} in the previous {_minutes(spike.trailing)}"
                ),
                {
                    "spent_usd": _usd(last),
                    "window_start": iso_z(win_start),
                    "window_end": iso_z(win_end),
                    "trailing_usd": _usd(base),
                    "trailing_start": iso_z(trail_start),
                    "trailing_end": iso_z(win_start),
                    "trailing_average_usd": _usd(avg),
                    "factor": str(spike.factor),
                    "threshold_pct": int(spike.factor * 100),
                    "min_spend_usd": str(spike.min_spend),
                    "as_of": iso_z(now),
                },
            )
        )
    return out


def _minutes(span: timedelta) -> str:
    minutes = span // timedelta(minutes=1)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def evaluate(
    engine: Engine,
    *,
    now: datetime | None = None,
    spike: SpikeRule | None = None,
    projects: Sequence[str] | None = None,
) -> list[Alert]:
    """Fire every alert that is due (from the rollups as they are) and return the new ones.

    Each (project, rule, period, threshold) fires once: inserts use ``ON CONFLICT DO NOTHING``,
    so concurrent or repeated runs never duplicate. New alerts are logged to ``ledger.budgets.alerts``."""
    when = _now(now)
    rule = spike or SpikeRule()
    with read_snapshot(engine) as conn:
        budgets = [b for b in list_budgets(conn) if projects is None or b.project in projects]
        candidates = [c for b in budgets for c in _budget_candidates(conn, b, when, rule)]
        if not candidates:
            return []
        a = AlertRow.__table__.c
        existing = {
            tuple(r)
            for r in conn.execute(
                select(a.project, a.rule, a.period, a.threshold).where(
                    a.project.in_([b.project for b in budgets])
                )
            )
        }
    created = _fire(
        engine, [c for c in candidates if (c.project, c.rule, c.period, c.threshold) not in existing], when
    )
    for alert in created:
        log.warning("alert %s: %s", alert.rule, alert.message)
    return created


def _fire(engine: Engine, fresh: Sequence[_Candidate], when: datetime) -> list[Alert]:
    """Insert alerts, skipping any whose (project, rule, period, threshold) exists; return the new ones."""
    created: list[Alert] = []
    if not fresh:
        return created
    with write_transaction(engine) as conn:
        for c in fresh:
            alert = Alert(
                new_event_id(),
                c.project,
                c.rule,
                c.period,
                c.threshold,
                when,
                c.message,
                {"rule": c.rule, "period": c.period, "project": c.project, **c.evidence},
            )
            stmt = (
                dialect_insert(conn, AlertRow.__table__)
                .values(
                    alert_id=alert.alert_id,
                    project=alert.project,
                    rule=alert.rule,
                    period=alert.period,
                    threshold=alert.threshold,
                    created_at=when,
                    message=alert.message,
                    evidence=json.dumps(alert.evidence, sort_keys=True, ensure_ascii=False),
                    attempts=0,
                    next_attempt_at=when,
                    claimed_until=None,
                    delivered_at=None,
                    last_error=None,
                )
                .on_conflict_do_nothing()
                .returning(AlertRow.__table__.c.alert_id)
            )
            # RETURNING, not rowcount: SQLAlchemy 2.1 + psycopg report -1 for a single-row INSERT.
            if conn.execute(stmt).first() is not None:
                created.append(alert)
    return created


# -- delivery ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where alerts are POSTed. ``secret`` signs the body; it never appears in a repr or a log.
    ``timeout`` is the total deadline of one attempt, in seconds (connect, send, answer: all of
    it). An invalid URL is refused here, at configuration, with a one-line error that never
    repeats the URL (its path may be a credential)."""

    url: str
    secret: str | None = field(default=None, repr=False)
    timeout: float = WEBHOOK_TIMEOUT

    def __post_init__(self) -> None:
        name = "LEDGER_ALERT_WEBHOOK_URL"
        url = self.url
        if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
            raise ConfigError(f"{name} is not a valid URL (it has spaces or control characters)")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
            parsed = httpx.URL(url)
        except (ValueError, httpx.InvalidURL):
            raise ConfigError(f"{name} is not a valid URL") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not parsed.host:
            raise ConfigError(f"{name} must be an http:// or https:// URL with a host")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= MAX_WEBHOOK_TIMEOUT
        ):
            raise ConfigError(f"LEDGER_ALERT_WEBHOOK_TIMEOUT must be more than 0 and at most "
                              f"{MAX_WEBHOOK_TIMEOUT:g} seconds")

    @property
    def label(self) -> str:
        """scheme://host[:port]: the only part of the URL ever shown (the rest may be a credential)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    @property
    def lease(self) -> timedelta:
        """How long a claimed alert is held: the attempt's whole deadline and a margin for the
        database round trips around it, so nobody else sends it while this attempt may still run."""
        return timedelta(seconds=self.timeout) + LEASE_MARGIN


def webhook_from_env(env: Mapping[str, str] | None = None) -> Webhook | None:
    """The webhook from ``LEDGER_ALERT_WEBHOOK_URL`` / ``LEDGER_ALERT_WEBHOOK_SECRET`` /
    ``LEDGER_ALERT_WEBHOOK_TIMEOUT`` (seconds, default 10), or None."""
    e = os.environ if env is None else env
    url = (e.get("LEDGER_ALERT_WEBHOOK_URL") or "").strip()
    if not url:
        return None
    raw = (e.get("LEDGER_ALERT_WEBHOOK_TIMEOUT") or "").strip()
    timeout = WEBHOOK_TIMEOUT
    if raw:
        try:
            timeout = float(Decimal(raw))
        except (InvalidOperation, ValueError, OverflowError):
            timeout = -1.0
        if not (0 < timeout <= MAX_WEBHOOK_TIMEOUT):  # nan, inf and out of range all land here
            raise ConfigError(f"LEDGER_ALERT_WEBHOOK_TIMEOUT must be a number of seconds, more than 0 and "
                              f"at most {MAX_WEBHOOK_TIMEOUT:g}")
    return Webhook(url, e.get("LEDGER_ALERT_WEBHOOK_SECRET") or None, timeout)


def sign(secret: str, body: bytes) -> str:
    """The ``X-Ledger-Signature`` header value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()


def _backoff(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failure: 30 s, 60 s, 120 s, ... at most one hour."""
    return min(BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 20)), BACKOFF_MAX)


def payload(row: Any) -> bytes:
    """The webhook body: a Slack-compatible ``text`` plus the alert's fields."""
    body = {
        "text": f":rotating_light: {row.message}",
        "alert_id": row.alert_id,
        "project": row.project,
        "rule": row.rule,
        "period": row.period,
        "threshold": int(row.threshold),
        "created_at": iso_z(row.created_at),
        "message": row.message,
        "evidence": json.loads(row.evidence),
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _due(now: datetime, db_now: datetime) -> Any:
    """Undelivered, due by the caller's clock (``now``: back-off), and not under a live lease by
    the database's clock (``db_now``: claims)."""
    a = AlertRow.__table__.c
    return and_(
        a.delivered_at.is_(None),
        a.next_attempt_at <= now,
        or_(a.claimed_until.is_(None), a.claimed_until <= db_now),
    )


def _claim(engine: Engine, now: datetime, lease: timedelta) -> Any:
    """Claim one due alert in a write transaction: ``claimed_until`` = the database's time +
    ``lease``. Returns the row, or None."""
    a = AlertRow.__table__.c
    with write_transaction(engine) as conn:
        db_now = store_db_now(conn)
        query = (
            select(AlertRow.__table__)
            .where(_due(now, db_now))
            .order_by(a.next_attempt_at, a.alert_id)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = conn.execute(query).first()
        if row is None:
            return None
        claimed = conn.execute(
            update(AlertRow)
            .where(a.alert_id == row.alert_id, _due(now, db_now))
            .values(claimed_until=db_now + lease)
        )
        return row if claimed.rowcount == 1 else None


def _short_error(text: str, webhook: Webhook) -> str:
    """A one-line error with the URL and the secret cut out, at most 200 characters."""
    for secret in (webhook.secret, webhook.url, urlsplit(webhook.url).path, urlsplit(webhook.url).query):
        if secret and len(secret) > 1:
            text = text.replace(secret, "***")
    return " ".join(text.split())[:200]


async def _post(
    transport: httpx.AsyncBaseTransport, webhook: Webhook, body: bytes, headers: dict[str, str],
    answered: list[int],
) -> int:
    """POST through the transport itself: ``httpx.AsyncClient`` logs every request's full URL at
    INFO, and the URL may be a credential. Credentials in the URL become a Basic auth header.
    No redirect is followed (a transport never follows one), no proxy variable is used, and at
    most :data:`MAX_RESPONSE_BYTES` of the answer's body are read (h11 caps its headers). The
    status goes into ``answered`` as soon as it is in: the answer counts even if its body then
    never ends."""
    url = httpx.URL(webhook.url)
    if url.username or url.password:
        token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
        headers = {**headers, "Authorization": f"Basic {token}"}
        url = url.copy_with(username=None, password=None)
    request = httpx.Request(
        "POST",
        url,
        content=body,
        headers=headers,
        extensions={"timeout": httpx.Timeout(webhook.timeout).as_dict()},
    )
    response = await transport.handle_async_request(request)
    answered.append(response.status_code)
    try:
        got = 0
        async for chunk in response.aiter_raw():
            got += len(chunk)
            if got >= MAX_RESPONSE_BYTES:
                break
    finally:
        await response.aclose()
    return response.status_code


async def _attempt(
    transport: httpx.AsyncBaseTransport,
    webhook: Webhook,
    body: bytes,
    headers: dict[str, str],
    stop: threading.Event | None,
) -> str | None:
    """One attempt under one total deadline (``webhook.timeout``, on the monotonic clock, however
    slowly the receiver answers); cut short when ``stop`` is set. None on a 2xx, else the error."""
    loop = asyncio.get_running_loop()
    end = loop.time() + webhook.timeout
    answered: list[int] = []
    task = asyncio.ensure_future(_post(transport, webhook, body, headers, answered))
    error: str | None = None
    while not task.done():
        remaining = end - loop.time()
        if stop is not None and stop.is_set():
            error = "interrupted (shutting down)"
        elif remaining <= 0:
            error = f"deadline exceeded ({webhook.timeout:g} s)"
        if error is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)  # let the connection close; never wait long
            if not answered:
                return error
            break  # the status is in; only the body was slow
        await asyncio.wait({task}, timeout=min(remaining, STOP_POLL) if stop is not None else remaining)
    if answered:
        status = answered[0]
        if task.done() and not task.cancelled():
            task.exception()  # a body cut short after the status changes nothing
    else:
        try:
            status = task.result()
        except Exception as exc:  # noqa: BLE001 - httpx errors, and anything else: a failed attempt, retried
            return _short_error(f"{type(exc).__name__}: {exc}", webhook)
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status} (redirect not followed)"
    return f"HTTP {status}"


def deliver(
    engine: Engine,
    webhook: Webhook | None,
    *,
    now: datetime | None = None,
    clock: Callable[[], datetime] | None = None,
    lease: timedelta | None = None,
    limit: int = 100,
    transport: httpx.AsyncBaseTransport | None = None,
    stop: threading.Event | None = None,
) -> DeliveryResult:
    """POST due undelivered alerts to ``webhook``; nothing is sent when it is None.

    One alert at a time: claim (a lease on the database's clock, at least :attr:`Webhook.lease`
    long: ``lease`` may lengthen it, never shorten it), POST under the attempt's total deadline,
    then mark delivered or schedule a retry. ``now`` / ``clock`` fix the clock that decides
    which alerts are due and when a retry is (tests); otherwise the real time is read at each
    step. ``stop`` (set by the scheduler on SIGTERM) cuts the attempt in flight short (it is
    retried later, like a failure) and ends the run. Runs its own event loop: call it from
    synchronous code."""
    if webhook is None:
        return DeliveryResult()
    tick: Callable[[], datetime] = clock or (
        (lambda: _now(now)) if now is not None else (lambda: datetime.now(UTC))
    )
    held = max(lease or webhook.lease, webhook.lease)
    a = AlertRow.__table__.c
    delivered = failed = 0
    errors: list[str] = []
    loop = asyncio.new_event_loop()
    own = transport is None
    http = transport or httpx.AsyncHTTPTransport()
    try:
        for _ in range(limit):
            if stop is not None and stop.is_set():
                break
            row = _claim(engine, tick(), held)
            if row is None:
                break
            body = payload(row)
            headers = {
                "Content-Type": "application/json",
                "X-Ledger-Alert-Id": row.alert_id,
                "Idempotency-Key": row.alert_id,
                "User-Agent": "cerebras-ledger-alerts",
            }
            if webhook.secret:
                headers["X-Ledger-Signature"] = sign(webhook.secret, body)
            error = loop.run_until_complete(_attempt(http, webhook, body, headers, stop))
            attempts = int(row.attempts) + 1
            done = tick()
            with write_transaction(engine) as conn:
                if error is None:
                    conn.execute(
                        update(AlertRow)
                        .where(a.alert_id == row.alert_id, a.delivered_at.is_(None))
                        .values(
                            delivered_at=done, claimed_until=None, attempts=a.attempts + 1, last_error=None
                        )
                    )
                else:
                    conn.execute(
                        update(AlertRow)
                        .where(a.alert_id == row.alert_id, a.delivered_at.is_(None))
                        .values(
                            attempts=a.attempts + 1,
                            claimed_until=None,
                            last_error=error,
                            next_attempt_at=done + _backoff(attempts),
                        )
                    )
            if error is None:
                delivered += 1
                log.info("alert %s delivered to %s (attempt %d)", row.alert_id, webhook.label, attempts)
            else:
                failed += 1
                errors.append(error)
                log.warning(
                    "alert %s: delivery to %s failed (attempt %d: %s); retrying after %s",
                    row.alert_id,
                    webhook.label,
                    attempts,
                    error,
                    iso_z(done + _backoff(attempts)),
                )
    finally:
        try:
            if own:
                loop.run_until_complete(asyncio.wait_for(http.aclose(), 5.0))
        except Exception:  # noqa: BLE001 - closing idle connections must not hide the result
            log.debug("webhook transport did not close cleanly", exc_info=True)
        finally:
            loop.close()  # never joins a resolver thread that is still stuck
    return DeliveryResult(delivered, failed, tuple(errors))


def check(
    engine: Engine,
    *,
    now: datetime | None = None,
    spike: SpikeRule | None = None,
    webhook: Webhook | None = None,
    deliver_now: bool = True,
    projects: Sequence[str] | None = None,
) -> tuple[list[Alert], DeliveryResult]:
    """Roll up, fire due alerts, then deliver the outbox to ``webhook`` (if any)."""
    rollup(engine)
    created = evaluate(engine, now=now, spike=spike, projects=projects)
    update_stops(engine, now=now, projects=projects)
    result = deliver(engine, webhook, now=now) if deliver_now else DeliveryResult()
    return created, result


# -- hard budgets --------------------------------------------------------------------------------


def update_stops(engine: Engine, *, now: datetime | None = None,
                 projects: Sequence[str] | None = None) -> list[Stop]:
    """Keep ``budget_stops`` true to the rollups (see the module docstring) and return the stops
    in force. A project stopped for the first time is logged (``ledger.budgets.alerts``, WARNING)."""
    when = _now(now)
    t = BudgetStopRow.__table__
    with write_transaction(engine) as conn:
        budgets = [b for b in list_budgets(conn) if (projects is None or b.project in projects)]
        stops: list[Stop] = []
        for b in budgets:
            if not b.hard or b.monthly is None:
                continue
            start, end = _month_bounds(when.astimezone(b.zone).date(), b.zone)
            spent, _ = _paid(conn, b.project, start, end)
            if spent >= b.monthly.nanos:
                stops.append(Stop(b.project, start.astimezone(b.zone).strftime("%Y-%m"), end, b.monthly,
                                  Money(spent)))
        held = {r.project: r.period for r in conn.execute(select(t.c.project, t.c.period))}
        keep = {s.project for s in stops}
        gone = [p for p in held if p not in keep and (projects is None or p in projects)]
        if gone:
            conn.execute(delete(BudgetStopRow).where(t.c.project.in_(gone)))
        for s in stops:
            values = {"period": s.period, "until": s.until, "budget_nanos": s.budget.nanos,
                      "spent_nanos": s.spent.nanos, "updated_at": when}
            conn.execute(dialect_insert(conn, t).values(project=s.project, **values)
                         .on_conflict_do_update(index_elements=["project"], set_=values))
            if held.get(s.project) != s.period:
                log.warning("hard budget spent: project %r has spent %s of its %s USD for %s; its paid-model "
                            "calls are refused until %s", s.project, s.spent, s.budget, s.period, iso_z(s.until))
        return read_stops(conn, when)


def run_checks(engine: Engine, now: datetime | None = None) -> tuple[list[Alert], DeliveryResult]:
    """:func:`check` with the webhook from the environment (``alerts check`` without options; the
    scheduler runs the same in two jobs: the checks after each rollup, the delivery on its own)."""
    return check(engine, now=now, webhook=webhook_from_env())


# -- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert with its delivery state."""

    alert: Alert
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_error: str | None

    @property
    def status(self) -> str:
        if self.delivered_at is not None:
            return "delivered"
        return "retrying" if self.attempts else "pending"


def list_alerts(
    conn: Connection, project: str | None = None, *, undelivered: bool = False, limit: int | None = None
) -> list[AlertRecord]:
    """Alerts, newest first."""
    a = AlertRow.__table__.c
    query = select(AlertRow.__table__).order_by(a.created_at.desc(), a.alert_id.desc())
    if project is not None:
        query = query.where(a.project == project)
    if undelivered:
        query = query.where(a.delivered_at.is_(None))
    if limit is not None:
        query = query.limit(limit)
    return [
        AlertRecord(
            Alert(
                r.alert_id,
                r.project,
                r.rule,
                r.period,
                int(r.threshold),
                r.created_at,
                r.message,
                json.loads(r.evidence),
            ),
            int(r.attempts),
            r.next_attempt_at,
            r.delivered_at,
            r.last_error,
        )
        for r in conn.execute(query)
    ]
