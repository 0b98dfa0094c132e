"""Spend reports equal independent sums over the raw ``events`` table, to the last nano-dollar.

Every database test runs on SQLite and PostgreSQL (``db_url``). Expected figures are computed
here in Python from the raw event rows (their local day from ``occurred_at`` in the zone, never
from the rollups or the report's own boundaries). The HTML page is opened in headless Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ledger import calendar, store
from ledger.cli.main import main
from ledger.config import spreadsheet_cell
from ledger.events import CallEvent, Usage
from ledger.money import Money
from ledger.reports import build as reports
from ledger.reports import files, formats
from ledger.reports import html as report_html
from ledger.store import prices as pricedb
from ledger.store import reprice as repricing
from ledger.store import rollup
from ledger.store.schema import EventRow, EventTagRow
from tests.helpers import make_event, write_events

MODELS = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "mystery-model")
FIG = reports.FIGURES
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# -- making events -----------------------------------------------------------------------------


def _event(
    when: datetime,
    project: str,
    model: str,
    route: str = "cerebras",
    status: str = "ok",
    usage: Usage | None = None,
    tags: tuple[tuple[str, str], ...] = (),
) -> CallEvent:
    return make_event(
        occurred_at=when,
        project=project,
        route=route,
        requested_model=model,
        status=status,
        http_status=429 if status == "error" else 200,
        usage=usage if status == "ok" else None,
        tags=tags,
    )


def _random_event(
    rng: random.Random, when: datetime, projects: tuple[str, ...] = ("alpha", "beta", "gamma")
) -> CallEvent:
    prompt, completion = rng.randint(1, 5000), rng.randint(1, 3000)
    usage = Usage(prompt, rng.randint(0, prompt), completion, rng.randint(0, completion), prompt + completion)
    status = rng.choices(("ok", "error", "incomplete"), weights=(85, 8, 7))[0]
    tags = (
        ("feature", rng.choice(("chat", "search", "summarize"))),
        ("user", rng.choice(("ana", "bo", "cy", "di"))),
    )
    return _event(
        when, rng.choice(projects), rng.choice(MODELS), rng.choice(("cerebras", "lava")), status, usage, tags
    )


def _write(engine: sa.Engine, events: list[CallEvent]) -> None:
    write_events(engine, events)


def _spread(
    rng: random.Random,
    start: datetime,
    end: datetime,
    n: int,
    projects: tuple[str, ...] = ("alpha", "beta", "gamma"),
) -> list[CallEvent]:
    seconds = int((end - start).total_seconds())
    return [
        _random_event(
            rng,
            start + timedelta(seconds=rng.randint(0, seconds - 1), microseconds=rng.randint(0, 999_999)),
            projects,
        )
        for _ in range(n)
    ]


# -- the independent expectation ---------------------------------------------------------------


def _raw(engine: sa.Engine) -> tuple[list[dict[str, Any]], dict[str, list[tuple[str, str]]]]:
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(EventRow.__table__))]
        tags: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for r in conn.execute(sa.select(EventTagRow.__table__)):
            tags[r.event_id].append((r.key, r.value))
    return rows, tags


def _contrib(e: dict[str, Any], corrected: set[str]) -> dict[str, int]:
    """What one raw event row adds to each figure."""

    def n(x: Any) -> int:
        return int(x or 0)

    usage = e["kind"] == "usage"
    unpriced = usage and e["status"] == "ok" and not e["priced"] and e["event_id"] not in corrected
    cost = n(e["cost_nanos"])
    return {
        "calls": int(usage),
        "errors": int(usage and e["status"] == "error"),
        "incomplete": int(usage and e["status"] == "incomplete"),
        "input_tokens": n(e["prompt_tokens"]),
        "cached_tokens": n(e["cached_tokens"]),
        "output_tokens": n(e["completion_tokens"]),
        "reasoning_tokens": n(e["reasoning_tokens"]),
        "total_tokens": n(e["total_tokens"]),
        "cost_nanos": cost,
        "paid_nanos": 0 if e["free"] else cost,
        "free_nanos": cost if e["free"] else 0,
        "free_calls": int(usage and bool(e["free"])),
        "free_tokens": n(e["total_tokens"]) if e["free"] else 0,
        "free_list_nanos": n(e["list_cost_nanos"]) if e["free"] else 0,
        "unpriced_calls": int(unpriced),
        "unpriced_tokens": n(e["total_tokens"]) if unpriced else 0,
        "usage_unknown_calls": int(usage and e["status"] == "incomplete" and not e["usage_known"]),
    }


def _add(into: dict[str, int], c: dict[str, int]) -> None:
    for k, v in c.items():
        into[k] = into.get(k, 0) + v


def expect(engine: sa.Engine, period: calendar.Period, tz: Any, project: str | None) -> dict[str, Any]:
    """Totals, days, models, projects and top tags straight from the raw events table."""
    rows, tags = _raw(engine)
    corrected = {r["corrects_event_id"] for r in rows if r["kind"] == "correction"}
    days = set(period.local_days())
    zero = dict.fromkeys(FIG, 0)
    out: dict[str, Any] = {
        "totals": dict(zero),
        "days": {d: dict(zero) for d in period.local_days()},
        "models": defaultdict(lambda: dict(zero)),
        "projects": defaultdict(lambda: dict(zero)),
    }
    tag_sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in rows:
        if e["occurred_at"].astimezone(tz).date() not in days or (
            project is not None and e["project"] != project
        ):
            continue
        c = _contrib(e, corrected)
        _add(out["totals"], c)
        _add(out["days"][e["occurred_at"].astimezone(tz).date()], c)
        _add(out["models"][(e["served_model"] or e["requested_model"] or "")[:100]], c)
        _add(out["projects"][e["project"]], c)
        for k, v in tags.get(e["event_id"], []):
            s = tag_sums[(k, v)]
            s[0] += int(e["kind"] == "usage")
            s[1] += int(e["total_tokens"] or 0)
            s[2] += int(e["cost_nanos"] or 0)
    ranked = sorted(tag_sums.items(), key=lambda kv: (-kv[1][2], -kv[1][0], kv[0][0], kv[0][1]))
    out["tags"] = [(k, v, *s) for (k, v), s in ranked[: reports.TOP_TAGS]]
    out["models"], out["projects"] = dict(out["models"]), dict(out["projects"])
    return out


def got(report: reports.Report) -> dict[str, Any]:
    def table(df: Any) -> dict[Any, dict[str, int]]:
        return {k: {f: row[f] for f in FIG} for k, row in df.iterrows()}

    return {
        "totals": report.totals,
        "days": table(report.days),
        "models": table(report.models),
        "projects": table(report.projects),
        "tags": [
            (r["key"], r["value"], r["calls"], r["total_tokens"], r["cost_nanos"])
            for _, r in report.tags.iterrows()
        ],
    }


def assert_matches(engine: sa.Engine, report: reports.Report, tz: Any) -> dict[str, Any]:
    want = expect(engine, report.period, tz, report.project)
    have = got(report)
    assert have["totals"] == want["totals"]
    assert have["days"] == want["days"]
    assert have["models"] == want["models"]
    assert have["projects"] == want["projects"]
    assert have["tags"] == want["tags"]
    prev = expect(engine, report.previous, tz, report.project)
    assert report.previous_totals == prev["totals"]
    for frame in report.frames().values():  # money and counts never went through float
        reports.check_no_floats(frame)
    return want


def _nanos(text: str) -> int:
    return int(Decimal(text).scaleb(9))


def _json_figures(d: dict[str, Any]) -> dict[str, int]:
    return {
        (k[:-4] + "_nanos" if k.endswith("_usd") else k): (_nanos(v) if k.endswith("_usd") else v)
        for k, v in d.items()
    }


# -- figures against raw events ----------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe/Berlin"])
def test_month_report_equals_raw_events(engine: sa.Engine, zone: str) -> None:
    """Price change mid-month, late events, and corrections from re-pricing: exact every time."""
    tz = ZoneInfo(zone)
    rng = random.Random(11)
    change_at = datetime(2026, 11, 15, 12, tzinfo=UTC)
    with store.write_transaction(engine) as conn:  # the price of gpt-oss-120b changes mid-month
        store.insert_prices(
            conn,
            [
                pricedb.new_point(b, "gpt-oss-120b", "1.00", "2.00", effective_from=change_at)
                for b in ("cerebras", "lava")
            ],
        )
    _write(engine, _spread(rng, datetime(2026, 9, 29, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC), 500))
    # a project with two hand-priced calls, one on each side of the change
    big = Usage(1_000_000, 0, 1_000_000, 0, 2_000_000)
    _write(
        engine,
        [
            _event(change_at - timedelta(seconds=1), "delta", "gpt-oss-120b", usage=big),
            _event(change_at, "delta", "gpt-oss-120b", usage=big),
        ],
    )
    period = calendar.parse_period("2026-11")

    report = reports.build_report(engine, period, tz)
    assert_matches(engine, report, tz)
    assert (
        report.totals["calls"] > 200
        and report.totals["unpriced_calls"] > 0
        and report.totals["free_calls"] > 0
    )
    assert report.totals["free_list_nanos"] > 0 and report.totals["paid_nanos"] > 0
    delta = reports.build_report(engine, period, tz, "delta")
    assert delta.totals["paid_nanos"] == (350 + 750) * 1_000_000 + (1000 + 2000) * 1_000_000  # $1.10 + $3.00
    assert str(Money(delta.totals["cost_nanos"])) == "4.100000000"

    # late events: after their days were rolled up, into this month and the previous one
    _write(engine, _spread(rng, datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 10, tzinfo=UTC), 80))
    late = reports.build_report(engine, period, tz)
    assert late.totals["calls"] > report.totals["calls"]
    assert_matches(engine, late, tz)

    # corrections: the unknown model gets a back-dated price, then the period is re-priced
    with store.write_transaction(engine) as conn:
        store.insert_prices(
            conn,
            [
                pricedb.new_point(
                    b, "mystery-model", "0.10", "0.20", effective_from=datetime(2026, 1, 1, tzinfo=UTC)
                )
                for b in ("cerebras", "lava")
            ],
        )
        store.insert_prices(
            conn,
            [
                pricedb.new_point(
                    "lava", "llama3.1-8b", "0.05", "0.05", effective_from=datetime(2026, 11, 20, tzinfo=UTC)
                )
            ],
        )
        result = repricing.reprice(conn, datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC))
    assert result.corrections > 0
    fixed = reports.build_report(engine, period, tz)
    want = assert_matches(engine, fixed, tz)
    assert fixed.totals["unpriced_calls"] == 0 == want["totals"]["unpriced_calls"]
    assert fixed.totals["calls"] == late.totals["calls"]  # corrections are not calls
    rows, _ = _raw(engine)
    corrections = [r for r in rows if r["kind"] == "correction"]
    assert sum(int(r["cost_nanos"] or 0) for r in corrections) == result.delta.nanos
    assert fixed.totals["cost_nanos"] - late.totals["cost_nanos"] == sum(
        int(r["cost_nanos"] or 0)
        for r in corrections
        if r["occurred_at"].astimezone(tz).date() in period.local_days()
    )
    one = reports.build_report(engine, period, tz, "alpha")
    assert_matches(engine, one, tz)
    assert set(one.projects.index) == {"alpha"}

    # the daily figures agree with rollup.daily_totals too
    with engine.connect() as conn:
        daily = rollup.daily_totals(conn, tz, fixed.start, fixed.end)
    days = {d: (r["calls"], r["total_tokens"], r["cost_nanos"]) for d, r in fixed.days.iterrows()}
    assert {d: (t.calls, t.total_tokens, t.cost_nanos) for d, t in daily.items()} == {
        d: v for d, v in days.items() if d in daily
    }
    assert all(v == (0, 0, 0) for d, v in days.items() if d not in daily)

    # JSON and CSV carry the same figures
    data = json.loads(formats.to_json(fixed))
    assert _json_figures(data["totals"]) == fixed.totals
    assert {date.fromisoformat(d.pop("day")): _json_figures(d) for d in data["by_day"]} == got(fixed)["days"]
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(fixed), newline="")))
    assert {r["figure"]: r["value"] for r in rows if r["section"] == "totals"} == {
        formats.public(k): formats.figure_value(k, v) for k, v in fixed.totals.items()
    }


@pytest.mark.parametrize(
    ("zone", "label", "hours"),
    [
        ("America/New_York", "2026-11-01", 25),  # DST ends: a 25-hour day
        ("America/New_York", "2026-03", 31 * 24 - 1),  # DST starts Mar 8: one 23-hour day
        ("Asia/Kathmandu", "2026-W45", 7 * 24),  # +05:45
    ],
)
def test_local_days_are_exact_across_dst_and_odd_offsets(
    engine: sa.Engine, zone: str, label: str, hours: int
) -> None:
    tz = ZoneInfo(zone)
    period = calendar.parse_period(label)
    bounds = calendar.period_bounds(period, tz)
    assert bounds[-1] - bounds[0] == timedelta(hours=hours)
    rng = random.Random(label)
    prev = calendar.period_bounds(period.previous(), tz)
    events = _spread(
        rng, prev[0] - timedelta(hours=6), bounds[-1] + timedelta(hours=6), 400, ("alpha", "beta")
    )
    for d in [
        *period.previous().local_days(),
        *period.local_days(),
        period.local_days()[-1] + timedelta(days=1),
    ]:
        midnight = datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)
        for delta in (-1, 0, 1, 899, 900):  # where a wrong bucket-to-day mapping would show
            events.append(_random_event(rng, midnight + timedelta(seconds=delta), ("alpha",)))
    _write(engine, events)
    report = reports.build_report(engine, period, tz, "alpha")
    want = assert_matches(engine, report, tz)
    assert want["totals"]["calls"] > 0 and report.previous_totals["calls"] > 0
    everyone = reports.build_report(engine, period, tz)
    assert_matches(engine, everyone, tz)
    assert set(everyone.projects.index) == {"alpha", "beta"}


def test_a_zone_off_the_quarter_hour_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(calendar.CalendarError, match="quarter hours"):
        reports.build_report(engine, calendar.parse_period("2026-11"), timezone(timedelta(minutes=20)))


# -- change against the previous period --------------------------------------------------------


def test_change_against_the_previous_period(engine: sa.Engine, tmp_path: Path) -> None:
    m = Usage(1_000_000, 0, 0, 0, 1_000_000)
    _write(
        engine,
        [
            _event(
                datetime(2026, 10, 31, 22, 59, tzinfo=UTC), "p", "gpt-oss-120b", usage=m
            ),  # Oct 31 in Berlin
            _event(
                datetime(2026, 10, 31, 23, 0, tzinfo=UTC), "p", "gpt-oss-120b", usage=m
            ),  # Nov 1 in Berlin
            _event(datetime(2026, 11, 30, 22, 59, tzinfo=UTC), "p", "gpt-oss-120b", usage=m),  # Nov 30
            _event(
                datetime(2026, 11, 10, tzinfo=UTC), "p", "llama3.1-8b", "lava", usage=m
            ),  # free; list $0.10
            _event(
                datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "p", "gpt-oss-120b", usage=m
            ),  # Dec 1: not counted
        ],
    )
    report = reports.build_report(engine, calendar.parse_period("2026-11"), ZoneInfo("Europe/Berlin"), "p")
    change = {c["figure"]: c for c in report.change()}
    assert change["paid_nanos"] == {
        "figure": "paid_nanos",
        "current": 700_000_000,
        "previous": 350_000_000,
        "change": 350_000_000,
        "percent": Decimal("100.00"),
    }
    assert change["calls"]["current"] == 3 and change["calls"]["percent"] == Decimal("200.00")
    assert (
        change["free_list_nanos"]["current"] == 100_000_000 and change["free_list_nanos"]["percent"] is None
    )
    data = json.loads(formats.to_json(report))
    by = {c["figure"]: c for c in data["change"]}
    assert by["paid_usd"] == {
        "figure": "paid_usd",
        "current": "0.700000000",
        "previous": "0.350000000",
        "change": "0.350000000",
        "change_pct": "100.00",
    }
    assert by["free_list_usd"]["change_pct"] is None
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(report), newline="")))
    cells = {(r["item"], r["figure"]): r["value"] for r in rows if r["section"] == "change"}
    assert cells[("free_list_usd", "change_pct")] == "" and cells[("paid_usd", "change_pct")] == "100.00"
    assert cells[("calls", "change")] == "2"
    falling = reports.build_report(engine, calendar.parse_period("2026-12"), ZoneInfo("Europe/Berlin"), "p")
    assert {c["figure"]: c["percent"] for c in falling.change()}["paid_nanos"] == Decimal("-50.00")


def test_periods_parse_and_step_back() -> None:
    assert calendar.parse_period("2026-W01").previous().label == "2025-W52"
    assert calendar.parse_period("2026-W01").first == date(2025, 12, 29)
    assert calendar.parse_period("2026-W53").days == 7  # 2026 has 53 ISO weeks
    assert calendar.parse_period("2026-01").previous() == calendar.parse_period("2025-12")
    assert calendar.parse_period("2028-03-01").previous().label == "2028-02-29"
    assert calendar.parse_period("2028-02").days == 29
    for bad in ("2025-W53", "2026-13", "2026-02-30", "26-11", "2026-11-1", "next month", "", "2026-W00"):
        with pytest.raises(calendar.CalendarError):
            calendar.parse_period(bad)
    for bad in ("Mars/Olympus", "../etc/passwd", "", " UTC"):
        with pytest.raises(calendar.CalendarError):
            calendar.parse_zone(bad)


# -- hostile names, exact money ----------------------------------------------------------------


HOSTILE = [
    "../../escape",
    "..",
    ".",
    "/etc/passwd",
    "a/b\\c",
    'comma, "quote"\nnewline\r\nand more',
    "<script>alert(1)</script>&amp;",
    "x" * 200,
    "проект-ü",
    "NUL\x00inside",
    "-rf",
    ".hidden",
    "C:\\temp",
]


def test_hostile_project_names_stay_inside_and_csv_round_trips(engine: sa.Engine, tmp_path: Path) -> None:
    base = tmp_path / "reports"
    when = datetime(2026, 11, 5, 12, tzinfo=UTC)
    _write(
        engine,
        [
            _event(when, name, "gpt-oss-120b", usage=Usage(10, 0, 10, 0, 20), tags=(("who", name[:50]),))
            for name in HOSTILE
        ],
    )
    with engine.connect() as conn:
        stored = sorted(conn.execute(sa.select(EventRow.project).distinct()).scalars())
    assert len(stored) == len(HOSTILE)
    period = calendar.parse_period("2026-11-05")
    tz = ZoneInfo("UTC")
    folders = set()
    for name in stored:
        report = reports.build_report(engine, period, tz, name)
        assert report.totals["calls"] == 1 and report.totals["cost_nanos"] == 10 * 350 + 10 * 750
        for fmt in files.FORMATS:
            path = files.write_report(report, fmt, base=base)
            assert path.resolve().parent.parent == base.resolve()
            assert path.parent.name == files.project_folder(name) and len(path.parent.name) <= 51
            folders.add(path.parent.name)
        with (path.parent / "2026-11-05_UTC.csv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        # "-rf" (stored before check_project refused a leading formula character) gets the CSV's
        # spreadsheet guard, a leading "'"; every name check_project accepts comes out unchanged
        cell = spreadsheet_cell(name)
        assert cell == name or (name == "-rf" and cell == "'-rf")
        assert {(r["figure"], r["value"]) for r in rows if r["section"] == "report"} >= {("project", cell)}
        assert (
            json.loads((path.parent / "2026-11-05_UTC.json").read_text(encoding="utf-8"))["project"] == name
        )
        page = (path.parent / "2026-11-05_UTC.html").read_text(encoding="utf-8")
        assert "<script" not in page
    assert len(folders) == len(stored)  # every name its own folder
    assert {p.resolve() for p in base.rglob("*")} <= {base.resolve() / f for f in folders} | {
        base.resolve() / f / n
        for f in folders
        for n in ("2026-11-05_UTC.csv", "2026-11-05_UTC.json", "2026-11-05_UTC.html")
    }
    everyone = reports.build_report(engine, period, tz, top_tags=50)
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(everyone), newline="")))
    projects = sorted({r["item"] for r in rows if r["section"] == "project"})
    assert projects == sorted(map(spreadsheet_cell, stored))
    assert sorted({r["detail"] for r in rows if r["section"] == "tag"}) == sorted(
        spreadsheet_cell(n[:50]) for n in stored
    )
    page = report_html.to_html(everyone)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;" in page
    # names never stored in the ledger (NUL, very long, separators) still make safe folder names
    for name in ["\x00", "a\x00/../../b", "../" * 500, "é" * 10_000, "/", "\\", "\ud800"]:
        path = files.default_path(base, name, period, "UTC", "csv")
        assert path.resolve().parent.parent == base.resolve()
        assert "\x00" not in str(path) and len(path.parent.name) <= 51


def test_html_escapes_project_model_and_tag_values(engine: sa.Engine) -> None:
    """User-derived text reaches the dashboard only through the template's autoescape, as text,
    in element content and in ``data-figure`` attributes alike (never as markup)."""
    script, img = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
    when = datetime(2026, 11, 5, 12, tzinfo=UTC)
    _write(
        engine,
        [_event(when, script, img, usage=Usage(10, 0, 10, 0, 20), tags=(("who", img), (script, script)))],
    )
    period = calendar.parse_period("2026-11-05")
    esc_script, esc_img = (
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;",
    )
    for project in (script, None):
        page = report_html.to_html(reports.build_report(engine, period, ZoneInfo("UTC"), project))
        assert "<script" not in page and "<img" not in page and "onerror=alert(1)>" not in page
        if project is not None:
            assert f"<title>Spend report: project {esc_script}, 2026-11-05</title>" in page
            assert f'<span data-figure="project">project {esc_script}</span>' in page
        else:
            assert f"<td>{esc_script}</td>" in page  # the by-project table
        assert f"<td>{esc_img}</td>" in page  # model and tag value cells
        assert f'data-figure="tag.who={esc_img}.calls">1</td>' in page
        assert f'data-figure="tag.{esc_script}={esc_script}.calls">1</td>' in page
        parser = _Figures()
        parser.feed(page)
        assert parser.figures[f"model.{img}.calls"] == "1" and parser.figures[f"tag.who={img}.calls"] == "1"


def test_money_stays_integer_and_floats_are_refused(engine: sa.Engine) -> None:
    import pandas as pd

    _write(
        engine,
        _spread(random.Random(3), datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC), 60),
    )
    report = reports.build_report(engine, calendar.parse_period("2026-W45"), ZoneInfo("UTC"))
    for frame in report.frames().values():
        for col in frame.columns:
            if col in FIG:
                assert str(frame[col].dtype) in ("object", "int64"), col
                assert all(type(v) is int for v in frame[col].tolist()), col
    assert all(type(v) is int for v in report.totals.values())
    with pytest.raises(TypeError, match="float"):
        reports.check_no_floats(pd.DataFrame({"cost_nanos": [1.5]}))


def test_daily_reports_for_the_scheduler(engine: sa.Engine, tmp_path: Path) -> None:
    rng = random.Random(4)
    _write(
        engine,
        _spread(
            rng,
            datetime(2026, 11, 4, 23, tzinfo=UTC),
            datetime(2026, 11, 5, 23, tzinfo=UTC),
            40,
            ("alpha", "beta"),
        ),
    )
    paths = files.daily_reports(engine, datetime(2026, 11, 6, 3, tzinfo=UTC), "Europe/Berlin", tmp_path)
    names = {files.project_folder(p) for p in (None, "alpha", "beta")}
    assert {(p.parent.name, p.name) for p in paths} == {
        (f, f"2026-11-05_Europe-Berlin.{fmt}") for f in names for fmt in ("html", "json")
    }
    data = json.loads((tmp_path / files.project_folder("beta") / "2026-11-05_Europe-Berlin.json").read_text())
    assert (
        _json_figures(data["totals"])
        == expect(engine, calendar.parse_period("2026-11-05"), ZoneInfo("Europe/Berlin"), "beta")["totals"]
    )


# -- the command line --------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report_end_to_end(
    ledger_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = tmp_path / "out-reports"
    monkeypatch.setenv("LEDGER_REPORTS_DIR", str(base))
    eng = store.make_engine(ledger_env["LEDGER_DATABASE_URL"])
    try:
        store.ensure_schema(eng)
        _write(
            eng,
            _spread(
                random.Random(5), datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), 200
            ),
        )
        tz = ZoneInfo("Europe/Berlin")
        code, out, err = _cli(
            capsys,
            "report",
            "--project",
            "alpha",
            "--period",
            "2026-11",
            "--tz",
            "Europe/Berlin",
            "--format",
            "json",
        )
        assert code == 0, err
        path = Path(out.strip())
        assert path == base / files.project_folder("alpha") / "2026-11_Europe-Berlin.json" and path.is_file()
        assert "report 2026-11" in err  # the progress bar of a long period, on stderr
        data = json.loads(path.read_text(encoding="utf-8"))
        want = expect(eng, calendar.parse_period("2026-11"), tz, "alpha")
        assert _json_figures(data["totals"]) == want["totals"]
        assert data["period"]["start_utc"] == "2026-10-31T23:00:00Z" and data["tz"] == "Europe/Berlin"

        code, out, err = _cli(
            capsys, "report", "--period", "2026-11-05", "--format", "csv", "--out", str(tmp_path / "day.csv")
        )
        assert code == 0 and err == "" and Path(out.strip()) == tmp_path / "day.csv"  # one day: no bar
        with (tmp_path / "day.csv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        want = expect(eng, calendar.parse_period("2026-11-05"), ZoneInfo("UTC"), None)
        assert {r["figure"]: r["value"] for r in rows if r["section"] == "totals"} == {
            formats.public(k): formats.figure_value(k, v) for k, v in want["totals"].items()
        }

        (tmp_path / "folder").mkdir()
        code, out, err = _cli(
            capsys, "report", "--period", "2026-W45", "--project", "alpha", "--out", str(tmp_path / "folder")
        )
        assert code == 0, err
        assert Path(out.strip()) == tmp_path / "folder" / f"{files.project_folder('alpha')}_2026-W45_UTC.html"
        code, out, err = _cli(capsys, "report", "--period", "2026-W45", "--project", "../../x")
        assert code == 0, err
        assert Path(out.strip()).resolve().parent.parent == base.resolve()
        assert Path(out.strip()).read_text(encoding="utf-8").count("../../x") >= 1

        for args, needle in [
            (["--period", "2026-13"], "--period"),
            (["--period", "yesterday"], "--period"),
            (["--period", "2026-11", "--tz", "Mars/Base"], "--tz"),
            (["--period", "2026-11", "--project", "bad\x01name"], "--project"),
            (["--period", "2026-11", "--project", " "], "--project"),
        ]:
            code, out, err = _cli(capsys, "report", *args)
            lines = err.splitlines()
            assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith(f"error: {needle}"), (
                err
            )
        code, out, err = _cli(capsys, "report", "--period", "2026-11", "--format", "pdf")
        assert code == 2 and len(err.splitlines()) == 1
        code, out, _ = _cli(capsys, "report", "--help")
        assert code == 0 and "Example" in out and "cerebras-ledger report" in out
    finally:
        eng.dispose()


# -- the HTML page in a real browser -----------------------------------------------------------


class _Figures(HTMLParser):
    """``data-figure`` attribute -> the text inside that element."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        key = dict(attrs).get("data-figure")
        self._open.append((tag, key))
        if key is not None:
            self.figures[key] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in reversed(self._open):
            if key is not None:
                self.figures[key] += data
                break


def _chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1280,2000",
        *extra,
        page.resolve().as_uri(),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


def _colour_counts(png: Path) -> dict[str, int]:
    """Pixels of each chart colour (within a small tolerance) in the screenshot."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as img:
        pixels = np.asarray(img.convert("RGB")).astype(np.int16)
    counts = {}
    for name, colour in report_html.COLORS.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        counts[name] = int(np.all(np.abs(pixels - rgb) <= 8, axis=-1).sum())
    return counts


def test_html_dashboard_in_headless_chromium(engine: sa.Engine, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML page was not rendered")
    pytest.importorskip(
        "PIL", reason="Pillow is needed to read the screenshot (the `test` extra installs it)"
    )
    rng = random.Random(9)
    _write(engine, _spread(rng, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), 400))
    tz = ZoneInfo("Europe/Berlin")
    period = calendar.parse_period("2026-11")
    report = reports.build_report(engine, period, tz)
    page = files.write_report(report, "html", base=tmp_path / "reports")
    empty = files.write_report(
        reports.build_report(engine, period, tz, "nobody"), "html", base=tmp_path / "reports"
    )

    shot = tmp_path / "page.png"
    proc = _chromium(page, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    counts = _colour_counts(shot)
    assert all(n > 300 for n in counts.values()), counts  # every chart series drew bars
    blank = tmp_path / "empty.png"
    _chromium(empty, tmp_path, f"--screenshot={blank}")
    assert all(n < 200 for n in _colour_counts(blank).values())  # an empty report: legend swatches only

    proc = _chromium(page, tmp_path, "--dump-dom")
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    parser = _Figures()
    parser.feed(proc.stdout)
    figures = parser.figures
    want = expect(engine, period, tz, None)
    for name, value in want["totals"].items():
        assert figures[f"totals.{formats.public(name)}"] == formats.figure_value(name, value), name
    for d, row in want["days"].items():
        for name in ("calls", "paid_nanos", "free_list_nanos", "cost_nanos"):
            assert figures[f"day.{d.isoformat()}.{formats.public(name)}"] == formats.figure_value(
                name, row[name]
            )
    for model, row in want["models"].items():
        assert figures[f"model.{model}.cost_usd"] == str(Money(row["cost_nanos"]))
    prev = expect(engine, period.previous(), tz, None)["totals"]
    assert figures["change.paid_usd.previous"] == str(Money(prev["paid_nanos"]))
    assert figures["change.paid_usd.change"] == str(Money(want["totals"]["paid_nanos"] - prev["paid_nanos"]))
    assert figures["card.paid_usd"] == str(Money(want["totals"]["paid_nanos"]))
    assert figures["period"] == "2026-11" and figures["tz"] == "Europe/Berlin"
