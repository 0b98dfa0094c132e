"""Reports: the CSV and JSON renderings of a :class:`~ledger.reports.build.Report`, and how figures print.

Money figures (``*_nanos`` inside) print as exact 9-decimal USD strings under ``*_usd`` names
(:func:`public`, :func:`figure_value`); counts print as integers.

**CSV is for spreadsheets, JSON for programs.** Following OWASP's CSV-injection advice, a CSV cell
that would begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``
so that Excel, LibreOffice or Google Sheets show it as text instead of running it as a formula
(:func:`ledger.config.spreadsheet_cell`). Plain decimal numbers (negative amounts and changes)
are never changed. Project names cannot begin with those characters
(:func:`ledger.config.check_project`), so they always appear byte-exact; a tag or a model name
that does (or a project name stored before that rule) begins with one extra ``'``. The JSON
report carries every value exactly, unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ledger.calendar import Period, iso_z
from ledger.money import Money
from ledger.outfile import csv_cell
from ledger.reports.build import FIGURES, Report

__all__ = ["figure_value", "public", "to_csv", "to_dict", "to_json"]


def public(name: str) -> str:
    """A figure's printed name: money ``*_nanos`` becomes ``*_usd``."""
    return name[:-6] + "_usd" if name.endswith("_nanos") else name


def figure_value(name: str, value: int) -> str:
    """A figure as printed: money (``*_nanos``) as an exact 9-decimal USD string, counts as integers."""
    return str(Money(int(value))) if name.endswith("_nanos") else str(int(value))


def _json_value(name: str, value: int) -> Any:
    return str(Money(int(value))) if name.endswith("_nanos") else int(value)


def _figures(row: Mapping[str, Any], names: Sequence[str] = FIGURES) -> dict[str, Any]:
    return {public(n): _json_value(n, row[n]) for n in names}


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
            "figure": public(c["figure"]),
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
