"""The scheduler's jobs stay independent: a hung webhook delivery never starves the rollups, the
alert checks or the hard-budget stops; job leases are on the database's clock; SIGTERM stops a
real ``cerebras-ledger scheduler`` process promptly even with a delivery in flight.

Real SQLite files and PostgreSQL (``db_url``), real loopback receivers, real subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.budgets import budgets
from ledger.config import ConfigError
from ledger.scheduler import runner as scheduler
from ledger.scheduler.runner import Lease, Schedule, build_scheduler
from ledger.store import rollup
from ledger.store.schema import LeaseRow
from tests.budgets.test_alerts import alert_rows, spend
from tests.budgets.test_delivery import Hostile


def wait_until(check: Any, limit: float = 90) -> bool:
    """Poll ``check`` until true; a generous bound so a broken scheduler fails instead of hanging."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


def stops(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT project FROM budget_stops")).scalars())


# -- job leases ------------------------------------------------------------------------------------


class _AheadClock(datetime):
    """A host clock one hour ahead: what a second scheduler on a badly set machine reads."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(hours=1)


def test_job_leases_are_on_the_database_clock(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = Lease(engine, "job", 60, "a"), Lease(engine, "job", 60, "b")
    assert a.acquire()
    monkeypatch.setattr(scheduler, "datetime", _AheadClock)  # b's host is an hour ahead
    assert not b.acquire()  # ... but the lease is the database's: still a's for a minute
    assert a.acquire()  # the holder renews
    with store.write_transaction(engine) as conn:  # the minute passes on the database's clock
        conn.execute(sa.update(LeaseRow).values(expires_at=store.db_now(conn) - timedelta(seconds=1)))
    assert b.acquire() and not a.acquire()
    with engine.connect() as conn:
        expires = conn.execute(sa.select(LeaseRow.__table__.c.expires_at)).scalar_one()
        assert expires - store.db_now(conn) <= timedelta(seconds=60)  # not an hour ahead
    b.release()
    assert a.acquire()


# -- a hung delivery starves nothing ---------------------------------------------------------------


def test_a_hung_delivery_does_not_stop_rollups_alerts_or_hard_budget_stops(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reliability: Any
) -> None:
    now = datetime.now(UTC)
    budgets.set_budget(engine, "hook", free_only=True, now=now - timedelta(days=1))
    budgets.set_budget(engine, "capped", monthly="1", hard=True, now=now - timedelta(days=1))
    spend(engine, "hook", [(now - timedelta(minutes=1), 750)])
    stop = threading.Event()
    with Hostile("trickle") as rx:  # answers one byte a second, for ever
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_URL", rx.url)
        monkeypatch.setenv("LEDGER_ALERT_WEBHOOK_TIMEOUT", "300")  # longer than this test
        schedule = Schedule(rollup_seconds=1, reports_dir=str(tmp_path)).check()
        sched = build_scheduler(engine, schedule, stop=stop)
        runner = threading.Thread(target=sched.start, daemon=True)
        runner.start()
        try:
            assert rx.wait_for(1)  # the free-only alert is being delivered ... and hangs there
            # meanwhile "capped" spends past its hard budget, and more usage keeps arriving
            spend(engine, "capped", [(datetime.now(UTC) - timedelta(minutes=1), 2 * 10**9)])
            spend(engine, "hook", [(datetime.now(UTC) - timedelta(minutes=1), 5)])
            assert wait_until(lambda: rollup.pending(engine) == (0, 0) and "capped" in stops(engine))
            assert wait_until(lambda: any(r["project"] == "capped" for r in alert_rows(engine)))
            assert len(rx.requests) == 1 and alert_rows(engine)[0]["delivered_at"] is None  # still hung
        finally:
            stop.set()
            sched.shutdown(wait=False)
            runner.join(30)
    rolled = rollup.pending(engine) == (0, 0)
    reliability(
        load="scheduler, 1 s rollups",
        fault="webhook delivery hung (trickling receiver)",
        inputs="hard budget crossed during the hang",
        expected="rolled up, stopped",
        recorded="rolled up, stopped" if rolled and "capped" in stops(engine) else "starved",
        lost=0,
    )


def test_each_job_has_a_worker_of_its_own(engine: sa.Engine) -> None:
    sched = build_scheduler(engine, Schedule().check())
    jobs = sched.get_jobs()
    assert {j.id for j in jobs} == {"rollup", "deliver", "daily-reports", "billing"}
    assert sched._executors["default"]._pool._max_workers >= len(jobs)


# -- SIGTERM ---------------------------------------------------------------------------------------


def test_sigterm_stops_the_scheduler_with_a_delivery_in_flight(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    budgets.set_budget(engine, "hook", free_only=True, now=now - timedelta(days=1))
    spend(engine, "hook", [(now - timedelta(minutes=1), 750)])
    with Hostile("trickle") as rx:
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": db_url,
            "LEDGER_HOME": str(tmp_path / "home"),
            "LEDGER_SPOOL_DIR": str(tmp_path / "spool"),
            "LEDGER_SCHEDULE_ROLLUP_SECONDS": "1",
            "LEDGER_REPORTS_DIR": str(tmp_path / "reports"),
            "LEDGER_ALERT_WEBHOOK_URL": rx.url,
            "LEDGER_ALERT_WEBHOOK_TIMEOUT": "300",
        }  # the deadline alone would not end it in time
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "-v", "scheduler"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert rx.wait_for(1, 90), "the scheduler never delivered"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)  # generous: only there so a hang fails the test
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "SIGTERM received, shutting down" in err and "scheduler: stopped" in err and "Traceback" not in err
    row = alert_rows(engine)[0]
    # cut short by the stop, not by its 300 s deadline; kept in the outbox for the next run
    assert (row["attempts"], row["delivered_at"], row["claimed_until"]) == (1, None, None)
    assert row["last_error"] == "interrupted (shutting down)"
    assert "T0SECRETPATH" not in err


HUNG_JOB = """
import sys, threading
from ledger import store
from ledger.scheduler.runner import Schedule, run_scheduler

engine = store.make_engine(sys.argv[1])
store.ensure_schema(engine)

def rollup():
    print("job started", file=sys.stderr, flush=True)
    threading.Event().wait()  # hangs for ever: a database that never answers, say

run_scheduler(engine, Schedule(rollup_seconds=1, shutdown_grace_seconds=1).check(), jobs={"rollup": rollup})
"""


def test_sigterm_stops_the_scheduler_even_with_a_job_hung_for_ever(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "LEDGER_HOME": str(tmp_path / "home"), "LEDGER_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_JOB, db_url],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the job is running
            if "job started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # generous: only there so a hang fails the test
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err  # it stopped, and says it left a job behind
    assert "job(s) rollup still running after 1 s; exiting without them" in err and "Traceback" not in err


def test_a_bad_shutdown_grace_is_refused() -> None:
    with pytest.raises(ConfigError, match="shutdown_grace_seconds"):
        scheduler.load_schedule(None, env={"LEDGER_SCHEDULE_SHUTDOWN_GRACE_SECONDS": "-1"})
    zero = scheduler.load_schedule(None, env={"LEDGER_SCHEDULE_SHUTDOWN_GRACE_SECONDS": "0"})
    assert zero.shutdown_grace_seconds == 0


SIGNAL_MID_SUBMIT = """
import logging, os, signal, sys
from apscheduler.executors.base import BaseExecutor
from ledger import store
from ledger.scheduler.runner import Schedule, run_scheduler

logging.basicConfig(level=logging.INFO)
engine = store.make_engine(sys.argv[1])
store.ensure_schema(engine)
submit = BaseExecutor.submit_job

def submit_then_signal(self, job, run_times):
    # The signal lands while the scheduler is handing jobs to its executor: the worst moment.
    if job.id == "deliver":
        os.kill(os.getpid(), signal.SIGTERM)
    return submit(self, job, run_times)

BaseExecutor.submit_job = submit_then_signal
run_scheduler(
    engine,
    Schedule(rollup_seconds=1, shutdown_grace_seconds=5).check(),
    jobs={"rollup": lambda: None, "deliver": lambda: None},
)
"""


def test_a_signal_while_jobs_are_being_submitted_stops_cleanly(db_url: str, tmp_path: Path) -> None:
    """A SIGTERM that lands while the scheduler hands a job to its executor: the stop waits for
    the hand-over to end, instead of shutting the pool down under it (CI once saw "cannot
    schedule new futures after shutdown", then ``JobLookupError`` and exit status 1)."""
    env = {**os.environ, "LEDGER_HOME": str(tmp_path / "home"), "LEDGER_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_MID_SUBMIT, db_url],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    err = proc.stderr
    assert proc.returncode == 0, err
    assert "SIGTERM received, shutting down" in err and "scheduler: stopped" in err
    assert "Traceback" not in err and "Error submitting job" not in err and "JobLookupError" not in err
