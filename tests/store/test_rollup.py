"""Rollups equal the raw events exactly: incrementally, once, under crashes and concurrency, in any zone."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.pricing import PriceBook, charge
from ledger.store import prices as pricedb
from ledger.store import reprice as repricing
from ledger.store import rollup
from tests.helpers import random_event, write_events


def _raw_by_key(engine: sa.Engine) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(project, model) -> (usage rows, total tokens, cost) straight from the events table."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT project, COALESCE(served_model, requested_model, ''), "
                "SUM(CASE WHEN kind = 'usage' THEN 1 ELSE 0 END), COALESCE(SUM(total_tokens), 0), "
                "COALESCE(SUM(cost_nanos), 0) FROM events GROUP BY 1, 2"
            )
        ).all()
    return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in rows}


def _rolled_by_key(engine: sa.Engine) -> dict[tuple[str, str], tuple[int, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT project, model, SUM(CASE WHEN kind = 'usage' THEN events ELSE 0 END), SUM(total_tokens), "
                "SUM(cost_nanos) FROM usage_rollup GROUP BY 1, 2"
            )
        ).all()
    return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in rows}


@pytest.mark.parametrize("big", [False, True], ids=["by-index", "big-chunk"])
def test_rollup_equals_raw_events_incrementally(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, big: bool
) -> None:
    """Also with every chunk taken for a big one (on PostgreSQL: summed as the planner sees fit)."""
    lifted: list[bool] = []
    by_index = rollup._by_index

    def spy(conn: sa.Connection, on: bool = True) -> None:
        lifted.append(not on)
        by_index(conn, on)

    monkeypatch.setattr(rollup, "_by_index", spy)
    if big:
        monkeypatch.setattr(rollup, "BIG_CHUNK_EVENTS", 1)
    rng = random.Random(1)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for _ in range(4):
        write_events(
            engine, [random_event(start + timedelta(minutes=rng.randint(0, 43_000)), rng) for _ in range(300)]
        )
        first = rollup.rollup(engine)
        assert first.events == 300
        assert rollup.rollup(engine).events == 0  # nothing new: nothing done
        assert _rolled_by_key(engine) == _raw_by_key(engine)
    assert rollup.pending(engine) == (0, 0)
    assert any(lifted) == big


def test_late_events_and_corrections_count(engine: sa.Engine) -> None:
    rng = random.Random(2)
    old = datetime(2026, 10, 3, 12, tzinfo=UTC)
    write_events(engine, [random_event(old + timedelta(hours=i), rng, "alpha") for i in range(50)])
    rollup.rollup(engine)
    write_events(
        engine, [random_event(old + timedelta(minutes=7), rng, "alpha")]
    )  # arrives after its day was rolled up
    with store.write_transaction(engine) as conn:  # a price change back-dated, then re-priced: corrections
        store.insert_prices(
            conn,
            [
                pricedb.new_point(
                    "cerebras", "gpt-oss-120b", "1.00", "2.00", effective_from=old - timedelta(days=1)
                )
            ],
        )
        store.insert_prices(
            conn,
            [
                pricedb.new_point(b, "mystery-model", "0.10", "0.20", effective_from=old - timedelta(days=1))
                for b in ("cerebras", "lava")
            ],
        )
        result = repricing.reprice(conn, old - timedelta(days=1), old + timedelta(days=5))
    assert result.corrections > 0
    rollup.rollup(engine)
    assert _rolled_by_key(engine) == _raw_by_key(engine)
    with engine.connect() as conn:  # the re-priced model is no longer unpriced in the rollup
        unpriced = conn.execute(
            sa.text(
                "SELECT COALESCE(SUM(total_tokens), 0) FROM usage_rollup WHERE priced = :f AND model = 'mystery-model' "
                "AND status = 'ok'"
            ),
            {"f": False},
        ).scalar_one()
    assert int(unpriced) == 0


def test_crash_midway_counts_once(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    write_events(
        engine,
        [random_event(datetime(2026, 11, 5, tzinfo=UTC) + timedelta(minutes=i), rng) for i in range(200)],
    )
    real = rollup._upsert
    calls = []

    def crash_on_second(*args: object, **kw: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # usage rollup written, tag rollup not: the process dies here
            raise RuntimeError("simulated crash")
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rollup, "_upsert", crash_on_second)
    with pytest.raises(RuntimeError):
        rollup.rollup(engine)
    monkeypatch.setattr(rollup, "_upsert", real)
    assert rollup.pending(engine)[1] == 200  # nothing was committed
    assert rollup.rollup(engine).events == 200
    assert _rolled_by_key(engine) == _raw_by_key(engine)


def test_two_rollups_at_once_count_each_event_once(engine: sa.Engine, db_url: str) -> None:
    rng = random.Random(4)
    for _ in range(20):  # many small batches so both runners have work to fight over
        write_events(
            engine,
            [
                random_event(datetime(2026, 11, 9, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 9000)), rng)
                for _ in range(25)
            ],
        )
    errors: list[BaseException] = []

    def run() -> None:
        eng = store.make_engine(db_url)
        try:
            while rollup.rollup_once(eng, max_batches=3).batches:
                pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert rollup.pending(engine) == (0, 0)
    assert _rolled_by_key(engine) == _raw_by_key(engine)


def test_two_processes_roll_up_at_once(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    rng = random.Random(5)
    for _ in range(30):
        write_events(
            engine,
            [
                random_event(
                    datetime(2026, 11, 12, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 9000)), rng
                )
                for _ in range(20)
            ],
        )
    code = (
        "import sys; from ledger import store; from ledger.store import rollup; e = store.make_engine(sys.argv[1]);\n"
        "while rollup.rollup_once(e, max_batches=2).batches: pass"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    assert _rolled_by_key(engine) == _raw_by_key(engine)


def test_rebuild_gives_the_same_rollup(engine: sa.Engine) -> None:
    rng = random.Random(6)
    write_events(
        engine,
        [
            random_event(datetime(2026, 11, 20, tzinfo=UTC) + timedelta(minutes=i * 3), rng)
            for i in range(400)
        ],
    )
    rollup.rollup(engine)
    before = _rolled_by_key(engine)
    seen: list[int] = []
    result = rollup.rebuild(engine, progress=seen.append)
    assert result.events == 400 and sum(seen) == 400
    assert _rolled_by_key(engine) == before == _raw_by_key(engine)


@pytest.mark.parametrize(
    ("zone", "start", "end"),
    [
        ("Asia/Kolkata", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC)),  # +05:30
        ("Asia/Kathmandu", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC)),  # +05:45
        (
            "America/New_York",
            datetime(2026, 10, 30, tzinfo=UTC),
            datetime(2026, 11, 4, tzinfo=UTC),
        ),  # DST ends Nov 1
        (
            "America/New_York",
            datetime(2026, 3, 6, tzinfo=UTC),
            datetime(2026, 3, 11, tzinfo=UTC),
        ),  # DST starts Mar 8
    ],
)
def test_daily_totals_are_exact_in_any_zone(
    engine: sa.Engine, zone: str, start: datetime, end: datetime
) -> None:
    rng = random.Random(zone)
    tz = ZoneInfo(zone)
    events = []
    seconds = int((end - start).total_seconds())
    for _ in range(600):
        events.append(
            random_event(
                start + timedelta(seconds=rng.randint(0, seconds - 1), microseconds=rng.randint(0, 999_999)),
                rng,
                "alpha",
            )
        )
    # and a cluster right around each local midnight, where a wrong bucket would show
    day = start.astimezone(tz).date()
    while day <= end.astimezone(tz).date():
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(UTC)
        for delta in (-1, 0, 1, 899, 900):
            when = midnight + timedelta(seconds=delta)
            if start <= when < end:
                events.append(random_event(when, rng, "alpha"))
        day += timedelta(days=1)
    write_events(engine, events)
    rollup.rollup(engine)
    expected: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    with store.write_transaction(engine) as conn:
        book = store.load_price_book(conn)
    book_check = PriceBook(book.points())
    for e in events:
        d = e.occurred_at.astimezone(tz).date()
        c = charge(e, book_check)
        expected[d][0] += 1
        expected[d][1] += e.usage.total_tokens if e.usage else 0
        expected[d][2] += c.cost.nanos if c.cost else 0
    with engine.connect() as conn:
        got = rollup.daily_totals(conn, tz, start, end, "alpha")
    assert {d: [t.calls, t.total_tokens, t.cost_nanos] for d, t in got.items()} == dict(expected)


def test_a_zone_off_the_quarter_hour_is_refused(engine: sa.Engine) -> None:
    rng = random.Random(7)
    write_events(engine, [random_event(datetime(2026, 11, 1, tzinfo=UTC), rng)])
    rollup.rollup(engine)
    with engine.connect() as conn, pytest.raises(ValueError, match="quarter hours"):
        # Amsterdam kept +00:19:32 local mean time until 1937; move the ledger's clock there by asking
        # for the bucket in a zone that has such an offset today: none does, so use a fixed odd offset.
        from datetime import timezone

        rollup.daily_totals(
            conn,
            timezone(timedelta(minutes=20)),
            datetime(2026, 10, 1, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
        )
