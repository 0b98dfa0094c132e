"""A generated month, end to end: rollups, reports, the billing export and alerts all equal the raw
events to the last nano-dollar, with late events, a mid-month price change and a DST change."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ledger import calendar, store
from ledger.budgets import budgets, check
from ledger.exports import billing
from ledger.money import Money
from ledger.reports import build as reports
from ledger.store import prices as pricedb
from ledger.store import rollup
from tests.helpers import random_event, write_events

NY = ZoneInfo("America/New_York")  # DST ends on 2026-11-01 at 02:00 local
PROJECTS = ("alpha", "beta", "gamma")


def _raw(engine: sa.Engine, start: datetime, end: datetime, project: str) -> tuple[int, int, int]:
    """(usage calls, total tokens, cost nanos) of one project straight from the events table."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT SUM(CASE WHEN kind = 'usage' THEN 1 ELSE 0 END), COALESCE(SUM(total_tokens), 0), "
                "COALESCE(SUM(cost_nanos), 0) FROM events WHERE project = :p AND occurred_at >= :s AND occurred_at < :e"
            ),
            {"p": project, "s": _bind(engine, start), "e": _bind(engine, end)},
        ).one()
    return int(row[0] or 0), int(row[1]), int(row[2])


def _bind(engine: sa.Engine, when: datetime) -> object:
    # raw SQL on SQLite compares the stored UTC text, so bind the same text
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else when


def test_a_month_end_to_end(engine: sa.Engine) -> None:
    rng = random.Random(2026)
    utc_start, utc_end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    local_start = datetime(2026, 11, 1, tzinfo=NY).astimezone(UTC)
    local_end = datetime(2026, 12, 1, tzinfo=NY).astimezone(UTC)
    # a month of traffic, plus the last hours of October and the first of December around the edges
    span = int((local_end - utc_start).total_seconds()) + 6 * 3600
    for _ in range(6):
        write_events(
            engine,
            [
                random_event(utc_start - timedelta(hours=3) + timedelta(seconds=rng.randint(0, span)), rng)
                for _ in range(250)
            ],
        )
    # the price of gpt-oss-120b changes mid-month (direct calls)
    with store.write_transaction(engine) as conn:
        store.insert_prices(
            conn,
            [
                pricedb.new_point(
                    "cerebras",
                    "gpt-oss-120b",
                    "0.50",
                    "1.00",
                    effective_from=datetime(2026, 11, 15, tzinfo=UTC),
                )
            ],
        )
    write_events(
        engine,
        [
            random_event(datetime(2026, 11, 15, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 20000)), rng)
            for _ in range(300)
        ],
    )
    rollup.rollup(engine)

    # reports in New York time, per project: every figure equals the raw events of the local month
    month = calendar.parse_period("2026-11")
    for project in PROJECTS:
        rep = reports.build_report(engine, month, NY, project)
        calls, tokens, cost = _raw(engine, local_start, local_end, project)
        assert (rep.totals["calls"], rep.totals["total_tokens"], rep.totals["cost_nanos"]) == (
            calls,
            tokens,
            cost,
        )
        assert sum(int(v) for v in rep.days["cost_nanos"]) == cost  # and the days add up

    # the November billing export (UTC month) equals the raw events of the UTC month
    nov = billing.export_billing(engine, "2026-11", now=datetime(2026, 12, 1, 7, tzinfo=UTC))
    raw_total = sum(_raw(engine, utc_start, utc_end, p)[2] for p in PROJECTS)
    assert nov.billed == Money(raw_total)
    assert nov.corrections == 0
    by_project: dict[str, Decimal] = {}
    for row in nov.rows:
        by_project[row["SubAccountName"]] = (
            by_project.get(row["SubAccountName"], Decimal(0)) + row["BilledCost"]
        )
    for p in PROJECTS:
        assert by_project.get(p, Decimal(0)) == Money(_raw(engine, utc_start, utc_end, p)[2]).to_decimal()

    # a late event for November arrives after the month was issued: it lands in December's export
    late = random_event(datetime(2026, 11, 20, 12, tzinfo=UTC), random.Random(1), "alpha")
    while late.usage is None or late.requested_model == "mystery-model":
        late = random_event(datetime(2026, 11, 20, 12, tzinfo=UTC), random.Random(rng.random()), "alpha")
    write_events(engine, [late])
    rollup.rollup(engine)
    again = billing.export_billing(engine, "2026-11", now=datetime(2026, 12, 2, tzinfo=UTC))
    assert again.reissued and again.rows == nov.rows  # a closed month is never rewritten
    dec = billing.export_billing(engine, "2026-12", now=datetime(2027, 1, 1, 7, tzinfo=UTC))
    correction_total = sum(
        (r["BilledCost"] for r in dec.rows if r["ChargeClass"] == "Correction"), Decimal(0)
    )
    with engine.connect() as conn:
        late_cost = conn.execute(
            sa.text("SELECT cost_nanos FROM events WHERE event_id = :e"), {"e": late.event_id}
        ).scalar_one()
    assert correction_total == Money(int(late_cost)).to_decimal() and dec.corrections > 0

    # alerts: a monthly budget below alpha's paid spend fires each threshold once, with exact evidence
    with engine.connect() as conn:
        paid = int(
            conn.execute(
                sa.text(
                    "SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_rollup WHERE project = 'alpha' AND free = :f "
                    "AND bucket >= :s AND bucket < :e"
                ),
                {"f": False, "s": _bind(engine, utc_start), "e": _bind(engine, utc_end)},
            ).scalar_one()
        )
    assert paid > 0
    budgets.set_budget(engine, "alpha", monthly=Money(paid), now=datetime(2026, 11, 1, tzinfo=UTC))
    now = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    fired, _ = check.check(engine, now=now, deliver_now=False, projects=["alpha"])
    actual = {a.threshold: a for a in fired if a.rule == "month_actual"}
    assert set(actual) == {50, 80, 100}  # spend == budget: 100 % reached exactly
    assert all(Decimal(a.evidence["spent_usd"]) == Money(paid).to_decimal() for a in actual.values())
    again_fired, _ = check.check(engine, now=now, deliver_now=False, projects=["alpha"])
    assert not [a for a in again_fired if a.rule == "month_actual"]  # fired once, never again
