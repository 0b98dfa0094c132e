"""Reports: per-project spend for a day, an ISO week or a month, in any IANA time zone.

A report covers one period (``2026-11-27``, ``2026-W48`` or ``2026-11``) of one project or of
all, counted in local days of a chosen zone: the period runs from the local midnight that
starts it to the one that ends it, both turned into UTC instants. It reads the rollup tables
only (``usage_rollup``, ``tag_rollup``; :func:`ledger.rollup.rollup` runs first so they are
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

Outputs: CSV (one long table: ``section,item,detail,figure,value``), JSON, and a self-contained
HTML dashboard with inline SVG charts (no script, no network; every untrusted string escaped).

**CSV is for spreadsheets, JSON for programs.** Following OWASP's CSV-injection advice, a CSV cell
that would begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``
so that Excel, LibreOffice or Google Sheets show it as text instead of running it as a formula
(:func:`ledger.config.spreadsheet_cell`). Plain decimal numbers (negative amounts and changes)
are never changed. Project names cannot begin with those characters
(:func:`ledger.config.check_project`), so they always appear byte-exact; a tag or a model name
that does (or a project name stored before that rule) begins with one extra ``'``. The JSON
report carries every value exactly, unchanged.

Files go to ``$LEDGER_REPORTS_DIR/<project folder>/<period>_<zone>.<fmt>`` (default folder
``./reports``) or where asked; the project folder is a safe slug plus a short hash, so no name
leaves the reports folder; files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import Connection, Engine, case, func, literal, select

from ledger.calendar import Period, day_of, iso_z, parse_zone, period_bounds, zone_name
from ledger.outfile import csv_cell
from ledger.money import Money
from ledger.store.schema import TagRollupRow, UsageRollupRow
from ledger.store import read_snapshot

__all__ = [
    "BUILD_STEPS",
    "CHANGE_FIGURES",
    "COLORS",
    "FIGURES",
    "FORMATS",
    "Report",
    "ReportError",
    "build_report",
    "check_no_floats",
    "daily_reports",
    "default_path",
    "figure_value",
    "project_folder",
    "render",
    "reports_dir",
    "to_csv",
    "to_html",
    "to_json",
    "write_file",
    "write_report",
]

FORMATS = ("csv", "json", "html")
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
LABELS = {
    "calls": "Calls",
    "errors": "Errors",
    "incomplete": "Incomplete",
    "input_tokens": "Input tokens",
    "cached_tokens": "Cached tokens",
    "output_tokens": "Output tokens",
    "reasoning_tokens": "Reasoning tokens",
    "total_tokens": "Total tokens",
    "cost_nanos": "Cost (USD)",
    "paid_nanos": "Paid cost (USD)",
    "free_nanos": "Free cost (USD)",
    "free_calls": "Free calls",
    "free_tokens": "Free tokens",
    "free_list_nanos": "Free usage at list price (USD)",
    "unpriced_calls": "Unpriced calls",
    "unpriced_tokens": "Unpriced tokens",
    "usage_unknown_calls": "Usage unknown (incomplete calls)",
}
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
# Chart colours; the HTML test looks for these pixels.
COLORS = {"paid": "#e8590c", "free_list": "#2f9e44", "model_cost": "#1971c2", "model_free_list": "#9c36b5"}


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


def _usage_rows(conn: Connection, bounds: Sequence[datetime], project: str | None) -> list[tuple[Any, ...]]:
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
    sub = inner.subquery()
    keys = [sub.c[k] for k in _KEYS]
    query = select(*keys, *[func.coalesce(func.sum(sub.c[m]), 0) for m in _SQL_MEASURES]).group_by(*keys)
    return [tuple(row) for row in conn.execute(query)]


def _tag_rows(
    conn: Connection, start: datetime, end: datetime, project: str | None, limit: int
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
) -> Report:
    """Roll up what is pending (unless ``refresh`` is false), then make the report from the rollups.

    ``progress`` is called with 1 after each of :data:`BUILD_STEPS` steps."""
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
        current = _frame(_usage_rows(conn, bounds, project))
        tick()
        tag_rows = _tag_rows(conn, bounds[0], bounds[-1], project, top_tags)
        tick()
        before = _frame(_usage_rows(conn, [prev_bounds[0], prev_bounds[-1]], project))
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


# -- presenting --------------------------------------------------------------------------------


def _public(name: str) -> str:
    return name[:-6] + "_usd" if name.endswith("_nanos") else name


def figure_value(name: str, value: int) -> str:
    """A figure as printed: money (``*_nanos``) as an exact 9-decimal USD string, counts as integers."""
    return str(Money(int(value))) if name.endswith("_nanos") else str(int(value))


def _json_value(name: str, value: int) -> Any:
    return str(Money(int(value))) if name.endswith("_nanos") else int(value)


def _figures(row: Mapping[str, Any], names: Sequence[str] = FIGURES) -> dict[str, Any]:
    return {_public(n): _json_value(n, row[n]) for n in names}



def _period_dict(period: Period, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "kind": period.kind,
        "label": period.label,
        "days": period.days,
        "start_utc": iso_z(start),
        "end_utc": iso_z(end),
    }


def _change_rows(report: Report) -> list[dict[str, Any]]:
    return [
        {
            "figure": _public(c["figure"]),
            "current": _json_value(c["figure"], c["current"]),
            "previous": _json_value(c["figure"], c["previous"]),
            "change": _json_value(c["figure"], c["change"]),
            "change_pct": None if c["percent"] is None else str(c["percent"]),
        }
        for c in report.change()
    ]


def to_dict(report: Report) -> dict[str, Any]:
    """Every figure of the report as JSON-ready values (money as exact decimal strings)."""
    return {
        "report": "cerebras-ledger spend report",
        "project": report.project,
        "tz": report.tz,
        "period": _period_dict(report.period, report.start, report.end),
        "previous_period": _period_dict(report.previous, report.previous_start, report.previous_end),
        "generated_at": iso_z(report.generated_at),
        "totals": _figures(report.totals),
        "previous_totals": _figures(report.previous_totals),
        "change": _change_rows(report),
        "by_day": [{"day": d.isoformat(), **_figures(row)} for d, row in report.days.iterrows()],
        "by_model": [{"model": m, **_figures(row)} for m, row in report.models.iterrows()],
        "by_project": [{"project": p, **_figures(row)} for p, row in report.projects.iterrows()],
        "top_tags": [
            {
                "key": r["key"],
                "value": r["value"],
                "calls": int(r["calls"]),
                "total_tokens": int(r["total_tokens"]),
                "cost_usd": figure_value("cost_nanos", r["cost_nanos"]),
            }
            for _, r in report.tags.iterrows()
        ],
        "unpriced": {
            "calls": report.totals["unpriced_calls"],
            "tokens": report.totals["unpriced_tokens"],
            "by_model": [
                {"model": r["model"], "calls": int(r["unpriced_calls"]), "tokens": int(r["unpriced_tokens"])}
                for _, r in report.unpriced.iterrows()
            ],
        },
        "usage_unknown": {"calls": report.totals["usage_unknown_calls"]},
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("section", "item", "detail", "figure", "value")


class _SpreadsheetWriter:
    """A ``csv.writer`` whose cells are made inert for spreadsheets (:func:`ledger.outfile.csv_cell`)."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: Sequence[Any]) -> None:
        self._writer.writerow([csv_cell(v, spreadsheet=True) for v in row])


def to_csv(report: Report) -> str:
    """One long table, ``section,item,detail,figure,value``; values exact (money in USD strings),
    except that a text cell that would start a spreadsheet formula starts with ``'`` (see the module
    docstring)."""
    data = to_dict(report)
    buf = io.StringIO(newline="")
    w = _SpreadsheetWriter(csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL))
    w.writerow(CSV_COLUMNS)
    w.writerow(["report", "", "", "project", "" if report.project is None else report.project])
    w.writerow(["report", "", "", "scope", "all projects" if report.project is None else "project"])
    w.writerow(["report", "", "", "tz", report.tz])
    for which in ("period", "previous_period"):
        for k, v in data[which].items():
            w.writerow([which, "", "", k, v])
    w.writerow(["report", "", "", "generated_at", data["generated_at"]])

    def figures(section: str, item: str, detail: str, row: Mapping[str, Any]) -> None:
        for k, v in row.items():
            w.writerow([section, item, detail, k, v])

    figures("totals", "", "", data["totals"])
    figures("previous_totals", "", "", data["previous_totals"])
    for c in data["change"]:
        for k in ("current", "previous", "change", "change_pct"):
            w.writerow(["change", c["figure"], "", k, "" if c[k] is None else c[k]])
    for row in data["by_day"]:
        figures("day", row.pop("day"), "", row)
    for row in data["by_model"]:
        figures("model", row.pop("model"), "", row)
    for row in data["by_project"]:
        figures("project", row.pop("project"), "", row)
    for row in data["top_tags"]:
        figures("tag", row.pop("key"), row.pop("value"), row)
    for row in data["unpriced"]["by_model"]:
        figures("unpriced_model", row.pop("model"), "", row)
    return buf.getvalue()


# -- HTML --------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _signed(name: str, value: int) -> str:
    text = figure_value(name, value)
    return "+" + text if value > 0 else text


def _cell(key: str, text: str, *, num: bool = True) -> str:
    cls = ' class="num"' if num else ""
    return f'<td{cls} data-figure="{_e(key)}">{_e(text)}</td>'


def _scale(value: int, top: int, size: int) -> int:
    """Pixels for ``value`` on a ``size``-pixel axis whose end is ``top``: integer arithmetic."""
    return 0 if value <= 0 or top <= 0 else max(1, value * size // top)


def _legend(x: int, y: int, items: Sequence[tuple[str, str]]) -> str:
    parts = []
    for color, label in items:
        parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y + 9}" class="lg">{_e(label)}</text>'
        )
        x += 24 + 7 * len(label)
    return "".join(parts)


def _daily_chart(report: Report) -> str:
    width, height, left, top, plot_h = 1160, 300, 90, 30, 220
    rows = [(d, int(r["paid_nanos"]), int(r["free_list_nanos"])) for d, r in report.days.iterrows()]
    peak = max([v for _, p, f in rows for v in (p, f)] + [0])
    n = max(len(rows), 1)
    slot = (width - left - 10) // n
    bar = max(2, min(40, (slot - 4) // 2))
    base = top + plot_h
    out = [
        (
            f'<svg id="daily-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" '
            'aria-label="Daily paid cost and free usage at list price" '
            f'shape-rendering="crispEdges">'
        ),
        f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#868e96"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#868e96"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="ax" text-anchor="end">{_e(str(Money(peak)))}</text>',
        f'<text x="{left - 6}" y="{base}" class="ax" text-anchor="end">0</text>',
    ]
    for i, (d, paid, free_list) in enumerate(rows):
        x = left + i * slot + max(1, (slot - 2 * bar) // 2)
        for j, (value, color, what) in enumerate(
            ((paid, COLORS["paid"], "paid"), (free_list, COLORS["free_list"], "free usage at list price"))
        ):
            h = _scale(value, peak, plot_h)
            out.append(
                f'<rect x="{x + j * bar}" y="{base - h}" width="{bar}" height="{h}" fill="{color}">'
                f"<title>{_e(d.isoformat())} {_e(what)}: {_e(str(Money(value)))} USD</title></rect>"
            )
        label = str(d.day) if report.period.kind == "month" else d.strftime("%a %d")
        out.append(
            f'<text x="{left + i * slot + slot // 2}" y="{base + 16}" class="ax" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    out.append(
        _legend(
            left,
            height - 22,
            [(COLORS["paid"], "paid cost"), (COLORS["free_list"], "free usage at list price")],
        )
    )
    out.append("</svg>")
    return "".join(out)


def _model_chart(report: Report) -> str:
    rows = [(str(m), int(r["cost_nanos"]), int(r["free_list_nanos"])) for m, r in report.models.iterrows()][
        :15
    ]
    width, left, row_h, top = 1160, 300, 34, 10
    plot_w = width - left - 180
    height = top + max(len(rows), 1) * row_h + 40
    peak = max([v for _, c, f in rows for v in (c, f)] + [0])
    out = [
        (
            f'<svg id="model-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="Cost by model" '
            'shape-rendering="crispEdges">'
        )
    ]
    for i, (model, cost, free_list) in enumerate(rows):
        y = top + i * row_h
        shown = model if len(model) <= 40 else model[:39] + "…"
        out.append(
            f'<text x="{left - 8}" y="{y + 17}" class="ax" text-anchor="end">{_e(shown or "(none)")}</text>'
        )
        for j, (value, color, what) in enumerate(
            (
                (cost, COLORS["model_cost"], "cost"),
                (free_list, COLORS["model_free_list"], "free usage at list price"),
            )
        ):
            w = _scale(value, peak, plot_w)
            out.append(
                f'<rect x="{left}" y="{y + j * 13}" width="{w}" height="12" fill="{color}">'
                f"<title>{_e(model)} {_e(what)}: {_e(str(Money(value)))} USD</title></rect>"
            )
        out.append(
            f'<text x="{left + _scale(max(cost, free_list), peak, plot_w) + 6}" y="{y + 17}" class="ax">'
            f"{_e(str(Money(cost)))}</text>"
        )
    out.append(
        _legend(
            left,
            height - 22,
            [(COLORS["model_cost"], "cost"), (COLORS["model_free_list"], "free usage at list price")],
        )
    )
    out.append("</svg>")
    return "".join(out)


def _table(
    title: str,
    key_names: Sequence[str],
    rows: Sequence[tuple[Sequence[str], str, Mapping[str, Any]]],
    names: Sequence[str],
) -> str:
    """A table: ``rows`` are (key cells, figure key prefix, figures)."""
    head = "".join(f"<th>{_e(k)}</th>" for k in key_names) + "".join(
        f'<th class="num">{_e(LABELS.get(n, n))}</th>' for n in names
    )
    body = []
    for keys, prefix, figs in rows:
        cells = "".join(f"<td>{_e(k)}</td>" for k in keys)
        cells += "".join(_cell(f"{prefix}.{_public(n)}", figure_value(n, figs[n])) for n in names)
        body.append(f"<tr>{cells}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(key_names) + len(names)}" class="empty">none</td></tr>')
    return f"<h2>{_e(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px;color:#212529;
background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}.sub{color:#495057;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #dee2e6;border-radius:6px;padding:10px 14px;
min-width:170px}.card .v{font-size:20px;font-weight:600}.card .l{color:#495057;font-size:12px}
.warn{background:#fff4e6;border:1px solid #ffa94d;border-radius:6px;padding:8px 12px;margin-top:12px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:left}
.num{text-align:right;font-variant-numeric:tabular-nums}.empty{color:#868e96}
svg .ax{font-size:11px;fill:#495057}svg .lg{font-size:12px;fill:#212529}
"""


def to_html(report: Report) -> str:
    """The budget dashboard: one self-contained page, inline SVG charts, no script, no network."""
    t = report.totals
    who = "all projects" if report.project is None else f"project {report.project}"
    change = {c["figure"]: c for c in report.change()}

    def card(name: str) -> str:
        c = change.get(name)
        note = ""
        if c is not None:
            pct = "" if c["percent"] is None else f" ({c['percent']:+}%)"
            note = (
                f'<div class="l">vs {_e(report.previous.label)}: '
                f'<span data-figure="card.{_public(name)}.change">{_e(_signed(name, c["change"]))}</span>'
                f"{_e(pct)}</div>"
            )
        return (
            f'<div class="card"><div class="l">{_e(LABELS[name])}</div>'
            f'<div class="v" data-figure="card.{_public(name)}">{_e(figure_value(name, t[name]))}</div>'
            f"{note}</div>"
        )

    warn = ""
    if t["unpriced_calls"] or t["unpriced_tokens"] or t["usage_unknown_calls"]:
        warn = (
            f'<div class="warn">Unpriced usage: <b data-figure="warn.unpriced_calls">'
            f'{t["unpriced_calls"]}</b> call(s), <b data-figure="warn.unpriced_tokens">'
            f'{t["unpriced_tokens"]}</b> token(s) have no price '
            f'and are not in the cost. Usage unknown: <b data-figure="warn.usage_unknown_calls">'
            f"{t['usage_unknown_calls']}</b> incomplete call(s).</div>"
        )
    totals_table = (
        '<h2>Totals</h2><table><thead><tr><th>figure</th><th class="num">value</th></tr></thead><tbody>'
        + "".join(
            f"<tr><td>{_e(LABELS[n])}</td>{_cell(f'totals.{_public(n)}', figure_value(n, t[n]))}</tr>"
            for n in FIGURES
        )
        + "</tbody></table>"
    )
    change_rows = "".join(
        f"<tr><td>{_e(LABELS[c['figure']])}</td>"
        + _cell(f"change.{_public(c['figure'])}.current", figure_value(c["figure"], c["current"]))
        + _cell(f"change.{_public(c['figure'])}.previous", figure_value(c["figure"], c["previous"]))
        + _cell(f"change.{_public(c['figure'])}.change", figure_value(c["figure"], c["change"]))
        + _cell(
            f"change.{_public(c['figure'])}.change_pct", "" if c["percent"] is None else str(c["percent"])
        )
        + "</tr>"
        for c in report.change()
    )
    day_names = (
        "calls",
        "errors",
        "total_tokens",
        "paid_nanos",
        "free_nanos",
        "free_list_nanos",
        "cost_nanos",
        "unpriced_calls",
    )
    model_names = (
        "calls",
        "errors",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "paid_nanos",
        "free_list_nanos",
        "cost_nanos",
        "unpriced_calls",
        "unpriced_tokens",
    )
    days = _table(
        "By day",
        ["day"],
        [((d.isoformat(),), f"day.{d.isoformat()}", r) for d, r in report.days.iterrows()],
        day_names,
    )
    models = _table(
        "By model",
        ["model"],
        [((str(m),), f"model.{m}", r) for m, r in report.models.iterrows()],
        model_names,
    )
    projects = (
        ""
        if report.project is not None
        else _table(
            "By project",
            ["project"],
            [((str(p),), f"project.{p}", r) for p, r in report.projects.iterrows()],
            model_names,
        )
    )
    tags = _table(
        "Top tags",
        ["key", "value"],
        [
            ((str(r["key"]), str(r["value"])), f"tag.{r['key']}={r['value']}", r)
            for _, r in report.tags.iterrows()
        ],
        ("calls", "total_tokens", "cost_nanos"),
    )
    unpriced = _table(
        "Unpriced usage by model",
        ["model"],
        [((str(r["model"]),), f"unpriced.{r['model']}", r) for _, r in report.unpriced.iterrows()],
        ("unpriced_calls", "unpriced_tokens"),
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Spend report: {_e(who)}, {_e(report.period.label)}</title>
<style>{_CSS}</style></head>
<body>
<h1>Spend report: <span data-figure="project">{_e(who)}</span></h1>
<p class="sub">{_e(report.period.kind)} <b data-figure="period">{_e(report.period.label)}</b> in
<span data-figure="tz">{_e(report.tz)}</span> ({_e(iso_z(report.start))} to {_e(iso_z(report.end))});
compared with {_e(report.previous.label)}.
Generated {_e(iso_z(report.generated_at))} from the ledger's rollups.</p>
<div class="cards">{card("paid_nanos")}{card("free_list_nanos")}{card("calls")}{card("total_tokens")}
{card("errors")}{card("unpriced_calls")}</div>
{warn}
<h2>Daily cost: paid, and free usage at list price</h2>
{_daily_chart(report)}
<h2>Cost by model</h2>
{_model_chart(report)}
<h2>Change against {_e(report.previous.label)}</h2>
<table><thead><tr><th>figure</th><th class="num">current</th><th class="num">previous</th>
<th class="num">change</th><th class="num">change %</th></tr></thead><tbody>{change_rows}</tbody></table>
{totals_table}
{days}
{models}
{projects}
{tags}
{unpriced}
<p class="sub">Money in US dollars, exact to the nano-dollar. Free usage at list price: what the free calls
would have cost at Cerebras's list prices.</p>
</body></html>
"""


def render(report: Report, fmt: str) -> str:
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "html":
        return to_html(report)
    raise ReportError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


# -- files -------------------------------------------------------------------------------------


def reports_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$LEDGER_REPORTS_DIR``, else ``./reports``."""
    chosen = (os.environ if env is None else env).get("LEDGER_REPORTS_DIR")
    return Path(chosen).expanduser() if chosen else Path("reports")


def _slug(text: str, limit: int) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text).strip("-_")[:limit].strip("-_")
    return slug


def project_folder(project: str | None) -> str:
    """A folder name for ``project`` that cannot leave its parent: a slug plus a hash of the name."""
    if project is None:
        return "all-projects"
    digest = hashlib.sha256(project.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{_slug(project, 40) or 'project'}-{digest}"


def _file_name(period: Period, tz: str, fmt: str) -> str:
    return f"{period.label}_{_slug(tz.replace('/', '-'), 60) or 'zone'}.{fmt}"


def default_path(base: Path, project: str | None, period: Period, tz: str, fmt: str) -> Path:
    """``base/<project folder>/<period>_<zone>.<fmt>``, checked to be inside ``base``."""
    path = base / project_folder(project) / _file_name(period, tz, fmt)
    root = base.resolve()
    if root not in path.resolve().parents:
        raise ReportError(f"report path {path} would leave the reports folder {base}")
    return path


def write_file(path: Path, data: str) -> None:
    """Write ``data`` (UTF-8) to ``path`` atomically and owner-only (:class:`~ledger.outfile.OutFile`:
    a temporary file beside it, then a rename; never over a device, a symlink or a folder)."""
    from ledger.outfile import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data.encode("utf-8", "replace"))


def write_report(report: Report, fmt: str, out: Path | None = None, base: Path | None = None) -> Path:
    """Render and write; returns the path. ``out`` is a file, or a folder (existing, or written with a
    trailing slash) to put the default file name in; without it the file goes under ``base``
    (default :func:`reports_dir`)."""
    text = render(report, fmt)
    if out is None:
        path = default_path(base or reports_dir(), report.project, report.period, report.tz, fmt)
    elif out.is_dir() or str(out).endswith(("/", os.sep)):
        path = Path(out) / f"{project_folder(report.project)}_{_file_name(report.period, report.tz, fmt)}"
    else:
        path = out
    write_file(path, text)
    return path


def daily_reports(
    engine: Engine, now: datetime, tz: str, base: Path, formats: Sequence[str] = ("html", "json")
) -> list[Path]:
    """The scheduler's job: yesterday's (in ``tz``) report for all projects and for each project with
    usage that day, under ``base``."""
    from ledger.store.rollup import rollup

    zone = parse_zone(tz)
    period = day_of(now.astimezone(zone).date() - timedelta(days=1))
    bounds = period_bounds(period, zone)
    rollup(engine)
    r = UsageRollupRow.__table__.c
    with engine.connect() as conn:
        projects = sorted(
            str(p)
            for p in conn.execute(
                select(r.project).where(r.bucket >= bounds[0], r.bucket < bounds[-1]).distinct()
            ).scalars()
        )
    written = []
    for project in [None, *projects]:
        report = build_report(engine, period, zone, project, refresh=False)
        written += [write_report(report, fmt, base=base) for fmt in formats]
    return written
