"""``cerebras-ledger demo`` leaves a ledger worth looking at: weeks of history, budgets near and
over their thresholds, fired alerts; a second demo adds calls, never a second history; and
``demo --serve`` opens it in the dashboard. Real subprocesses, a real SQLite file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from ledger import store
from ledger.budgets.budgets import list_budgets
from ledger.budgets.check import list_alerts
from ledger.budgets.spend import budget_status
from tests.cli.test_cli import CONSOLE_SCRIPT, run_process, subprocess_env


def test_demo_leaves_history_budgets_and_alerts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = subprocess_env(home)
    first = run_process([str(CONSOLE_SCRIPT), "demo", "--calls", "20"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    engine = store.make_engine(f"sqlite:///{home / 'ledger.db'}")
    try:
        now = datetime.now(UTC)
        with engine.connect() as conn:
            oldest = conn.execute(sa.text("SELECT MIN(occurred_at) FROM events")).scalar_one()
            total = conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one()
            statuses = {b.project: budget_status(conn, b, now) for b in list_budgets(conn)}
            alerts = list_alerts(conn)
        assert datetime.fromisoformat(oldest).replace(tzinfo=UTC) < now - timedelta(days=21)
        search, bot = statuses["demo-search"], statuses["demo-support-bot"]
        assert search is not None and bot is not None and statuses["demo-analytics"] is None  # free-only
        assert 80 <= search.spent_nanos * 100 // search.budget_nanos < 100  # near its threshold
        assert bot.spent_nanos > bot.budget_nanos  # over
        assert {a.alert.rule for a in alerts} >= {"month_actual", "free_only"}
        second = run_process([str(CONSOLE_SCRIPT), "demo", "--calls", "5"], env, tmp_path)
        assert second.returncode == 0, second.stderr
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one() == total + 5
    finally:
        engine.dispose()


def test_demo_serve_opens_the_dashboard(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path / "home")
    with subprocess.Popen(
        [sys.executable, "-m", "ledger", "demo", "--calls", "5", "--serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        token = ""
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if "shown once:" in line:
                token = line.rsplit(": ", 1)[1].strip().rstrip(")")
            if "listening on" in line:
                url = line.split("listening on ", 1)[1].split()[0]
                break
            assert time.monotonic() < deadline
        else:
            raise AssertionError("demo --serve never said where it listens")
        try:
            assert url.startswith("http://127.0.0.1:")
            answer = httpx.get(f"{url}/api/v1/overview", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert {p["project"] for p in answer.json()["projects"]} >= {"demo-search", "demo-support-bot"}
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
