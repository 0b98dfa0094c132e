"""The scheduler service: configuration, leases, two instances at once, clean SIGTERM shutdown."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.cli.main import main
from ledger.config import ConfigError
from ledger.scheduler.runner import Lease, Schedule, build_scheduler, load_schedule
from ledger.store import rollup
from ledger.store.schema import LeaseRow
from tests.helpers import random_event, write_events
from tests.store.test_rollup import _raw_by_key, _rolled_by_key


def test_schedule_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text('[scheduler]\nrollup_seconds = 60\nreport_tz = "Asia/Kathmandu"\nreport_hour = 2\n')
    s = load_schedule(cfg, env={"LEDGER_SCHEDULE_ROLLUP_SECONDS": "30"})
    assert (s.rollup_seconds, s.report_tz, s.report_hour) == (30, "Asia/Kathmandu", 2)  # the environment wins
    assert s.billing_dir.endswith("billing")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[scheduler]\nrollup_seconds = 0\n", {}, "rollup_seconds"),
        ("[scheduler]\nreport_tz = 'Mars/Base'\n", {}, "unknown time zone"),
        ("[scheduler]\nno_such = 1\n", {}, "unknown scheduler setting"),
        ("not toml [", {}, "not valid TOML"),
        ("", {"LEDGER_SCHEDULE_REPORT_HOUR": "noon"}, "whole number"),
    ],
)
def test_bad_schedule_is_one_clear_error(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_schedule(cfg, env=env)


def test_bad_schedule_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_SCHEDULE_ROLLUP_SECONDS", "-5")
    code = main(["--database-url", f"sqlite:///{tmp_path / 'l.db'}", "scheduler", "--list"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error:") and err.count("\n") == 1 and "rollup_seconds" in err


def test_jobs_have_explicit_coalesce_misfire_and_max_instances(engine: sa.Engine) -> None:
    sched = build_scheduler(engine, Schedule(rollup_seconds=60, misfire_grace_seconds=42).check())
    jobs = {j.id: j for j in sched.get_jobs()}
    assert set(jobs) == {"rollup", "deliver", "daily-reports", "billing"}
    for job in jobs.values():
        assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time == 42
    when = datetime(2026, 11, 15, 10, 20, tzinfo=UTC)  # billing runs hourly; the grace is applied in the job
    assert jobs["billing"].trigger.get_next_fire_time(None, when) == datetime(2026, 11, 15, 11, tzinfo=UTC)


def test_a_lease_has_one_holder_until_it_expires(engine: sa.Engine) -> None:
    a, b = Lease(engine, "job", 60, "a"), Lease(engine, "job", 60, "b")
    assert a.acquire() and not b.acquire()
    assert a.acquire()  # the holder renews
    assert not b.acquire()
    with store.write_transaction(engine) as conn:  # a minute passes on the database's clock
        conn.execute(sa.update(LeaseRow).values(expires_at=store.db_now(conn)))
    assert b.acquire()  # expired: b takes it
    assert not a.acquire()
    b.release()
    assert a.acquire()


def _scheduler_proc(db_url: str, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": db_url,
        "LEDGER_HOME": str(tmp_path / name),
        "LEDGER_SPOOL_DIR": str(tmp_path / f"spool-{name}"),
        "LEDGER_SCHEDULE_ROLLUP_SECONDS": "1",
        "LEDGER_SCHEDULE_LEASE_SECONDS": "30",
        "LEDGER_REPORTS_DIR": str(tmp_path / "reports"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ledger", "-v", "scheduler"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_schedulers_roll_up_exactly_once_and_stop_on_sigterm(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(11)
    procs = [_scheduler_proc(db_url, tmp_path, n) for n in ("one", "two")]
    try:
        for _ in range(8):  # events keep arriving while both schedulers run
            write_events(
                engine,
                [
                    random_event(
                        datetime(2026, 11, 3, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 9000)), rng
                    )
                    for _ in range(40)
                ],
            )
            time.sleep(0.3)
        deadline = time.monotonic() + 60
        while rollup.pending(engine)[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rollup.pending(engine) == (0, 0)
        assert _rolled_by_key(engine) == _raw_by_key(engine)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "SIGTERM received, shutting down" in err and "scheduler: stopped" in err
        assert "Traceback" not in err
