"""Reports: the HTML dashboard of a :class:`~ledger.reports.build.Report`, through Jinja2 templates.

Owns the page's view (cards, tables, chart geometry, :data:`COLORS`, :data:`LABELS`) and the Jinja2
environment that renders ``ledger/reports/templates/report.html`` (on ``base.html``, with the
charts and tables as macros in ``charts.html`` and ``tables.html``).

**Every value reaches the page through autoescape.** The environment is made once, with
``autoescape=True`` and ``StrictUndefined``; no template marks a value ``|safe``. Project, model
and tag names (and every other text) are escaped as :func:`html.escape` with ``quote=True`` does,
byte for byte as the page always was: the environment's ``finalize`` hands each value to
autoescape as a :class:`_Text`, whose ``__html__`` is that escape (and whose ``str()`` is the
raw value, so with autoescape off nothing would be escaped at all).

**Charts are inline SVG, no chart library**: the page stays one self-contained file with no
script at all, so it works under its strict Content-Security-Policy (``default-src 'none'``,
inline styles only) and nothing is ever fetched; and SVG is vector, exact and printable. The
geometry is integer arithmetic on the figures, computed here; the ``<svg>`` elements are written
by the templates from those numbers, the colours and escaped text.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Undefined

from ledger.calendar import iso_z
from ledger.money import Money
from ledger.reports.build import FIGURES, Report
from ledger.reports.formats import figure_value, public

__all__ = ["COLORS", "report_view", "to_html"]

# Chart colours; the HTML test looks for these pixels.
COLORS = {"paid": "#e8590c", "free_list": "#2f9e44", "model_cost": "#1971c2", "model_free_list": "#9c36b5"}
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
_CARDS = ("paid_nanos", "free_list_nanos", "calls", "total_tokens", "errors", "unpriced_calls")
_DAY_FIGURES = (
    "calls",
    "errors",
    "total_tokens",
    "paid_nanos",
    "free_nanos",
    "free_list_nanos",
    "cost_nanos",
    "unpriced_calls",
)
_MODEL_FIGURES = (
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


# -- the environment ---------------------------------------------------------------------------


class _Text:
    """A value on its way into the page: autoescape calls ``__html__``, the stdlib escape."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __html__(self) -> str:
        return html.escape(str(self.value), quote=True)

    def __str__(self) -> str:
        return str(self.value)


def _finalize(value: object) -> object:
    """Jinja's ``finalize``: plain values go to autoescape as :class:`_Text`; markup made by the
    templates themselves (macros) and undefined values (which raise) pass as they are."""
    if isinstance(value, Undefined) or hasattr(value, "__html__"):
        return value
    return _Text(value)


@functools.cache
def _environment() -> Environment:
    """The one Jinja2 environment, made on first use: the package's templates, autoescaped."""
    return Environment(
        loader=PackageLoader("ledger.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# -- the view ----------------------------------------------------------------------------------


def _signed(name: str, value: int) -> str:
    text = figure_value(name, value)
    return "+" + text if value > 0 else text


def _scale(value: int, top: int, size: int) -> int:
    """Pixels for ``value`` on a ``size``-pixel axis whose end is ``top``: integer arithmetic."""
    return 0 if value <= 0 or top <= 0 else max(1, value * size // top)


def _legend(x: int, y: int, items: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for color, label in items:
        out.append({"x": x, "y": y, "color": color, "label": label})
        x += 24 + 7 * len(label)
    return out


def _daily_chart(report: Report) -> dict[str, Any]:
    width, height, left, top, plot_h = 1160, 300, 90, 30, 220
    rows = [(d, int(r["paid_nanos"]), int(r["free_list_nanos"])) for d, r in report.days.iterrows()]
    peak = max([v for _, p, f in rows for v in (p, f)] + [0])
    n = max(len(rows), 1)
    slot = (width - left - 10) // n
    bar = max(2, min(40, (slot - 4) // 2))
    base = top + plot_h
    days = []
    for i, (d, paid, free_list) in enumerate(rows):
        x = left + i * slot + max(1, (slot - 2 * bar) // 2)
        bars = []
        for j, (value, color, what) in enumerate(
            ((paid, COLORS["paid"], "paid"), (free_list, COLORS["free_list"], "free usage at list price"))
        ):
            h = _scale(value, peak, plot_h)
            bars.append(
                {
                    "x": x + j * bar,
                    "y": base - h,
                    "width": bar,
                    "height": h,
                    "color": color,
                    "title": f"{d.isoformat()} {what}: {Money(value)} USD",
                }
            )
        label = str(d.day) if report.period.kind == "month" else d.strftime("%a %d")
        days.append(
            {"bars": bars, "label_x": left + i * slot + slot // 2, "label_y": base + 16, "label": label}
        )
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - 10,
        "top": top,
        "base": base,
        "peak": str(Money(peak)),
        "days": days,
        "legend": _legend(
            left,
            height - 22,
            [(COLORS["paid"], "paid cost"), (COLORS["free_list"], "free usage at list price")],
        ),
    }


def _model_chart(report: Report) -> dict[str, Any]:
    rows = [(str(m), int(r["cost_nanos"]), int(r["free_list_nanos"])) for m, r in report.models.iterrows()][
        :15
    ]
    width, left, row_h, top = 1160, 300, 34, 10
    plot_w = width - left - 180
    height = top + max(len(rows), 1) * row_h + 40
    peak = max([v for _, c, f in rows for v in (c, f)] + [0])
    models = []
    for i, (model, cost, free_list) in enumerate(rows):
        y = top + i * row_h
        shown = model if len(model) <= 40 else model[:39] + "…"
        bars = [
            {
                "x": left,
                "y": y + j * 13,
                "width": _scale(value, peak, plot_w),
                "height": 12,
                "color": color,
                "title": f"{model} {what}: {Money(value)} USD",
            }
            for j, (value, color, what) in enumerate(
                (
                    (cost, COLORS["model_cost"], "cost"),
                    (free_list, COLORS["model_free_list"], "free usage at list price"),
                )
            )
        ]
        models.append(
            {
                "label_x": left - 8,
                "text_y": y + 17,
                "label": shown or "(none)",
                "bars": bars,
                "value_x": left + _scale(max(cost, free_list), peak, plot_w) + 6,
                "value": str(Money(cost)),
            }
        )
    return {
        "width": width,
        "height": height,
        "models": models,
        "legend": _legend(
            left,
            height - 22,
            [(COLORS["model_cost"], "cost"), (COLORS["model_free_list"], "free usage at list price")],
        ),
    }


def _table(
    title: str,
    key_names: Sequence[str],
    rows: Sequence[tuple[Sequence[str], str, Any]],
    names: Sequence[str],
) -> dict[str, Any]:
    """A table: ``rows`` are (key cells, figure key prefix, figures)."""
    return {
        "title": title,
        "heads": [(k, False) for k in key_names] + [(LABELS.get(n, n), True) for n in names],
        "rows": [
            {
                "key_cells": list(keys),
                "cells": [(f"{prefix}.{public(n)}", figure_value(n, figs[n])) for n in names],
            }
            for keys, prefix, figs in rows
        ],
    }


def report_view(report: Report) -> dict[str, Any]:
    """Everything the page shows, as plain values for the template."""
    t = report.totals
    change = report.change()
    by_name = {c["figure"]: c for c in change}
    cards = []
    for name in _CARDS:
        c = by_name.get(name)
        note = None
        if c is not None:
            pct = "" if c["percent"] is None else f" ({c['percent']:+}%)"
            note = {"change": _signed(name, c["change"]), "pct": pct}
        cards.append(
            {"label": LABELS[name], "key": public(name), "value": figure_value(name, t[name]), "note": note}
        )
    change_table = {
        "title": f"Change against {report.previous.label}",
        "heads": [
            ("figure", False),
            ("current", True),
            ("previous", True),
            ("change", True),
            ("change %", True),
        ],
        "rows": [
            {
                "key_cells": [LABELS[c["figure"]]],
                "cells": [
                    (f"change.{public(c['figure'])}.current", figure_value(c["figure"], c["current"])),
                    (f"change.{public(c['figure'])}.previous", figure_value(c["figure"], c["previous"])),
                    (f"change.{public(c['figure'])}.change", figure_value(c["figure"], c["change"])),
                    (
                        f"change.{public(c['figure'])}.change_pct",
                        "" if c["percent"] is None else str(c["percent"]),
                    ),
                ],
            }
            for c in change
        ],
    }
    totals_table = {
        "title": "Totals",
        "heads": [("figure", False), ("value", True)],
        "rows": [
            {"key_cells": [LABELS[n]], "cells": [(f"totals.{public(n)}", figure_value(n, t[n]))]}
            for n in FIGURES
        ],
    }
    tables = [
        _table(
            "By day",
            ["day"],
            [((d.isoformat(),), f"day.{d.isoformat()}", r) for d, r in report.days.iterrows()],
            _DAY_FIGURES,
        ),
        _table(
            "By model",
            ["model"],
            [((str(m),), f"model.{m}", r) for m, r in report.models.iterrows()],
            _MODEL_FIGURES,
        ),
    ]
    if report.project is None:
        tables.append(
            _table(
                "By project",
                ["project"],
                [((str(p),), f"project.{p}", r) for p, r in report.projects.iterrows()],
                _MODEL_FIGURES,
            )
        )
    tables.append(
        _table(
            "Top tags",
            ["key", "value"],
            [
                ((str(r["key"]), str(r["value"])), f"tag.{r['key']}={r['value']}", r)
                for _, r in report.tags.iterrows()
            ],
            ("calls", "total_tokens", "cost_nanos"),
        )
    )
    tables.append(
        _table(
            "Unpriced usage by model",
            ["model"],
            [((str(r["model"]),), f"unpriced.{r['model']}", r) for _, r in report.unpriced.iterrows()],
            ("unpriced_calls", "unpriced_tokens"),
        )
    )
    warn = None
    if t["unpriced_calls"] or t["unpriced_tokens"] or t["usage_unknown_calls"]:
        warn = {k: t[k] for k in ("unpriced_calls", "unpriced_tokens", "usage_unknown_calls")}
    return {
        "who": "all projects" if report.project is None else f"project {report.project}",
        "kind": report.period.kind,
        "period": report.period.label,
        "previous": report.previous.label,
        "tz": report.tz,
        "start": iso_z(report.start),
        "end": iso_z(report.end),
        "generated_at": iso_z(report.generated_at),
        "cards": cards,
        "warn": warn,
        "daily": _daily_chart(report),
        "by_model": _model_chart(report),
        "change_table": change_table,
        "totals_table": totals_table,
        "tables": tables,
    }


def to_html(report: Report) -> str:
    """The budget dashboard: one self-contained page, inline SVG charts, no script, no network."""
    return _environment().get_template("report.html").render(report_view(report))
