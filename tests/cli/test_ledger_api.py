"""The library API: :class:`ledger.Ledger` against real SQLite files and a real PostgreSQL.

Events are written through the real store (``store.insert_events``, priced by the real price
book) or left in a real spool by a real journal. Expected figures come from the raw events
(the export's rows, or SQL over ``events``), never from the rollups ``frame()`` reads.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import textwrap
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import ledger
from ledger import ConfigError, Ledger, Money, journal, store
from ledger.events import CallEvent, Usage
from ledger.store.schema import SCHEMA_REVISION
from tests.helpers import ROOT, fetch_events, make_event, write_events

MODELS = ("gpt-oss-120b", "llama3.1-8b", "qwen-3-235b-instruct", "mystery-model")
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


def _event(
    when: datetime,
    project: str = "alpha",
    model: str = "gpt-oss-120b",
    status: str = "ok",
    usage: Usage | None = None,
    tags: tuple[tuple[str, str], ...] = (),
    route: str = "cerebras",
) -> CallEvent:
    return make_event(
        occurred_at=when,
        project=project,
        route=route,
        requested_model=model,
        status=status,
        http_status=429 if status == "error" else 200,
        usage=(usage or Usage(1000, 100, 500, 0, 1500)) if status != "error" else None,
        tags=tags,
    )


def _random(rng: random.Random, start: datetime, end: datetime) -> CallEvent:
    seconds = int((end - start).total_seconds())
    prompt, completion = rng.randint(1, 5000), rng.randint(1, 3000)
    tags: tuple[tuple[str, str], ...] = (("user", rng.choice(("ana", "bo", "cy"))),)
    if rng.random() < 0.7:  # some events carry no feature tag at all
        tags += (("feature", rng.choice(("chat", "search", "summarize"))),)
    return _event(
        start + timedelta(seconds=rng.randint(0, seconds - 1), microseconds=rng.randint(0, 999_999)),
        rng.choice(("alpha", "beta", "gamma")),
        rng.choice(MODELS),
        rng.choices(("ok", "error", "incomplete"), weights=(85, 8, 7))[0],
        Usage(prompt, rng.randint(0, prompt), completion, rng.randint(0, completion), prompt + completion),
        tuple(sorted(tags)),
        rng.choice(("cerebras", "lava")),
    )


def _write(url: str, events: list[CallEvent]) -> None:
    write_events(url, events)


def _month_ago(months: int) -> datetime:
    """The first instant (UTC) of the month ``months`` before this one: always ended."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool and data folder under ``tmp_path``: a Ledger never looks at the real home."""
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


# -- opening -----------------------------------------------------------------------------------


def test_the_url_is_resolved_as_the_cli_does_and_nothing_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.delenv("LEDGER_SPOOL_DIR", raising=False)
    assert Ledger().url == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert Ledger().url == f"sqlite:///{tmp_path / 'env.db'}"
    led = Ledger("postgresql://ana:s3cret-pw@db.example/ledger", spool_dir=tmp_path / "sp")
    assert led.url == "postgresql://ana:s3cret-pw@db.example/ledger"
    assert led.spool_dir == tmp_path / "sp"
    assert "s3cret-pw" not in repr(led) and "***" in repr(led)
    led.close()  # never opened: nothing to dispose
    assert not (tmp_path / "home").exists() and not (tmp_path / "env.db").exists()


def test_first_use_migrates_and_writes_what_a_dead_process_left(db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    j = journal.Journal(db_url, spool)
    assert j.close(10)
    left = [_event(NOV + timedelta(hours=i), project="dead") for i in range(3)]
    for e in left:
        j.append(e)  # after close: each gets a segment of its own, for the next process to recover
    assert len(list(spool.glob("*.seg"))) == 3
    with Ledger(db_url, spool_dir=spool) as led:
        assert store.current_revision(led.engine) == SCHEMA_REVISION
        assert not list(spool.glob("*.seg"))
        (s,) = led.summary()
        assert (s.project, s.calls) == ("dead", 3)
        assert led.engine is led.engine  # opened once
    assert led._engine is None  # disposed on exit
    assert sorted(r["event_id"] for r in fetch_events(db_url)) == sorted(e.event_id for e in left)
    assert [s.calls for s in led.summary()] == [3]  # used again after close: reopens
    led.close()


def test_an_unreachable_database_is_one_config_error_line_without_the_password() -> None:
    led = Ledger("postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:1/test")
    with pytest.raises(ConfigError) as exc:
        led.summary()
    line = _one_line(exc)
    assert "unreachable or unusable" in line and "hunter2-secret" not in line and "127.0.0.1" in line


def test_import_and_construction_stay_light_and_summary_needs_no_pandas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _write(url, [_event(NOV)])  # migrated before the process starts
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "CEREBRAS_", "LAVA_"))}
    env.update(LEDGER_HOME=str(tmp_path / "home"), LEDGER_SPOOL_DIR=str(tmp_path / "spool"))
    code = textwrap.dedent(f"""
        import json, sys
        import ledger
        led = ledger.Ledger({url!r})
        heavy = lambda: sorted({{m.split(".")[0] for m in sys.modules}} & {{"sqlalchemy", "pandas", "alembic"}})
        built = heavy()
        calls = [s.calls for s in led.summary()]
        print(json.dumps({{"built": built, "calls": calls, "after": heavy()}}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"built": [], "calls": [1], "after": ["sqlalchemy"]}


def test_ledger_is_exported() -> None:
    assert "Ledger" in ledger.__all__ and ledger.Ledger is Ledger


# -- the operations agree with each other and with the raw events --------------------------------


@pytest.fixture
def november(db_url: str) -> list[CallEvent]:
    rng = random.Random(12)
    events = [_random(rng, NOV, DEC) for _ in range(300)]
    _write(db_url, events)
    return events


def _expected(rows: list[dict[str, Any]], key: Any) -> dict[Any, tuple[int, int, int]]:
    """(calls, total tokens, cost nanos) per key, from the export's rows (each event as it stands)."""
    out: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        k = key(r)
        out[k][0] += 1
        out[k][1] += r["total_tokens"] or 0
        out[k][2] += int(Decimal(r["cost_usd"] or "0") * 10**9)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _frame_sums(df: Any, keys: list[str]) -> dict[Any, tuple[int, int, int]]:
    out: dict[Any, tuple[int, int, int]] = {}
    for rec in df.to_dict("records"):
        k = tuple(rec[c] for c in keys)
        out[k if len(k) > 1 else k[0]] = (int(rec["calls"]), int(rec["total_tokens"]), int(rec["cost_nanos"]))
    return out


def _check_money(df: Any) -> None:
    assert str(df["cost_nanos"].dtype) == "int64" and str(df["calls"].dtype) == "int64"
    assert df["cost_usd"].dtype == object
    assert all(type(v) is Decimal for v in df["cost_usd"])
    assert [Money(int(n)).to_decimal() for n in df["cost_nanos"]] == list(df["cost_usd"])
    assert not [c for c in df.columns if str(df[c].dtype).startswith("float")]


def test_rollup_verify_summary_report_and_frame_agree_to_the_nano_dollar(
    db_url: str, november: list[CallEvent]
) -> None:
    with Ledger(db_url) as led:
        assert [f.check for f in led.verify()] == ["rollup"]  # written, not yet rolled up
        result = led.rollup()
        assert result.events == len(november) and result.batches == 1
        assert led.rollup().events == 0  # exactly once
        assert led.verify() == []
        # Re-price November with a new point, so corrections are in every figure below.
        led.prices.add("cerebras", "gpt-oss-120b", "0.5", "1.25", effective_from="2026-10-01")
        repriced = led.prices.reprice(NOV, DEC)
        assert repriced.corrections > 0
        rows = list(led.events(NOV, DEC))
        assert [r["event_id"] for r in rows] == [
            e.event_id for e in sorted(november, key=lambda e: (e.occurred_at, e.event_id))
        ]
        by_pm = led.frame(NOV, DEC, by=["project", "model"])
        assert led.verify() == []  # frame rolled the corrections up
        summaries = led.summary(NOV, DEC)
        report = led.report(None, "2026-11")
        by_user = led.frame(NOV, DEC, by=["tag:user", "day"], tz="America/New_York")
    _check_money(by_user)  # a re-priced event's corrections count under its own tags
    assert _frame_sums(
        by_user.groupby("tag:user", as_index=False, dropna=False)[
            ["calls", "total_tokens", "cost_nanos"]
        ].sum(),
        ["tag:user"],
    ) == _expected(rows, lambda r: r["tags"]["user"])
    _check_money(by_pm)
    assert list(by_pm.columns[:2]) == ["project", "model"]
    assert _frame_sums(by_pm, ["project", "model"]) == {
        k: v for k, v in _expected(rows, lambda r: (r["project"], r["model"])).items()
    }
    total_nanos = sum(int(n) for n in by_pm["cost_nanos"])
    assert sum(by_pm["cost_usd"], Decimal(0)) == Money(total_nanos).to_decimal()
    per_project = by_pm.groupby("project")[["calls", "total_tokens", "cost_nanos"]].sum()
    for s in summaries:  # the summary counts every attempt and sums paid cost (free models cost 0)
        got = per_project.loc[s.project]
        assert (int(got["calls"]), int(got["total_tokens"]), int(got["cost_nanos"])) == (
            s.calls,
            s.tokens,
            s.paid_cost.nanos,
        )
    assert report.totals["cost_nanos"] == total_nanos
    assert report.totals["calls"] == sum(int(c) for c in by_pm["calls"]) == len(november)


def test_frame_by_every_key_and_by_tag_adds_up(db_url: str, november: list[CallEvent]) -> None:
    with Ledger(db_url) as led:
        rows = list(led.events(NOV, DEC))
        everything = led.frame(
            NOV, DEC, by=["project", "model", "route", "book", "status", "free", "priced", "day"]
        )
        feature = led.frame(NOV, DEC, by=["project", "tag:feature"])
        by_day = led.frame("2026-11-01", "2026-12-01", by="day")
    _check_money(everything)
    assert everything["free"].dtype == bool and everything["priced"].dtype == bool
    status = _frame_sums(
        everything.groupby("status", as_index=False)[["calls", "total_tokens", "cost_nanos"]].sum(),
        ["status"],
    )
    assert status == _expected(rows, lambda r: r["status"])
    routes = _frame_sums(
        everything.groupby("route", as_index=False)[["calls", "total_tokens", "cost_nanos"]].sum(), ["route"]
    )
    assert routes == _expected(rows, lambda r: r["route"])
    _check_money(feature)
    assert list(feature.columns) == [
        "project",
        "tag:feature",
        "calls",
        "total_tokens",
        "cost_nanos",
        "cost_usd",
    ]
    # Events without the tag are the row whose value is None, so the frame adds up to the whole.
    assert _frame_sums(feature, ["project", "tag:feature"]) == _expected(
        rows, lambda r: (r["project"], r["tags"].get("feature"))
    )
    assert all(type(d) is date for d in by_day["day"])
    assert _frame_sums(by_day, ["day"]) == _expected(
        rows, lambda r: date.fromisoformat(r["occurred_at"][:10])
    )


def test_frame_days_in_kolkata_are_local_days(db_url: str) -> None:
    late = datetime(2026, 11, 10, 23, 45, tzinfo=UTC)  # 05:15 on Nov 11 in Kolkata (UTC+05:30)
    before_midnight = datetime(2026, 11, 10, 18, 29, 59, tzinfo=UTC)  # 23:59:59 Nov 10 local
    at_midnight = datetime(2026, 11, 10, 18, 30, tzinfo=UTC)  # 00:00 Nov 11 local
    _write(db_url, [_event(late), _event(before_midnight), _event(at_midnight)])
    with Ledger(db_url) as led:
        local = led.frame("2026-11-10", "2026-11-12", by=["day"], tz="Asia/Kolkata")
        utc = led.frame("2026-11-10", "2026-11-12", by=["day"])
        from_local_midnight = led.frame(date(2026, 11, 11), date(2026, 11, 12), by="day", tz="Asia/Kolkata")
        ist = timezone(timedelta(hours=5, minutes=30))
        same = led.frame(
            datetime(2026, 11, 11, tzinfo=ist),
            datetime(2026, 11, 12, tzinfo=ist),
            by="day",
            tz="Asia/Kolkata",
        )
    assert dict(zip(local["day"], local["calls"], strict=True)) == {
        date(2026, 11, 10): 1,
        date(2026, 11, 11): 2,
    }
    assert dict(zip(utc["day"], utc["calls"], strict=True)) == {date(2026, 11, 10): 3}
    assert dict(zip(from_local_midnight["day"], from_local_midnight["calls"], strict=True)) == {
        date(2026, 11, 11): 2
    }
    assert same.equals(from_local_midnight)


def test_an_empty_frame_has_its_columns(db_url: str) -> None:
    with Ledger(db_url) as led:
        df = led.frame(NOV, DEC, by=["model", "day"])
    assert len(df) == 0
    assert list(df.columns) == [
        "model",
        "day",
        "calls",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
        "total_tokens",
        "cost_nanos",
        "cost_usd",
    ]


def test_frame_with_no_keys_is_the_total_and_a_long_tag_key_is_found_as_stored(db_url: str) -> None:
    long_key = "k" * 150  # the store keeps 100 characters of a tag key
    with Ledger(db_url) as led:
        assert len(led.frame(NOV, DEC, by=[])) == 0
        _write(db_url, [_event(NOV, tags=((long_key, "v"),)), _event(NOV + timedelta(days=1))])
        total = led.frame(NOV, DEC, by=[])
        tagged = led.frame(NOV, DEC, by=f"tag:{long_key}")
    assert list(total["calls"]) == [2] and list(total["total_tokens"]) == [3000]
    assert list(tagged[f"tag:{long_key}"]) == ["v", None] and list(tagged["calls"]) == [1, 1]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda led: led.frame(NOV, DEC, by=["project", "colour"]), "unknown key 'colour'"),
        (lambda led: led.frame(NOV, DEC, by=["tag:"]), "needs a tag key"),
        (lambda led: led.frame(NOV, DEC, by=["tag:a", "tag:b"]), "at most one tag"),
        (lambda led: led.frame(NOV, DEC, by=["model", "tag:a"]), "combines only with project and day"),
        (lambda led: led.frame(NOV, DEC, by=["day", "day"]), "repeats"),
        (lambda led: led.frame(NOV, DEC, tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda led: led.frame(NOV, DEC, tz="../../etc/passwd"), "unknown time zone"),
        (lambda led: led.frame(datetime(2026, 11, 1), DEC), "naive"),
        (lambda led: led.frame(NOV, datetime(2026, 12, 1, 0, 7, tzinfo=UTC)), "not on a quarter hour"),
        (lambda led: led.frame(DEC, NOV), "until must be after since"),
        (lambda led: led.frame("yesterday", DEC), "not a date"),
        (lambda led: led.frame("0001-01-01", DEC, tz="Asia/Kolkata"), "out of range"),
        (lambda led: led.frame(True, DEC), "expected a datetime"),
        (lambda led: led.events(datetime(2026, 11, 1), DEC), "naive"),
        (lambda led: led.summary(since=datetime(2026, 11, 1)), "naive"),
        (lambda led: led.report(None, "2026-13"), "no such date"),
        (lambda led: led.report(None, "2026-11", tz="Nowhere/City"), "unknown time zone"),
        (lambda led: led.report("=cmd", "2026-11"), "may not begin"),
        (lambda led: led.budgets.set("alpha", monthly="-5"), "more than zero"),
        (lambda led: led.budgets.set("alpha", timezone="Mars/Olympus"), "unknown time zone"),
        (lambda led: led.prices.add("cerebras", "m", "1", "x"), "output rate"),
        (lambda led: led.prices.add("cerebras", "m", "1", "1", effective_from=datetime(2026, 1, 1)), "naive"),
        (lambda led: led.export_billing("2026-13"), "2026-13"),
        (lambda led: led.export_billing(f"{datetime.now(UTC):%Y-%m}"), "has not ended"),
    ],
)
def test_bad_input_is_one_clear_value_error(db_url: str, call: Any, expected: str) -> None:
    with Ledger(db_url) as led, pytest.raises(ValueError) as exc:
        call(led)
    assert expected in _one_line(exc)


# -- budgets, prices, billing ------------------------------------------------------------------


def test_budgets_set_list_remove(db_url: str) -> None:
    with Ledger(db_url) as led:
        assert led.budgets.list() == []
        b = led.budgets.set(
            "search",
            monthly="500.00",
            daily="40",
            thresholds="80,50,100",
            timezone="Europe/Berlin",
            hard=True,
        )
        assert (b.monthly, b.daily, b.thresholds, b.timezone, b.hard) == (
            Money(500 * 10**9),
            Money(40 * 10**9),
            (50, 80, 100),
            "Europe/Berlin",
            True,
        )
        led.budgets.set("alpha", daily="1")
        assert [x.project for x in led.budgets.list()] == ["alpha", "search"]
        assert led.budgets.list()[1].monthly == Money(500 * 10**9)
        assert led.budgets.remove("search") is True
        assert led.budgets.remove("search") is False
        assert [x.project for x in led.budgets.list()] == ["alpha"]


def test_prices_list_add_check_reprice(db_url: str) -> None:
    _write(
        db_url,
        [
            _event(NOV + timedelta(hours=1), model="mystery-model"),
            _event(NOV + timedelta(hours=2), model="mystery-model"),
        ],
    )
    with Ledger(db_url) as led:
        builtin = led.prices.list()
        assert builtin and {p.book for p in builtin} == {"cerebras", "lava"}
        assert {p.book for p in led.prices.list("lava")} == {"lava"}
        (missing,) = led.prices.check()
        assert (missing.model, missing.events, missing.tokens) == ("mystery-model", 2, 3000)
        point = led.prices.add("cerebras", "mystery-model", "1.00", "2.00", effective_from="2026-10-01")
        assert point in led.prices.list("cerebras")
        with pytest.raises(ConfigError) as exc:
            led.prices.add("cerebras", "mystery-model", "1.00", "2.00", effective_from="2026-10-01")
        assert "already exists" in _one_line(exc)
        dry = led.prices.reprice("2026-11-01", "2026-12-01", dry_run=True)
        assert (dry.examined, dry.corrections) == (2, 2)
        assert led.prices.check() != []
        done = led.prices.reprice("2026-11-01", "2026-12-01")
        assert done.delta == dry.delta == Money(2 * (900 * 1000 + 100 * 1000 + 500 * 2000))
        assert led.prices.check() == []
        assert led.prices.reprice("2026-11-01", "2026-12-01").corrections == 0
        (s,) = led.summary()
        assert (s.unpriced, s.paid_cost) == (0, done.delta)
        written = len(fetch_events(db_url, "kind = 'correction'"))
        assert written >= 2
        assert led.verify() != [] and led.rollup().events == 2 + written and led.verify() == []


def test_export_billing_and_due_months(db_url: str, tmp_path: Path) -> None:
    start = _month_ago(2)
    month = f"{start:%Y-%m}"
    rng = random.Random(5)
    events = [_random(rng, start, _month_ago(1)) for _ in range(60)]
    _write(db_url, [e for e in events if e.requested_model != "mystery-model"])
    out = tmp_path / "focus.csv"
    with Ledger(db_url) as led:
        result = led.export_billing(month, out)
        again = led.export_billing(month, str(out))
        paid = sum((s.paid_cost for s in led.summary(start, _month_ago(1))), Money(0))
        cost = sum(int(n) for n in led.frame(start, _month_ago(1), by="project")["cost_nanos"])
        due = led.export_billing_due(tmp_path / "due")
    assert (result.month, result.reissued, again.reissued) == (month, False, True)
    assert result.billed == paid == Money(cost) and result.unpriced == 0
    with out.open(newline="") as fh:
        file_rows = list(csv.DictReader(fh))
    assert len(file_rows) == len(result.rows) > 0
    assert sum(Decimal(r["BilledCost"]) for r in file_rows) == result.billed.to_decimal()
    assert [d.month for d in due] == [month, f"{_month_ago(1):%Y-%m}"]
    assert (tmp_path / "due" / f"focus-{month}.csv").read_bytes() == out.read_bytes()
