"""The alert rules: what each one finds in the rollups, one function per rule.

Each rule takes a :class:`RuleContext` (one budget, ``now``, the spike settings and the local
periods they share) and returns the :class:`Candidate` alerts it finds; :data:`RULE_CHECKS` is
the rules in the order the checker (:mod:`ledger.budgets.check`) runs them, budget by budget.
The rules only read; firing, once, is the checker's.

**Paid spend** (:mod:`ledger.budgets.spend`) is the figure every rule compares; the rules read the
rollups only.

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection

from ledger.budgets.budgets import Budget
from ledger.budgets.spend import month_bounds, paid
from ledger.calendar import iso_z, local_midnight
from ledger.config import ConfigError
from ledger.money import Money, MoneyError, usd

__all__ = ["RULE_CHECKS", "Candidate", "Rule", "RuleContext", "SpikeRule"]

QUARTER = timedelta(minutes=15)


# -- figures -------------------------------------------------------------------------------------


def _floor_quarter(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)


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
class Candidate:
    """An alert a rule found due (:func:`ledger.budgets.check.fire` records it, once)."""

    project: str
    rule: str
    period: str
    threshold: int
    message: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What every rule is given: one budget at ``now``, and the local periods the rules share.
    ``months`` is this month (up to ``now``) and the previous one if it ended after the budget
    was last set, each as (start, end, up to)."""

    conn: Connection
    budget: Budget
    now: datetime
    spike: SpikeRule
    tz: tzinfo
    today: date
    set_at: datetime
    month_start: datetime
    month_end: datetime
    months: tuple[tuple[datetime, datetime, datetime], ...]

    @staticmethod
    def of(conn: Connection, budget: Budget, now: datetime, spike: SpikeRule) -> RuleContext:
        tz = budget.zone
        today = now.astimezone(tz).date()
        set_at = budget.updated_at or now
        # Actual spend: this month, and the previous one if it ended after the budget was set.
        month_start, month_end = month_bounds(today, tz)
        prev_month_start, _ = month_bounds(today.replace(day=1) - timedelta(days=1), tz)
        months = [(month_start, month_end, min(now, month_end))]
        if month_start > set_at:
            months.append((prev_month_start, month_start, month_start))
        return RuleContext(conn, budget, now, spike, tz, today, set_at, month_start, month_end, tuple(months))


Rule = Callable[[RuleContext], list[Candidate]]


def _threshold_candidates(
    budget: Budget,
    rule: str,
    kind: str,
    period: str,
    budget_nanos: int,
    spent: int,
    start: datetime,
    end: datetime,
) -> list[Candidate]:
    out = []
    for pct in budget.thresholds:
        if spent * 100 >= budget_nanos * pct:
            out.append(
                Candidate(
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


def month_actual(ctx: RuleContext) -> list[Candidate]:
    """Paid spend this month (and the previous month, see :class:`RuleContext`) at each threshold
    of the monthly budget."""
    budget = ctx.budget
    out: list[Candidate] = []
    if budget.monthly is not None:
        for start, _end, upto in ctx.months:
            spent, _ = paid(ctx.conn, budget.project, start, upto)
            period = start.astimezone(ctx.tz).strftime("%Y-%m")
            out += _threshold_candidates(
                budget, "month_actual", "monthly", period, budget.monthly.nanos, spent, start, upto
            )
    return out


def day_actual(ctx: RuleContext) -> list[Candidate]:
    """Paid spend today (and yesterday, if it ended after the budget was set) at each threshold
    of the daily budget."""
    budget, now, tz, today = ctx.budget, ctx.now, ctx.tz, ctx.today
    out: list[Candidate] = []
    if budget.daily is not None:
        day_start, day_end = local_midnight(today, tz), local_midnight(today + timedelta(days=1), tz)
        days = [(day_start, min(now, day_end), today)]
        if day_start > ctx.set_at:
            days.append((local_midnight(today - timedelta(days=1), tz), day_start, today - timedelta(days=1)))
        for start, upto, day in days:
            spent, _ = paid(ctx.conn, budget.project, start, upto)
            out += _threshold_candidates(
                budget, "day_actual", "daily", day.isoformat(), budget.daily.nanos, spent, start, upto
            )
    return out


def month_forecast(ctx: RuleContext) -> list[Candidate]:
    """Forecast month-end paid spend (this month only) at each threshold of the monthly budget,
    while the actual spend is still below it."""
    budget, conn, now, tz, today = ctx.budget, ctx.conn, ctx.now, ctx.tz, ctx.today
    month_start, month_end = ctx.month_start, ctx.month_end
    out: list[Candidate] = []
    if budget.monthly is not None:
        spent, _ = paid(conn, budget.project, month_start, now)
        trail_start, trail_end = local_midnight(today - timedelta(days=7), tz), local_midnight(today, tz)
        trailing, _ = paid(conn, budget.project, trail_start, trail_end)
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
                    Candidate(
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
    return out


def free_only(ctx: RuleContext) -> list[Candidate]:
    """A paid call in a free-only project, this month (and the previous month, see
    :class:`RuleContext`)."""
    budget, tz = ctx.budget, ctx.tz
    out: list[Candidate] = []
    if budget.free_only:
        for start, _end, upto in ctx.months:
            spent, calls = paid(ctx.conn, budget.project, start, upto)
            if calls > 0:
                period = start.astimezone(tz).strftime("%Y-%m")
                out.append(
                    Candidate(
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
    return out


def spike(ctx: RuleContext) -> list[Candidate]:
    """A spike in the last window (:class:`SpikeRule`)."""
    budget, conn, now, spike = ctx.budget, ctx.conn, ctx.now, ctx.spike
    out: list[Candidate] = []
    win_end = _floor_quarter(now) + QUARTER
    win_start = win_end - spike.window
    trail_start = win_start - spike.trailing
    last, _ = paid(conn, budget.project, win_start, win_end)
    base, _ = paid(conn, budget.project, trail_start, win_start)
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
            Candidate(
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


RULE_CHECKS: tuple[Rule, ...] = (month_actual, day_actual, month_forecast, free_only, spike)
"""The rules, in the order they run for each budget (and so the order new alerts are fired in)."""
RULES: tuple[str, ...] = tuple(rule.__name__ for rule in RULE_CHECKS)  # each function is named after its rule
