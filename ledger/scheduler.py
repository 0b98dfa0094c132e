"""Scheduler: the ledger's jobs on an APScheduler 3.11 ``BlockingScheduler``.

Jobs (each is also a one-shot command, so cron users need no daemon):

=================  ==============================================  =============================
job                when                                            one-shot command
=================  ==============================================  =============================
``rollup``         every ``rollup_seconds`` (default 300)          ``cerebras-ledger rollup``
``alerts``         right after each rollup                         ``cerebras-ledger alerts check``
``daily-reports``  every day at ``report_hour`` in ``report_tz``   ``cerebras-ledger report``
``billing``        the 1st of each month, ``billing_grace_hours``  ``cerebras-ledger export
                   after midnight UTC, for the month just closed   billing``
=================  ==============================================  =============================

Every job sets ``coalesce=True`` (a backlog of missed runs runs once), ``max_instances=1`` and
an explicit ``misfire_grace_time``. SIGTERM and SIGINT shut the scheduler down cleanly: no new
job starts, running ones finish.

Two scheduler processes may run against one ledger (say, two pods). Each job run first takes a
*lease* row named after the job in the ``leases`` table, in a write transaction; a process that
cannot get it skips that run. The jobs are also safe on their own (rollups and alert inserts are
exactly-once, the billing export is one transaction), so the lease saves duplicate work rather
than guarding correctness.

Configuration: a TOML file (``--config``, table ``[scheduler]``) or the environment
(``LEDGER_SCHEDULE_<NAME>`` in upper case, e.g. ``LEDGER_SCHEDULE_ROLLUP_SECONDS=60``); the
environment wins. Bad values fail at start with a one-line error.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, select, update

from .config import ConfigError, redact
from .schema import LeaseRow
from .store import write_transaction

__all__ = ["Lease", "Schedule", "build_scheduler", "load_schedule", "run_scheduler"]

log = logging.getLogger("ledger.scheduler")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the jobs run.

    Attributes:
        rollup_seconds: seconds between rollups (alert checks follow each one).
        report_hour: local hour of the daily reports (for the day just ended).
        report_tz: IANA zone of the daily reports.
        billing_grace_hours: hours after the month ends before its billing export, for late events.
        misfire_grace_seconds: how late a run may start and still run.
        lease_seconds: how long a job's lease lasts (longer than any run).
        reports_dir: where daily reports go (default ``$LEDGER_REPORTS_DIR`` or ``./reports``).
        billing_dir: where billing exports go (default ``<reports_dir>/billing``).
    """

    rollup_seconds: int = 300
    report_hour: int = 1
    report_tz: str = "UTC"
    billing_grace_hours: int = 6
    misfire_grace_seconds: int = 300
    lease_seconds: int = 600
    reports_dir: str = ""
    billing_dir: str = ""

    def check(self) -> Schedule:
        if not 1 <= self.rollup_seconds <= 86_400:
            raise ConfigError("rollup_seconds must be between 1 and 86400")
        if not 0 <= self.report_hour <= 23:
            raise ConfigError("report_hour must be between 0 and 23")
        if not 0 <= self.billing_grace_hours <= 27 * 24:
            raise ConfigError("billing_grace_hours must be between 0 and 648")
        if self.misfire_grace_seconds < 1 or self.lease_seconds < 1:
            raise ConfigError("misfire_grace_seconds and lease_seconds must be positive")
        try:
            ZoneInfo(self.report_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {self.report_tz!r}") from None
        reports = self.reports_dir or os.environ.get("LEDGER_REPORTS_DIR") or "reports"
        return replace(self, reports_dir=reports, billing_dir=self.billing_dir or str(Path(reports) / "billing"))


def load_schedule(config_file: Path | None = None, env: Mapping[str, str] | None = None) -> Schedule:
    """The schedule from a TOML file's ``[scheduler]`` table and ``LEDGER_SCHEDULE_*`` variables."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {config_file}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
        table = data.get("scheduler", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{config_file}: [scheduler] must be a table")
        values.update(table)
    for f in fields(Schedule):
        raw = env.get(f"LEDGER_SCHEDULE_{f.name.upper()}")
        if raw is not None:
            values[f.name] = raw
    known = {f.name: f for f in fields(Schedule)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown scheduler setting {name!r}")
        if known[name].type in ("int", int):
            try:
                out[name] = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"scheduler setting {name} must be a whole number, got {value!r}") from None
        else:
            out[name] = str(value)
    return Schedule(**out).check()


class Lease:
    """A named lease in the ``leases`` table: held by one process at a time until it expires."""

    def __init__(self, engine: Engine, name: str, seconds: int, holder: str | None = None) -> None:
        self.engine = engine
        self.name = name
        self.seconds = seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self, now: datetime | None = None) -> bool:
        """Take or renew the lease; ``False`` if another live holder has it."""
        from .rollup import _insert

        now = now or datetime.now(UTC)
        until = now + timedelta(seconds=self.seconds)
        t = LeaseRow.__table__
        with write_transaction(self.engine) as conn:
            conn.execute(_insert(conn, t).values(name=self.name, holder="", expires_at=now).on_conflict_do_nothing())
            query = select(t.c.holder, t.c.expires_at).where(t.c.name == self.name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            holder, expires = conn.execute(query).one()
            if holder not in ("", self.holder) and expires > now:
                return False
            conn.execute(update(LeaseRow).where(t.c.name == self.name).values(holder=self.holder, expires_at=until))
            return True

    def release(self) -> None:
        t = LeaseRow.__table__
        with write_transaction(self.engine) as conn:
            conn.execute(update(LeaseRow).where(t.c.name == self.name, t.c.holder == self.holder)
                         .values(holder="", expires_at=datetime.now(UTC)))


def _leased(engine: Engine, name: str, seconds: int, holder: str, job: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        lease = Lease(engine, name, seconds, holder)
        try:
            if not lease.acquire():
                log.info("job %s: another scheduler holds the lease; skipped", name)
                return
        except Exception as exc:  # database down: skip this run, the next one retries
            log.error("job %s: cannot take its lease (%s); skipped", name, type(exc).__name__)
            return
        try:
            job()
        except Exception as exc:
            why = str(exc).splitlines()[0][:300] if str(exc) else ""
            log.error("job %s failed (%s: %s); it runs again at its next time", name, type(exc).__name__,
                      redact(why))
            log.debug("job %s failed", name, exc_info=True)
        finally:
            try:
                lease.release()
            except Exception:
                log.warning("job %s: could not release its lease; it expires by itself", name)
    return run


def rollup_and_alerts(engine: Engine) -> None:
    from . import rollup

    result = rollup.rollup(engine)
    log.info("rollup: %d event(s) from %d batch(es)", result.events, result.batches)
    try:
        from . import alerts
    except ImportError:  # pragma: no cover - alerts ship with the package
        return
    alerts.run_checks(engine)


def build_scheduler(engine: Engine, schedule: Schedule, jobs: Mapping[str, Callable[[], None]] | None = None,
                    holder: str | None = None) -> Any:
    """A ``BlockingScheduler`` with the ledger's jobs (or ``jobs`` given by name, for tests)."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": schedule.misfire_grace_seconds}
    scheduler = BlockingScheduler(timezone=UTC, job_defaults=defaults)
    table = dict(jobs) if jobs is not None else default_jobs(engine, schedule)
    triggers = {
        "rollup": IntervalTrigger(seconds=schedule.rollup_seconds, timezone=UTC),
        "daily-reports": CronTrigger(hour=schedule.report_hour, minute=0, timezone=ZoneInfo(schedule.report_tz)),
        "billing": CronTrigger(day=1 + schedule.billing_grace_hours // 24, hour=schedule.billing_grace_hours % 24,
                               minute=0, timezone=UTC),
    }
    for name, job in table.items():
        scheduler.add_job(_leased(engine, name, schedule.lease_seconds, holder, job), triggers[name], id=name,
                          name=name, next_run_time=datetime.now(UTC) if name == "rollup" else None,
                          **defaults)
    return scheduler


def default_jobs(engine: Engine, schedule: Schedule) -> dict[str, Callable[[], None]]:
    def daily_reports() -> None:
        from . import reports

        reports.daily_reports(engine, datetime.now(UTC), schedule.report_tz, Path(schedule.reports_dir))

    def billing() -> None:
        from . import focus

        focus.export_closed_month(engine, datetime.now(UTC), Path(schedule.billing_dir))

    return {"rollup": lambda: rollup_and_alerts(engine), "daily-reports": daily_reports, "billing": billing}


def run_scheduler(engine: Engine, schedule: Schedule, jobs: Mapping[str, Callable[[], None]] | None = None) -> None:
    """Run until SIGTERM or SIGINT; then let running jobs finish and return."""
    scheduler = build_scheduler(engine, schedule, jobs)
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            log.warning("scheduler: %s received, shutting down", signal.Signals(signum).name)
            scheduler.shutdown(wait=True)  # no new runs; waits for running jobs to finish

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.warning("scheduler: started with jobs %s", ", ".join(j.id for j in scheduler.get_jobs()))
    scheduler.start()
    log.warning("scheduler: stopped")
