"""Billing catches up: every closed month that was never issued is issued by the next run, and a
crash between the issue record's commit and the file's rename (a real SIGKILL of a subprocess at
that point) leaves a month that the next run writes, identically; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import store
from ledger.exports import billing
from ledger.scheduler.jobs import default_jobs
from ledger.scheduler.runner import Schedule
from tests.exports.test_focus import AUG, OCT, SEP, at, event, write
from tests.helpers import ROOT

NOV = "2026-11"


def issued(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [m for (m,) in conn.execute(sa.text("SELECT month FROM billing_exports ORDER BY month"))]


def test_missed_runs_are_made_up_by_the_next_one(engine: sa.Engine, tmp_path: Path) -> None:
    folder = tmp_path / "billing"
    write(engine, [event(at(AUG, 10), "alpha"), event(at(SEP, 3), "beta"), event(at(OCT, 30), "gamma")])
    # the runs of Sep 1, Oct 1 and Nov 1 never happened (database down); the next run is on Nov 2
    done = billing.catch_up(engine, at(NOV, 2, 6), folder)
    assert [d.month for d in done] == [AUG, SEP, OCT] and not any(d.reissued for d in done)
    assert issued(engine) == [AUG, SEP, OCT]
    for month, project in ((AUG, "alpha"), (SEP, "beta"), (OCT, "gamma")):
        _, rows = _read(folder / f"focus-{month}.csv")
        assert {r["SubAccountId"] for r in rows} == {project}  # each month's usage is in its own file
    # nothing is due any more; a month later only November is
    assert billing.catch_up(engine, at(NOV, 3), folder) == []
    write(engine, [event(at(NOV, 5), "delta")])
    assert [d.month for d in billing.catch_up(engine, at("2026-12", 1, 6), folder)] == [NOV]
    assert sorted(p.name for p in folder.iterdir()) == [f"focus-{m}.csv" for m in (AUG, SEP, OCT, NOV)]


def test_a_month_issued_with_its_file_missing_is_written_again(engine: sa.Engine, tmp_path: Path) -> None:
    folder = tmp_path / "billing"
    write(engine, [event(at(SEP, 3))])
    billing.catch_up(engine, at(OCT, 1, 6), folder)
    first = (folder / "focus-2026-09.csv").read_bytes()
    (folder / "focus-2026-09.csv").unlink()
    write(engine, [event(at(SEP, 4), "late")])  # late usage: never rewrites the closed month
    assert billing.months_due(engine, at(OCT, 2), folder) == [SEP]
    again = billing.catch_up(engine, at(OCT, 2), folder)
    assert [(d.month, d.reissued) for d in again] == [(SEP, True)]
    assert (folder / "focus-2026-09.csv").read_bytes() == first


def test_the_hourly_job_waits_out_the_grace_then_issues(engine: sa.Engine, tmp_path: Path) -> None:
    """The billing job runs every hour: a month is issued by the first run at least
    ``billing_grace_hours`` after it ends (late events land in it first), and a run missed then
    (the database down) is made up an hour later, not a month later."""
    folder = tmp_path / "billing"
    write(engine, [event(at(OCT, 30))])
    grace = timedelta(hours=6)
    assert billing.catch_up(engine, at(NOV, 1, 5), folder, grace=grace) == []  # 05:00 on the 1st: too soon
    write(engine, [event(at(OCT, 31), "late")])  # a late event of October, inside the grace
    assert [d.month for d in billing.catch_up(engine, at(NOV, 1, 7), folder, grace=grace)] == [OCT]
    _, rows = _read(folder / f"focus-{OCT}.csv")
    assert {r["SubAccountId"] for r in rows} >= {"late"}


def test_no_events_nothing_due(engine: sa.Engine, tmp_path: Path) -> None:
    assert billing.months_due(engine, at(OCT, 2), tmp_path) == []
    assert billing.catch_up(engine, at(OCT, 2), tmp_path / "b") == []


CHILD = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime, UTC
    from pathlib import Path
    from ledger import outfile
    from ledger.exports import billing
    from ledger import store

    def die(src, dst):  # the process dies for real between the commit and the rename
        os.kill(os.getpid(), signal.SIGKILL)

    outfile.os.replace = die  # (the one place files are renamed into place)
    engine = store.make_engine(sys.argv[1])
    billing.catch_up(engine, datetime.fromisoformat(sys.argv[2]), Path(sys.argv[3]))
""")


def test_a_crash_between_commit_and_rename_is_retried(
    engine: sa.Engine, db_url: str, tmp_path: Path, reliability: Any
) -> None:
    folder = tmp_path / "billing"
    write(engine, [event(at(AUG, 10), "alpha"), event(at(SEP, 3), "beta")])
    now = at(OCT, 1, 6)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, now.isoformat(), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    # August was committed as issued, but its file never got its name: only the temporary file is there
    assert issued(engine) == [AUG]
    leftovers = sorted(p.name for p in folder.iterdir())
    assert (
        len(leftovers) == 1
        and leftovers[0].startswith(".focus-2026-08.csv.")
        and leftovers[0].endswith(".part")
    )
    assert billing.months_due(engine, now, folder) == [AUG, SEP]

    done = billing.catch_up(engine, now, folder)  # the next run
    assert [(d.month, d.reissued) for d in done] == [(AUG, True), (SEP, False)]
    assert sorted(p.name for p in folder.iterdir()) == ["focus-2026-08.csv", "focus-2026-09.csv"]
    _, rows = _read(folder / "focus-2026-08.csv")
    assert {r["SubAccountId"] for r in rows} == {"alpha"} and rows
    # the rewritten file is the one the month was issued with
    billing.export_billing(engine, AUG, tmp_path / "aug-again.csv", now=now)
    assert (tmp_path / "aug-again.csv").read_bytes() == (folder / "focus-2026-08.csv").read_bytes()
    reliability(
        load="2 months of events, scheduler billing run",
        fault="SIGKILL between commit and rename",
        inputs="none",
        expected=2,
        recorded=len([m for m in issued(engine) if (folder / f"focus-{m}.csv").is_file()]),
        lost=0,
    )


def test_the_scheduler_job_catches_up(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    # the real job, at the real time: every ended month since the first event is issued
    now = datetime.now(UTC)
    first = datetime(now.year - 1 if now.month <= 2 else now.year, (now.month - 3) % 12 + 1, 15, tzinfo=UTC)
    write(engine, [event(first)])
    schedule = Schedule(billing_dir=str(tmp_path / "billing")).check()
    default_jobs(engine, schedule)["billing"]()
    months = issued(engine)
    last = billing.last_month(now - timedelta(hours=schedule.billing_grace_hours))
    assert months[0] == first.strftime("%Y-%m") and months[-1] == last and len(months) in (1, 2)
    assert sorted(p.name for p in (tmp_path / "billing").iterdir()) == [f"focus-{m}.csv" for m in months]


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    from tests.exports.test_focus import read_csv

    return read_csv(path)


def test_cli_export_billing_due(
    ledger_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ledger.cli.main import main

    eng = store.make_engine(ledger_env["LEDGER_DATABASE_URL"])
    try:
        store.ensure_schema(eng)
        write(eng, [event(at(SEP, 4)), event(at(OCT, 5), model="mystery-model")])
    finally:
        eng.dispose()
    folder = tmp_path / "due"
    capsys.readouterr()
    assert main(["export", "billing", "--due", str(folder)]) == 0
    err = capsys.readouterr().err
    months = sorted(p.name for p in folder.iterdir())
    assert (
        months[0] == "focus-2026-09.csv"
        and months[-1] == f"focus-{billing.last_month(datetime.now(UTC))}.csv"
    )
    assert err.count("issued ") == len(months) and "issued 2026-09: 2 row(s)" in err
    assert "1 event(s) with usage but no price are not billed" in err
    assert main(["export", "billing", "--due", str(folder)]) == 0
    assert "nothing due" in capsys.readouterr().err
    for args in (
        ["--due", str(folder), "--month", SEP],
        ["--due", str(folder), "--out", str(tmp_path / "x.csv")],
        [],
        ["--due", str(folder / "focus-2026-09.csv")],
    ):
        code = main(["export", "billing", *args])
        lines = capsys.readouterr().err.splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
