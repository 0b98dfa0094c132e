"""Reports: building a spend report from the rollups, for a day, an ISO week or a month, in any IANA zone.

Owns the :class:`Report` record and the SQL and pandas shaping that fills it: the period's local
days, totals, days, models, projects, top tags and the change against the previous period of the
same kind. Rendering is elsewhere (:mod:`ledger.reports.formats` for CSV and JSON,
:mod:`ledger.reports.html` for the dashboard), and so is writing files (:mod:`ledger.reports.files`).

A report covers one period (``2026-11-27``, ``2026-W48`` or ``2026-11``) of one project or of
all, counted in local days of a chosen zone: the period runs from the local midnight that
starts it to the one that ends it, both turned into UTC instants. It reads the rollup tables
only (``usage_rollup``, ``tag_rollup``; :func:`ledger.store.rollup.rollup` runs first so they are
current), never the raw events:

* SQL sums the rollup rows per local day, project, model, status, kind, free and priced flag. A
  ``CASE`` on the bucket against the day boundaries names the local day. That is exact because
  a quarter-hour bucket never straddles a local midnight when the zone is a whole number of
  quarter hours from UTC at that midnight; a zone that is not is refused (the same rule as
  :func:`ledger.store.rollup.daily_totals`).
* pandas then shapes those few rows into totals, days, models, projects, top tags and the
  change against the previous period of the same kind.

Semantics (see :mod:`ledger.store.schema`): calls, errors, incomplete and free calls count
``kind='usage'`` rows; tokens and money sum every row, so correction pairs (reversal +
restatement) net out to the re-priced figures. *Unpriced usage* is ``status='ok'`` and
``priced=false``: its tokens, and its calls net of reversals (a reversal of an unpriced call
is the only correction that is itself unpriced). Incomplete calls have no usage at all and are
listed apart as *usage unknown*. *Free usage at list price* sums ``list_cost_nanos`` over free
rows: what the free calls would have cost at the ``cerebras`` book.

**Money is exact.** Every amount is an integer number of nano-dollars: BIGINT sums in SQL,
Python ``int`` values in pandas columns of ``object`` dtype (never ``float``, and not ``int64``
either, so no sum can wrap), checked by :func:`check_no_floats`. Amounts are printed through
:class:`~ledger.money.Money` (exact 9-decimal strings); percentages through ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pandas as pd  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import Connection, Engine, case, func, literal, select

from ledger.calendar import Period, period_bounds, zone_name
from ledger.store import read_snapshot
from ledger.store.schema import TagRollupRow, UsageRollupRow

__all__ = ["BUILD_STEPS", "FIGURES", "TOP_TAGS", "Report", "ReportError", "build_report", "check_no_floats"]

BUILD_STEPS = 5  # progress ticks of build_report: rollup, usage, tags, previous period, shaping
TOP_TAGS = 10

# Figures, in report order. Money figures end in ``_nanos`` inside; they print as ``_usd``.
FIGURES: tuple[str, ...] = (
    "calls",
    "errors",
    "incomplete",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_nanos",
    "paid_nanos",
    "free_nanos",
    "free_calls",
    "free_tokens",
    "free_list_nanos",
    "unpriced_calls",
    "unpriced_tokens",
    "usage_unknown_calls",
)
CHANGE_FIGURES: tuple[str, ...] = (
    "calls",
    "errors",
    "total_tokens",
    "cost_nanos",
    "paid_nanos",
    "free_list_nanos",
    "unpriced_calls",
)
_SQL_MEASURES = (
    "events",
    "usage_known",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_nanos",
    "list_cost_nanos",
)
_KEYS = ("day", "project", "model", "status", "kind", "free", "priced")


class ReportError(ValueError):
    """A report that cannot be made as asked, said in one line."""


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One report's figures. Money columns and values are integer nano-dollars (``*_nanos``).

    Attributes:
        project: the project, or ``None`` for all projects.
        period, previous: the period and the one before it, of the same kind.
        tz: the zone's name.
        start, end, previous_start, previous_end: UTC instants bounding the periods.
        totals, previous_totals: every figure of :data:`FIGURES`.
        days: one row per local day (index: the date), every figure.
        models, projects: one row per model / project, every figure, by cost then calls.
        tags: the top tags: ``key, value, calls, total_tokens, cost_nanos``.
        unpriced: models with unpriced usage: ``model, unpriced_calls, unpriced_tokens``.
    """

    project: str | None
    period: Period
    tz: str
    start: datetime
    end: datetime
    previous: Period
    previous_start: datetime
    previous_end: datetime
    totals: dict[str, int]
    previous_totals: dict[str, int]
    days: Any
    models: Any
    projects: Any
    tags: Any
    unpriced: Any
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def frames(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "models": self.models,
            "projects": self.projects,
            "tags": self.tags,
            "unpriced": self.unpriced,
        }

    def change(self) -> list[dict[str, Any]]:
        """For each of :data:`CHANGE_FIGURES`: current, previous, absolute change and percent
        (a ``Decimal`` to two places, ``None`` when the previous figure is 0)."""
        rows = []
        for name in CHANGE_FIGURES:
            cur, prev = self.totals[name], self.previous_totals[name]
            pct = (
                None
                if prev == 0
                else (Decimal(cur - prev) * 100 / Decimal(prev)).quantize(
                    Decimal("0.01"), rounding=ROUND_HALF_EVEN
                )
            )
            rows.append(
                {"figure": name, "current": cur, "previous": prev, "change": cur - prev, "percent": pct}
            )
        return rows


def _day_case(column: Any, bounds: Sequence[datetime]) -> Any:
    """The index of the local day a bucket falls in, given the period's boundaries."""
    inner = bounds[1:-1]
    if not inner:
        return literal(0)
    return case(*[(column < b, i) for i, b in enumerate(inner)], else_=len(inner))


def _usage_rows(
    conn: Connection, bounds: Sequence[datetime], project: str | None, within: Collection[str] | None
) -> list[tuple[Any, ...]]:
    r = UsageRollupRow.__table__.c
    inner = select(
        _day_case(r.bucket, bounds).label("day"),
        r.project,
        r.model,
        r.status,
        r.kind,
        r.free,
        r.priced,
        *[r[m] for m in _SQL_MEASURES],
    ).where(r.bucket >= bounds[0], r.bucket < bounds[-1])
    if project is not None:
        inner = inner.where(r.project == project)
    if within is not None:
        inner = inner.where(r.project.in_(sorted(within)))
    sub = inner.subquery()
    keys = [sub.c[k] for k in _KEYS]
    query = select(*keys, *[func.coalesce(func.sum(sub.c[m]), 0) for m in _SQL_MEASURES]).group_by(*keys)
    return [tuple(row) for row in conn.execute(query)]


def _tag_rows(
    conn: Connection,
    start: datetime,
    end: datetime,
    project: str | None,
    limit: int,
    within: Collection[str] | None,
) -> list[tuple[Any, ...]]:
    t = TagRollupRow.__table__.c
    calls, tokens, cost = func.sum(t.events), func.sum(t.total_tokens), func.sum(t.cost_nanos)
    query = (
        select(t.key, t.value, calls, tokens, cost)
        .where(t.bucket >= start, t.bucket < end)
        .group_by(t.key, t.value)
        .order_by(cost.desc(), calls.desc(), t.key, t.value)
        .limit(limit)
    )
    if project is not None:
        query = query.where(t.project == project)
    if within is not None:
        query = query.where(t.project.in_(sorted(within)))
    return [tuple(row) for row in conn.execute(query)]


def _int_column(values: Sequence[Any]) -> Any:
    """A pandas column of exact Python ints (object dtype: never float, never a wrapping int64)."""
    return pd.Series([int(v or 0) for v in values], dtype=object)


def _frame(rows: Sequence[tuple[Any, ...]]) -> Any:
    """SQL rows -> one row per grain with every figure, as exact ints."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * (len(_KEYS) + len(_SQL_MEASURES))
    df = pd.DataFrame(
        {
            "day": _int_column(cols[0]),
            "project": pd.Series([str(v) for v in cols[1]], dtype=object),
            "model": pd.Series([str(v) for v in cols[2]], dtype=object),
            "status": pd.Series([str(v) for v in cols[3]], dtype=object),
            "kind": pd.Series([str(v) for v in cols[4]], dtype=object),
            "free": pd.Series([bool(v) for v in cols[5]], dtype=bool),
            "priced": pd.Series([bool(v) for v in cols[6]], dtype=bool),
            **{m: _int_column(cols[len(_KEYS) + i]) for i, m in enumerate(_SQL_MEASURES)},
        }
    )
    usage = df["kind"] == "usage"
    correction = df["kind"] == "correction"
    unpriced_ok = (df["status"] == "ok") & ~df["priced"]
    zero = pd.Series([0] * len(df), dtype=object)

    def pick(col: str, cond: Any) -> Any:
        return df[col].where(cond, zero)

    out = pd.DataFrame(
        {
            "day": df["day"],
            "project": df["project"],
            "model": df["model"],
            "calls": pick("events", usage),
            "errors": pick("events", usage & (df["status"] == "error")),
            "incomplete": pick("events", usage & (df["status"] == "incomplete")),
            "input_tokens": df["prompt_tokens"],
            "cached_tokens": df["cached_tokens"],
            "output_tokens": df["completion_tokens"],
            "reasoning_tokens": df["reasoning_tokens"],
            "total_tokens": df["total_tokens"],
            "cost_nanos": df["cost_nanos"],
            "paid_nanos": pick("cost_nanos", ~df["free"]),
            "free_nanos": pick("cost_nanos", df["free"]),
            "free_calls": pick("events", usage & df["free"]),
            "free_tokens": pick("total_tokens", df["free"]),
            "free_list_nanos": pick("list_cost_nanos", df["free"]),
            # An unpriced reversal takes back one unpriced call; restatements are always priced.
            "unpriced_calls": pick("events", usage & unpriced_ok) - pick("events", correction & unpriced_ok),
            "unpriced_tokens": pick("total_tokens", unpriced_ok),
            "usage_unknown_calls": (
                pick("events", usage & (df["status"] == "incomplete"))
                - pick("usage_known", usage & (df["status"] == "incomplete"))
            ),
        }
    )
    return out


def _sum_by(df: Any, key: str) -> Any:
    grouped = (
        df.groupby(key, sort=True)[list(FIGURES)].sum()
        if len(df)
        else pd.DataFrame({f: pd.Series([], dtype=object) for f in FIGURES})
    )
    return grouped.astype(object)


def _ranked(df: Any, key: str) -> Any:
    grouped = _sum_by(df, key)
    order = sorted(
        grouped.index, key=lambda k: (-grouped.at[k, "cost_nanos"], -grouped.at[k, "calls"], str(k))
    )
    out = grouped.loc[order] if order else grouped
    out.index.name = key
    return out


def _totals(df: Any) -> dict[str, int]:
    return {f: sum((int(v) for v in df[f].tolist()), 0) for f in FIGURES}


def check_no_floats(df: Any) -> None:
    """Raise ``TypeError`` if any column of ``df`` is floating point or holds a non-int figure."""
    for name, dtype in df.dtypes.items():
        if pd.api.types.is_float_dtype(dtype):
            raise TypeError(f"column {name!r} is {dtype}; money and counts must stay integers")
    for name in df.columns:
        if name in FIGURES:
            bad = [v for v in df[name].tolist() if type(v) is not int]
            if bad:
                raise TypeError(f"column {name!r} holds {type(bad[0]).__name__}, not int")


def build_report(
    engine: Engine,
    period: Period,
    tz: tzinfo,
    project: str | None = None,
    *,
    refresh: bool = True,
    top_tags: int = TOP_TAGS,
    progress: Callable[[int], None] | None = None,
    within: Collection[str] | None = None,
) -> Report:
    """Roll up what is pending (unless ``refresh`` is false), then make the report from the rollups.

    ``within``, if given, limits an all-projects report to those projects (a viewer's scope in
    the service). ``progress`` is called with 1 after each of :data:`BUILD_STEPS` steps."""
    from ledger.store.rollup import rollup

    def tick() -> None:
        if progress is not None:
            progress(1)

    bounds = period_bounds(period, tz)
    previous = period.previous()
    prev_bounds = period_bounds(previous, tz)
    if refresh:
        rollup(engine)
    tick()
    with read_snapshot(engine) as conn:  # the three reads agree with each other
        current = _frame(_usage_rows(conn, bounds, project, within))
        tick()
        tag_rows = _tag_rows(conn, bounds[0], bounds[-1], project, top_tags, within)
        tick()
        before = _frame(_usage_rows(conn, [prev_bounds[0], prev_bounds[-1]], project, within))
        tick()
    local_days = period.local_days()
    days = _sum_by(current, "day").reindex(range(period.days), fill_value=0).astype(object)
    days.index = pd.Index(local_days, name="day", dtype=object)
    models = _ranked(current, "model")
    projects = _ranked(current, "project")
    tags = pd.DataFrame(
        {
            "key": pd.Series([str(r[0]) for r in tag_rows], dtype=object),
            "value": pd.Series([str(r[1]) for r in tag_rows], dtype=object),
            "calls": _int_column([r[2] for r in tag_rows]),
            "total_tokens": _int_column([r[3] for r in tag_rows]),
            "cost_nanos": _int_column([r[4] for r in tag_rows]),
        }
    )
    unpriced = models.loc[
        (models["unpriced_calls"] != 0) | (models["unpriced_tokens"] != 0),
        ["unpriced_calls", "unpriced_tokens"],
    ].reset_index()
    report = Report(
        project=project,
        period=period,
        tz=zone_name(tz),
        start=bounds[0],
        end=bounds[-1],
        previous=previous,
        previous_start=prev_bounds[0],
        previous_end=prev_bounds[-1],
        totals=_totals(current),
        previous_totals=_totals(before),
        days=days,
        models=models,
        projects=projects,
        tags=tags,
        unpriced=unpriced,
    )
    for frame in report.frames().values():
        check_no_floats(frame)
    tick()
    return report
