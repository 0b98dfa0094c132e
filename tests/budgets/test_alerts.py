"""Budgets and alerts: exact thresholds, forecasts, free-only, spikes, once-only firing and
at-least-once webhook delivery, on SQLite and PostgreSQL, with the clock given explicitly."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.budgets import budgets, check, outbox, rules, webhook
from ledger.cli.main import main
from ledger.config import ConfigError
from ledger.events import Usage
from ledger.money import Money, usd
from ledger.pricing import Charge
from ledger.store.schema import AlertRow
from tests.helpers import make_event

SECRET = "s3cr3t-Hmac-Key-4242"
QUIET = rules.SpikeRule(min_spend=usd("1000000"))  # no spike alerts in tests about other rules
NANO = 1


# -- helpers -----------------------------------------------------------------------------------


def spend(
    engine: sa.Engine,
    project: str,
    items: Sequence[tuple[datetime, int]],
    *,
    free: bool = False,
    priced: bool = True,
) -> None:
    """Write one usage event per (time, nano-dollars) with exactly that cost."""
    rows = []
    for when, nanos in items:
        ev = make_event(
            occurred_at=when,
            project=project,
            requested_model="llama3.1-8b" if free else "gpt-oss-120b",
            usage=Usage(10, 0, 10, 0, 20),
        )
        cost = Money(nanos) if priced else None
        rows.append(store.event_row(ev, Charge("test/price", cost, free, priced, None), when))
    with store.write_transaction(engine) as conn:
        store.insert_events(conn, rows)


def alert_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(sa.text("SELECT * FROM alerts ORDER BY project, rule, period, threshold"))
        ]


def keys(created: Sequence[check.Alert]) -> set[tuple[str, str, str, int]]:
    return {(a.project, a.rule, a.period, a.threshold) for a in created}


def as_utc(value: Any) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class Receiver:
    """A real loopback HTTP receiver answering with scripted statuses (then 200)."""

    def __init__(self, statuses: Sequence[int] = (), delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "status": status,
                        }
                    )
                if delay:
                    threading.Event().wait(delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0SECRETPATH"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


# -- thresholds --------------------------------------------------------------------------------


def test_monthly_thresholds_fire_once_at_exact_boundaries(engine: sa.Engine) -> None:
    budgets.set_budget(engine, "search", monthly="10.00", now=datetime(2026, 11, 1, tzinfo=UTC))
    now = datetime(2026, 11, 15, 12, tzinfo=UTC)
    t = datetime(2026, 11, 3, 9, tzinfo=UTC)
    spend(engine, "search", [(datetime(2026, 10, 31, 23, 59, tzinfo=UTC), 10**12)])  # October: not November's
    spend(engine, "search", [(t, 5 * 10**9 - NANO)])
    spend(engine, "search", [(t, 10**9)], free=True)  # free usage never counts
    assert check.check(engine, now=now, spike=QUIET)[0] == []
    spend(engine, "search", [(t, NANO)])  # exactly 5.000000000 = 50 %
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {("search", "month_actual", "2026-11", 50)}
    ev = created[0].evidence
    assert (ev["spent_usd"], ev["budget_usd"], ev["threshold_usd"], ev["threshold_pct"]) == (
        "5.000000000",
        "10.000000000",
        "5.000000000",
        50,
    )
    assert (ev["window_start"], ev["window_end"]) == ("2026-11-01T00:00:00Z", "2026-11-15T12:00:00Z")
    assert check.check(engine, now=now, spike=QUIET)[0] == []  # a re-run fires nothing
    spend(engine, "search", [(t, 3 * 10**9 - NANO)])  # 7.999999999
    assert check.check(engine, now=now, spike=QUIET)[0] == []
    spend(engine, "search", [(t, NANO)])
    assert keys(check.check(engine, now=now, spike=QUIET)[0]) == {("search", "month_actual", "2026-11", 80)}
    spend(engine, "search", [(t, 5 * 10**9)])  # far over: 100 % once, even from a later run
    assert keys(check.check(engine, now=now, spike=QUIET)[0]) == {("search", "month_actual", "2026-11", 100)}
    assert check.check(engine, now=now + timedelta(days=1), spike=QUIET)[0] == []
    rows = alert_rows(engine)
    assert [(r["rule"], r["period"], r["threshold"]) for r in rows] == [
        ("month_actual", "2026-11", 50),
        ("month_actual", "2026-11", 80),
        ("month_actual", "2026-11", 100),
    ]
    assert all(json.loads(r["evidence"])["budget_usd"] == "10.000000000" for r in rows)
    assert "10.000000000" in rows[0]["message"] and "search" in rows[0]["message"]


def test_daily_budget_counts_local_days_exactly(engine: sa.Engine) -> None:
    # Kathmandu is UTC+05:45: its day 2026-11-05 starts at 2026-11-04T18:15Z.
    budgets.set_budget(
        engine,
        "kt",
        daily="1",
        thresholds="100",
        timezone="Asia/Kathmandu",
        now=datetime(2026, 11, 1, tzinfo=UTC),
    )
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    spend(
        engine, "kt", [(datetime(2026, 11, 4, 18, 14, 59, 999999, tzinfo=UTC), 10**9)]
    )  # 23:59:59 on the 4th
    spend(engine, "kt", [(datetime(2026, 11, 4, 18, 15, tzinfo=UTC), 10**9 - NANO)])  # 00:00 on the 5th
    created, _ = check.check(engine, now=now, spike=QUIET)
    # yesterday (ended after the budget was set) is reported; today is one nano-dollar short
    assert keys(created) == {("kt", "day_actual", "2026-11-04", 100)}
    assert created[0].evidence["window_start"] == "2026-11-03T18:15:00Z"
    assert created[0].evidence["window_end"] == "2026-11-04T18:15:00Z"
    spend(engine, "kt", [(datetime(2026, 11, 5, 11, 59, tzinfo=UTC), NANO)])
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {("kt", "day_actual", "2026-11-05", 100)}
    assert created[0].evidence["spent_usd"] == "1.000000000"
    assert created[0].evidence["window_start"] == "2026-11-04T18:15:00Z"


def test_a_budget_set_today_does_not_report_yesterday(engine: sa.Engine) -> None:
    spend(engine, "late", [(datetime(2026, 11, 4, 10, tzinfo=UTC), 5 * 10**9)])
    budgets.set_budget(engine, "late", daily="1", monthly="100", now=datetime(2026, 11, 5, 8, tzinfo=UTC))
    created, _ = check.check(engine, now=datetime(2026, 11, 5, 9, tzinfo=UTC), spike=QUIET)
    assert keys(created) == set()  # the 4th ended before the budget existed; the month is at 5 %


def test_firing_the_same_alert_twice_inserts_once(engine: sa.Engine) -> None:
    """The database's unique key, not the pre-check, is what makes alerts fire once."""
    cand = rules.Candidate("p", "month_actual", "2026-11", 50, "msg", {"threshold_pct": 50})
    when = datetime(2026, 11, 5, tzinfo=UTC)
    assert len(check.fire(engine, [cand], when)) == 1
    assert check.fire(engine, [cand, cand], when) == []
    assert len(alert_rows(engine)) == 1


def test_threads_checking_at_once_fire_each_alert_once(engine: sa.Engine, db_url: str) -> None:
    budgets.set_budget(
        engine, "race", monthly="1", daily="1", free_only=True, now=datetime(2026, 11, 1, tzinfo=UTC)
    )
    spend(engine, "race", [(datetime(2026, 11, 5, 10, tzinfo=UTC), 2 * 10**9)])
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    barrier = threading.Barrier(4)
    results: list[list[check.Alert]] = []
    errors: list[BaseException] = []

    def run() -> None:
        eng = store.make_engine(db_url)
        try:
            barrier.wait(30)
            results.append(check.check(eng, now=now, spike=QUIET)[0])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    expected = {
        ("race", r, p, pct)
        for r, p in (("month_actual", "2026-11"), ("day_actual", "2026-11-05"))
        for pct in (50, 80, 100)
    } | {("race", "free_only", "2026-11", 0)}
    fired = [k for batch in results for k in keys(batch)]
    assert sorted(fired) == sorted(expected)  # each reported as new by exactly one thread
    assert len(alert_rows(engine)) == len(expected)


def test_processes_checking_at_once_fire_each_alert_once(engine: sa.Engine, db_url: str) -> None:
    budgets.set_budget(
        engine,
        "proc",
        monthly="1",
        thresholds="10,20,30,40,50,60,70,80,90,100",
        now=datetime(2026, 11, 1, tzinfo=UTC),
    )
    spend(engine, "proc", [(datetime(2026, 11, 5, 10, tzinfo=UTC), 2 * 10**9)])
    code = (
        "import sys, datetime; from ledger import store; from ledger.budgets import check, rules\n"
        "e = store.make_engine(sys.argv[1])\n"
        "new, _ = check.check(e, now=datetime.datetime(2026, 11, 5, 12, tzinfo=datetime.UTC),"
        " spike=rules.SpikeRule.parse('3', '1000000'))\n"
        "print(len(new))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(int(o.strip()) for o in outs) == 10
    assert len(alert_rows(engine)) == 10


# -- forecast, free-only, spike ------------------------------------------------------------------


def test_forecast_alert_at_the_exact_forecast(engine: sa.Engine) -> None:
    budgets.set_budget(engine, "fc", monthly="60", now=datetime(2026, 10, 1, tzinfo=UTC))
    # $2 a day on Nov 1-9, the first day one nano-dollar short. At Nov 10 00:00 UTC: spent 18 - 1e-9;
    # the last 7 complete days (Nov 3-9) spent 14, and 21 days are left: forecast 18 + 14 * 3 - 1e-9.
    spend(
        engine,
        "fc",
        [(datetime(2026, 11, d, 12, tzinfo=UTC), 2 * 10**9 - (NANO if d == 1 else 0)) for d in range(1, 10)],
    )
    now = datetime(2026, 11, 10, tzinfo=UTC)
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {("fc", "month_forecast", "2026-11", 50), ("fc", "month_forecast", "2026-11", 80)}
    ev = created[0].evidence
    assert (ev["forecast_usd"], ev["spent_usd"], ev["trailing_usd"]) == (
        "59.999999999",
        "17.999999999",
        "14.000000000",
    )
    assert (ev["trailing_start"], ev["trailing_end"], ev["month_end"]) == (
        "2026-11-03T00:00:00Z",
        "2026-11-10T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    spend(engine, "fc", [(datetime(2026, 11, 1, 13, tzinfo=UTC), NANO)])
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {("fc", "month_forecast", "2026-11", 100)}
    assert created[0].evidence["forecast_usd"] == "60.000000000"
    assert "forecast" in created[0].message


def test_forecast_early_in_the_month_uses_the_last_seven_days(engine: sa.Engine) -> None:
    budgets.set_budget(engine, "early", monthly="10", now=datetime(2026, 10, 1, tzinfo=UTC))
    budgets.set_budget(engine, "fresh", monthly="10", now=datetime(2026, 10, 1, tzinfo=UTC))
    now = datetime(2026, 11, 2, 6, tzinfo=UTC)
    # "fresh" spent 4 USD today and nothing before: no history, so the forecast is the actual spend.
    spend(engine, "fresh", [(datetime(2026, 11, 2, 1, tzinfo=UTC), 4 * 10**9)])
    # "early" spent 1 USD on Nov 1 (in its last 7 complete days) and 4 today: 5 so far, and
    # 1 USD a week over the 28.75 days left: 5 + 28.75 / 7 = 9.107142857 (rounded down).
    spend(
        engine,
        "early",
        [(datetime(2026, 11, 1, 10, tzinfo=UTC), 10**9), (datetime(2026, 11, 2, 1, tzinfo=UTC), 4 * 10**9)],
    )
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {
        ("early", "month_actual", "2026-11", 50),
        ("early", "month_forecast", "2026-11", 80),
    }
    forecast = next(a for a in created if a.rule == "month_forecast")
    assert forecast.evidence["forecast_usd"] == "9.107142857"
    assert forecast.evidence["trailing_start"] == "2026-10-26T00:00:00Z"


def test_free_only_project_alerts_on_one_paid_call(engine: sa.Engine) -> None:
    budgets.set_budget(engine, "free", free_only=True, now=datetime(2026, 11, 1, tzinfo=UTC))
    now = datetime(2026, 11, 20, tzinfo=UTC)
    spend(
        engine,
        "free",
        [(datetime(2026, 11, 3, tzinfo=UTC) + timedelta(hours=i), 0) for i in range(50)],
        free=True,
    )
    assert check.check(engine, now=now, spike=QUIET)[0] == []
    spend(engine, "free", [(datetime(2026, 11, 19, tzinfo=UTC), 350)])
    created, _ = check.check(engine, now=now, spike=QUIET)
    assert keys(created) == {("free", "free_only", "2026-11", 0)}
    assert (created[0].evidence["paid_calls"], created[0].evidence["spent_usd"]) == (1, "0.000000350")
    spend(engine, "free", [(datetime(2026, 11, 19, 1, tzinfo=UTC), 350)])
    assert check.check(engine, now=now, spike=QUIET)[0] == []  # once per month
    spend(engine, "free", [(datetime(2026, 12, 1, 1, tzinfo=UTC), 0)], priced=False)  # an unknown model
    created, _ = check.check(engine, now=datetime(2026, 12, 1, 2, tzinfo=UTC), spike=QUIET)
    assert keys(created) == {("free", "free_only", "2026-12", 0)}


def test_spike_alert(engine: sa.Engine) -> None:
    budgets.set_budget(engine, "sp", now=datetime(2026, 11, 1, tzinfo=UTC))
    budgets.set_budget(engine, "small", now=datetime(2026, 11, 1, tzinfo=UTC))
    now = datetime(2026, 11, 5, 13, 5, tzinfo=UTC)  # window: buckets 12:15 up to 13:15
    # trailing 24 h (Nov 4 12:15 - Nov 5 12:15): 0.50 USD an hour -> 3x the average is 1.50
    spend(
        engine,
        "sp",
        [(datetime(2026, 11, 4, 12, 30, tzinfo=UTC) + timedelta(hours=i), 5 * 10**8) for i in range(24)],
    )
    spend(
        engine,
        "sp",
        [
            (datetime(2026, 11, 5, 12, 20, tzinfo=UTC), 10**9),
            (datetime(2026, 11, 5, 13, 1, tzinfo=UTC), 5 * 10**8),
        ],
    )
    spend(
        engine, "small", [(datetime(2026, 11, 5, 13, tzinfo=UTC), 99 * 10**7)]
    )  # no history, under the minimum
    assert check.check(engine, now=now)[0] == []  # exactly 3x is not above 3x
    spend(engine, "sp", [(datetime(2026, 11, 5, 13, 2, tzinfo=UTC), NANO)])
    created, _ = check.check(engine, now=now)
    assert keys(created) == {("sp", "spike", "2026-11-05T13:00Z", 300)}
    ev = created[0].evidence
    assert (ev["spent_usd"], ev["trailing_usd"], ev["trailing_average_usd"]) == (
        "1.500000001",
        "12.000000000",
        "0.500000000",
    )
    assert (ev["window_start"], ev["window_end"], ev["trailing_start"]) == (
        "2026-11-05T12:15:00Z",
        "2026-11-05T13:15:00Z",
        "2026-11-04T12:15:00Z",
    )
    assert check.check(engine, now=now + timedelta(minutes=5))[0] == []  # the same hour: not again
    # configurable: a lower minimum makes the small project's first dollar a spike
    created, _ = check.check(engine, now=now, spike=rules.SpikeRule.parse("2", "0.50", 30, 6))
    assert keys(created) == {("small", "spike", "2026-11-05T13:00Z", 200)}


# -- delivery ------------------------------------------------------------------------------------


def _one_alert(engine: sa.Engine, now: datetime) -> check.Alert:
    budgets.set_budget(engine, "hook", free_only=True, now=now - timedelta(days=1))
    spend(engine, "hook", [(now - timedelta(hours=1), 750)])
    created, _ = check.check(engine, now=now, spike=QUIET, deliver_now=False)
    assert len(created) == 1
    return created[0]


def test_webhook_fails_then_delivers_exactly_once(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    alert = _one_alert(engine, now)
    with Receiver([500]) as rx:
        hook = webhook.Webhook(rx.url, SECRET)
        first = outbox.deliver(engine, hook, now=now)
        assert (first.delivered, first.failed, first.errors) == (0, 1, ("HTTP 500",))
        row = alert_rows(engine)[0]
        assert (row["attempts"], row["delivered_at"], row["last_error"]) == (1, None, "HTTP 500")
        assert as_utc(row["next_attempt_at"]) == now + timedelta(seconds=30)
        assert outbox.deliver(engine, hook, now=now + timedelta(seconds=29)) == outbox.DeliveryResult()
        assert len(rx.requests) == 1  # not due yet: nothing sent
        second = outbox.deliver(engine, hook, now=now + timedelta(seconds=30))
        assert (second.delivered, second.failed) == (1, 0)
        assert outbox.deliver(engine, hook, now=now + timedelta(days=1)) == outbox.DeliveryResult()
        assert (
            check.check(engine, now=now + timedelta(minutes=1), spike=QUIET, webhook=hook)[1].delivered == 0
        )
    assert [r["status"] for r in rx.requests] == [500, 200]
    assert {r["headers"]["x-ledger-alert-id"] for r in rx.requests} == {alert.alert_id}
    assert rx.requests[0]["body"] == rx.requests[1]["body"]
    row = alert_rows(engine)[0]
    assert (row["attempts"], row["last_error"], row["claimed_until"]) == (2, None, None)
    assert as_utc(row["delivered_at"]) == now + timedelta(seconds=30)
    # the body: Slack-compatible text plus the alert's fields; the signature verifies with the secret
    req = rx.requests[1]
    body = json.loads(req["body"])
    assert body["text"].endswith(alert.message) and body["alert_id"] == alert.alert_id
    assert (body["project"], body["rule"], body["period"], body["threshold"]) == (
        "hook",
        "free_only",
        "2026-11",
        0,
    )
    assert body["evidence"]["spent_usd"] == "0.000000750"
    expected = "sha256=" + hmac.new(SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req["headers"]["x-ledger-signature"], expected)
    wrong = "sha256=" + hmac.new(b"another-secret", req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["x-ledger-signature"] != wrong
    # never the secret, nor the URL's path (a credential for Slack hooks), in logs or the database
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "delivered" in logs and "HTTP 500" in logs
    assert SECRET not in logs and "T0SECRETPATH" not in logs
    assert SECRET not in repr(hook)
    dump = json.dumps(alert_rows(engine), default=str)
    assert SECRET not in dump and "T0SECRETPATH" not in dump


def test_unreachable_webhook_is_retried_with_backoff(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    _one_alert(engine, now)
    with Receiver() as rx:
        port = rx.server.server_address[1]
        dead = f"http://user:pw-{SECRET}@127.0.0.1:{port}/hooks/T0SECRETPATH?token={SECRET}"
    hook = webhook.Webhook(dead, SECRET, timeout=5)  # the receiver is gone: connection refused
    waits = []
    for n in range(1, 4):
        due = as_utc(alert_rows(engine)[0]["next_attempt_at"])
        assert outbox.deliver(engine, hook, now=due).failed == 1
        row = alert_rows(engine)[0]
        assert row["attempts"] == n and row["delivered_at"] is None
        assert row["last_error"].startswith("ConnectError")
        waits.append(as_utc(row["next_attempt_at"]) - due)
    assert waits == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    logs = "\n".join(r.getMessage() for r in caplog.records) + json.dumps(alert_rows(engine), default=str)
    assert SECRET not in logs and "T0SECRETPATH" not in logs and "pw-" not in logs


def test_a_claimed_alert_waits_for_its_lease(engine: sa.Engine) -> None:
    """A process that claimed an alert and died before sending: nobody sends it until the lease
    expires (on the database's clock, whatever the caller's clock says); then it is delivered once."""
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    alert = _one_alert(engine, now)
    assert (
        outbox.claim(engine, now, timedelta(minutes=5)).alert_id == alert.alert_id
    )  # ... and the process dies
    with Receiver() as rx:
        hook = webhook.Webhook(rx.url)
        assert outbox.deliver(engine, hook, now=now + timedelta(minutes=4)) == outbox.DeliveryResult()
        assert outbox.deliver(engine, hook, now=now + timedelta(days=9)) == outbox.DeliveryResult()
        assert rx.requests == []
        with store.write_transaction(engine) as conn:  # five minutes pass on the database's clock
            conn.execute(sa.update(AlertRow).values(claimed_until=store.db_now(conn)))
        assert outbox.deliver(engine, hook, now=now + timedelta(minutes=5)).delivered == 1
    assert len(rx.requests) == 1 and "x-ledger-signature" not in rx.requests[0]["headers"]
    assert rx.requests[0]["headers"]["x-ledger-alert-id"] == alert.alert_id


def test_bad_webhook_url_is_one_error_line(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    for bad in ("ftp://example.com/hook", "http://example.com:99999/x", "not a url"):
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", bad)
        code, _, err = run(capsys, db_url, "alerts", "check")
        assert "LEDGER_ALERT_WEBHOOK_URL" in one_error(code, err, 1)


def test_no_webhook_url_logs_only(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_SECRET", SECRET)
    assert webhook.webhook_from_env() is None
    caplog.set_level(logging.INFO, logger="ledger.alerts")
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    budgets.set_budget(engine, "quiet", monthly="1", thresholds="100", now=now - timedelta(days=1))
    spend(engine, "quiet", [(now - timedelta(hours=2), 10**9)])
    with Receiver() as rx:  # listening, but nobody told the ledger about it
        created, result = check.run_checks(engine, now=now)
    assert keys(created) == {("quiet", "month_actual", "2026-11", 100)}
    assert result == outbox.DeliveryResult()
    assert rx.requests == []
    logged = [r for r in caplog.records if r.name == "ledger.alerts"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert created[0].message in logged[0].getMessage()
    assert SECRET not in caplog.text
    assert alert_rows(engine)[0]["delivered_at"] is None  # kept in the outbox for a webhook configured later


def test_two_deliverers_at_once_send_each_alert_once(engine: sa.Engine, db_url: str) -> None:
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    budgets.set_budget(
        engine, "many", monthly="1", thresholds="10,20,30,40,50,60", now=now - timedelta(days=1)
    )
    spend(engine, "many", [(now - timedelta(hours=3), 10**9)])
    assert len(check.check(engine, now=now, spike=QUIET, deliver_now=False)[0]) == 6
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []
    with Receiver(delay=0.05) as rx:
        hook = webhook.Webhook(rx.url, SECRET)

        def run() -> None:
            eng = store.make_engine(db_url)
            try:
                barrier.wait(30)
                outbox.deliver(eng, hook, now=now)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                eng.dispose()

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    ids = [r["headers"]["x-ledger-alert-id"] for r in rx.requests]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert all(r["delivered_at"] is not None and r["attempts"] == 1 for r in alert_rows(engine))


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("50,80,100", (50, 80, 100)), (" 100 , 50", (50, 100)), ("120", (120,))]
)
def test_thresholds_parse(text: str, expected: tuple[int, ...]) -> None:
    assert budgets.parse_thresholds(text) == expected


@pytest.mark.parametrize("text", ["", "0", "50,50", "1001", "5.5", "x", "-10", "50,,80"])
def test_bad_thresholds_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        budgets.parse_thresholds(text)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1e-10", "nan", "1e12"])
def test_bad_amounts_are_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        budgets.parse_amount(value)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../../etc/passwd", "/etc/localtime", "America"])
def test_bad_zones_are_refused(zone: str) -> None:
    with pytest.raises(ConfigError):
        budgets.parse_timezone(zone)


def test_spike_rule_checks_its_parameters() -> None:
    for args in (("0.5", "1"), ("3.333", "1"), ("x", "1"), ("3", "-1"), ("3", "abc")):
        with pytest.raises(ConfigError):
            rules.SpikeRule.parse(*args)
    with pytest.raises(ConfigError):
        rules.SpikeRule.parse("3", "1", 20)
    assert rules.SpikeRule.parse("2.5", "0.10", 30, 6) == rules.SpikeRule(
        Decimal("2.5"), usd("0.10"), timedelta(minutes=30), timedelta(hours=6)
    )
    with pytest.raises(ConfigError):
        webhook.Webhook("ftp://example.com/x")


def test_budget_crud(engine: sa.Engine) -> None:
    b = budgets.set_budget(
        engine,
        "crud",
        monthly="12.5",
        daily="0.000000001",
        thresholds=[100, 75],
        timezone="America/New_York",
        hard=True,
    )
    assert (b.monthly, b.daily, b.thresholds, b.hard) == (Money(12_500_000_000), Money(1), (75, 100), True)
    with engine.connect() as conn:
        assert budgets.get_budget(conn, "crud") == b
    budgets.set_budget(engine, "crud", free_only=True)  # replaces the whole budget
    with engine.connect() as conn:
        again = budgets.get_budget(conn, "crud")
        assert again is not None
        assert (again.monthly, again.free_only, again.thresholds, again.timezone) == (
            None,
            True,
            (50, 80, 100),
            "UTC",
        )
    assert budgets.remove_budget(engine, "crud") is True
    assert budgets.remove_budget(engine, "crud") is False
    with engine.connect() as conn:
        assert budgets.list_budgets(conn) == []


# -- command line ----------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--database-url", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, expected_code: int) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert code == expected_code
    return lines[0]


def test_cli_end_to_end(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("LEDGER_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("LEDGER_ALERT_WEBHOOK_SECRET", raising=False)
    code, out, err = run(
        capsys,
        db_url,
        "budget",
        "set",
        "web",
        "--monthly",
        "10",
        "--daily",
        "2.50",
        "--thresholds",
        "80,50",
        "--timezone",
        "Europe/Berlin",
        "--hard",
    )
    assert code == 0, err
    assert "web" in out and "10.000000000" in out
    assert run(capsys, db_url, "budget", "set", "other", "--free-only")[0] == 0
    code, out, _ = run(capsys, db_url, "budget", "list", "--format", "json")
    listed = {b["project"]: b for b in json.loads(out)}
    assert listed["web"]["monthly_usd"] == "10.000000000" and listed["web"]["daily_usd"] == "2.500000000"
    assert (listed["web"]["thresholds"], listed["web"]["timezone"], listed["web"]["hard"]) == (
        "50,80",
        "Europe/Berlin",
        True,
    )
    assert listed["other"]["free_only"] is True and listed["other"]["monthly_usd"] is None
    code, out, _ = run(capsys, db_url, "budget", "list", "--format", "csv")
    assert (
        out.splitlines()[0]
        == "project,monthly_usd,daily_usd,thresholds,timezone,free_only,hard,refused_until,updated_at"
    )
    assert len(out.splitlines()) == 3
    code, out, _ = run(capsys, db_url, "budget", "list")
    assert (
        out.splitlines()[0].split()[:3] == ["project", "monthly_usd", "daily_usd"] and "Europe/Berlin" in out
    )

    eng = store.make_engine(db_url)
    try:
        spend(
            eng, "web", [(datetime(2026, 11, 5, 8, tzinfo=UTC), 5 * 10**9)]
        )  # 50 % of month, 200 % of the day
    finally:
        eng.dispose()
    now = "2026-11-05T12:00:00Z"
    code, out, err = run(capsys, db_url, "alerts", "check", "--now", now, "--spike-min", "1000")
    assert code == 0, err
    assert out.splitlines()[0] == "3 new alert(s)"
    assert "not configured" in out and "logged only" in out
    code, out, _ = run(
        capsys, db_url, "alerts", "check", "--now", now, "--spike-min", "1000", "--format", "json"
    )
    assert json.loads(out) == []  # a re-run: nothing new
    code, out, _ = run(capsys, db_url, "alerts", "list", "--format", "json")
    got = {(a["rule"], a["period"], a["threshold"]) for a in json.loads(out)}
    assert got == {
        ("month_actual", "2026-11", 50),
        ("day_actual", "2026-11-05", 50),
        ("day_actual", "2026-11-05", 80),
    }
    assert all(
        a["status"] == "pending" and a["evidence"]["timezone"] == "Europe/Berlin" for a in json.loads(out)
    )
    code, out, _ = run(capsys, db_url, "alerts", "list", "--format", "csv", "--project", "nobody")
    assert out.splitlines() == [
        "created_at,project,rule,period,threshold,status,attempts,message,alert_id,last_error"
    ]

    # with a webhook configured, the same outbox is delivered, signed, once
    with Receiver() as rx:
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", rx.url)
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_SECRET", SECRET)
        code, out, err = run(capsys, db_url, "-v", "alerts", "check", "--now", now, "--spike-min", "1000")
        assert code == 0, err
        assert "3 delivered, 0 failed" in out
        assert run(capsys, db_url, "alerts", "check", "--now", now)[0] == 0
    assert len(rx.requests) == 3
    assert SECRET not in out + err and "T0SECRETPATH" not in out + err
    code, out, _ = run(capsys, db_url, "alerts", "list", "--undelivered", "--format", "json")
    assert json.loads(out) == []

    assert run(capsys, db_url, "budget", "remove", "other")[0] == 0
    code, _, err = run(capsys, db_url, "budget", "remove", "other")
    assert "no budget" in one_error(code, err, 1)

    # the hard budget spent in full: the check says so, budget list shows until when (the local month end)
    eng = store.make_engine(db_url)
    try:
        spend(eng, "web", [(datetime(2026, 11, 5, 9, tzinfo=UTC), 5 * 10**9)])
    finally:
        eng.dispose()
    code, out, err = run(
        capsys, db_url, "alerts", "check", "--now", now, "--spike-min", "1000", "--no-deliver"
    )
    assert code == 0, err
    assert (
        "hard budget spent: 'web' (10.000000000 of 10.000000000 USD in 2026-11); paid-model calls refused "
        "until 2026-11-30T23:00:00Z"
    ) in out
    code, out, _ = run(capsys, db_url, "budget", "list", "--format", "json")
    month_end = datetime(2026, 11, 30, 23, tzinfo=UTC)  # budget list shows stops in force now
    expected = "2026-11-30T23:00:00Z" if datetime.now(UTC) < month_end else None
    assert {b["project"]: b["refused_until"] for b in json.loads(out)} == {"web": expected}

    for args, word in [
        (("--monthly", "ten"), "--monthly"),
        (("--daily", "0"), "--daily"),
        (("--monthly", "0.0000000001"), "nano-dollar"),
        (("--thresholds", "50,abc"), "--thresholds"),
        (("--thresholds", "0"), "range"),
        (("--timezone", "Mars/Olympus"), "--timezone"),
    ]:
        code, _, err = run(capsys, db_url, "budget", "set", "web", *args)
        assert word in one_error(code, err, 2)
    code, _, err = run(capsys, db_url, "alerts", "check", "--spike-factor", "0.5")
    assert "spike factor" in one_error(code, err, 2)
    code, _, err = run(capsys, db_url, "alerts", "check", "--now", "yesterday")
    one_error(code, err, 1)
    for group in (
        ("budget", "set"),
        ("budget", "list"),
        ("budget", "remove"),
        ("alerts", "check"),
        ("alerts", "list"),
    ):
        code, out, _ = run(capsys, db_url, *group, "--help")
        assert code == 0 and "Example" in out, group
