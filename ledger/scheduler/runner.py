"""Scheduler: the ledger's jobs (:mod:`ledger.scheduler.jobs`) on an APScheduler 3.11
``BackgroundScheduler``: the schedule's settings, the timetable, a lease and a worker per job, and
stopping on a signal.

Jobs (each is also a one-shot command, so cron users need no daemon):

=================  ==============================================  =============================
job                when                                            one-shot command
=================  ==============================================  =============================
``rollup``         every ``rollup_seconds`` (default 300), then    ``cerebras-ledger rollup``,
                   the alert rules and hard-budget stops           ``alerts check --no-deliver``
``deliver``        right after each rollup, and every              ``cerebras-ledger alerts check``
                   ``rollup_seconds``: the webhook outbox
``daily-reports``  every day at ``report_hour`` in ``report_tz``   ``cerebras-ledger report``
``billing``        every hour, on the hour: every month that ended ``cerebras-ledger export
                   ``billing_grace_hours`` (6) ago or more and     billing --due DIR``
                   was not yet issued, or whose file is missing
                   (so a run missed on the 1st is made up within
                   the hour the database is back; a run with
                   nothing due reads two index lookups)
=================  ==============================================  =============================

Every job sets ``coalesce=True`` (a backlog of missed runs runs once), ``max_instances=1`` and
an explicit ``misfire_grace_time``.

**Jobs stay independent.** The executor is a thread pool with a worker for every job, so a
slow job holds only its own worker, and ``max_instances=1`` skips only its own next runs. The
webhook outbox is its own job: a receiver that hangs delays deliveries (each attempt is bounded
by its deadline, see :mod:`ledger.budgets.outbox`), never the rollups, the alert rules or the hard-budget
stops behind them.

**Stopping.** SIGTERM and SIGINT stop the scheduler at once (``shutdown(wait=False)``: no new
run starts) and set a stop flag that cuts a webhook attempt in flight short (that alert is
retried later) and ends the delivery run; other running jobs get ``shutdown_grace_seconds``
(default 5) to finish. A job still running after that is abandoned: the process logs it and
exits with status 1 (rollups and alert inserts are transactions, so the next run redoes them).
The signal handler only sets the flag; the main thread, which does nothing but wait for it, then
shuts the scheduler down. The scheduling loop runs in its own thread, so the shutdown waits for
the loop's lock instead of running inside the loop: with a ``BlockingScheduler`` a signal that
landed while the loop was handing a job to the pool shut the pool down under it ("cannot
schedule new futures after shutdown", then ``JobLookupError``).

Two scheduler processes may run against one ledger (say, two pods). Each job run first takes a
*lease* row named after the job in the ``leases`` table, in a write transaction; a process that
cannot get it skips that run. Lease times are the database's clock (:func:`ledger.store.db_now`),
never a host's, so two hosts with skewed clocks agree on who holds a lease. The jobs are also
safe on their own (rollups and alert inserts are exactly-once, each alert's delivery has a lease
of its own, the billing export is one transaction), so the job lease saves duplicate work
rather than guarding correctness.

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine, select, update

from ledger.calendar import parse_zone
from ledger.config import ConfigError, first_line, redact
from ledger.scheduler.jobs import default_jobs
from ledger.store import db_now, write_transaction
from ledger.store.schema import LeaseRow

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
        shutdown_grace_seconds: how long running jobs get to finish after SIGTERM.
        reports_dir: where daily reports go (default ``$LEDGER_REPORTS_DIR`` or ``./reports``).
        billing_dir: where billing exports go (default ``<reports_dir>/billing``).
    """

    rollup_seconds: int = 300
    report_hour: int = 1
    report_tz: str = "UTC"
    billing_grace_hours: int = 6
    misfire_grace_seconds: int = 300
    lease_seconds: int = 600
    shutdown_grace_seconds: int = 5
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
        if not 0 <= self.shutdown_grace_seconds <= 600:
            raise ConfigError("shutdown_grace_seconds must be between 0 and 600")
        parse_zone(self.report_tz)
        reports = self.reports_dir or os.environ.get("LEDGER_REPORTS_DIR") or "reports"
        return replace(
            self, reports_dir=reports, billing_dir=self.billing_dir or str(Path(reports) / "billing")
        )


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

    def acquire(self) -> bool:
        """Take or renew the lease; ``False`` if another live holder has it. Taken, renewed and
        compared on the database's clock."""
        from ledger.store import insert_or_skip

        t = LeaseRow.__table__
        with write_transaction(self.engine) as conn:
            now = db_now(conn)
            until = now + timedelta(seconds=self.seconds)
            conn.execute(insert_or_skip(conn, t).values(name=self.name, holder="", expires_at=now))
            query = select(t.c.holder, t.c.expires_at).where(t.c.name == self.name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            holder, expires = conn.execute(query).one()
            if holder not in ("", self.holder) and expires > now:
                return False
            conn.execute(
                update(LeaseRow).where(t.c.name == self.name).values(holder=self.holder, expires_at=until)
            )
            return True

    def release(self) -> None:
        t = LeaseRow.__table__
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(LeaseRow)
                .where(t.c.name == self.name, t.c.holder == self.holder)
                .values(holder="", expires_at=db_now(conn))
            )


class _Running:
    """The names of the jobs running right now, so a stop can wait for them (a bounded time)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.changed = threading.Condition()

    @contextmanager
    def job(self, name: str) -> Iterator[None]:
        with self.changed:
            self.names.append(name)
        try:
            yield
        finally:
            with self.changed:
                self.names.remove(name)
                self.changed.notify_all()

    def wait_idle(self, seconds: float) -> list[str]:
        """Wait up to ``seconds`` for every running job to end; the names still running."""
        with self.changed:
            self.changed.wait_for(lambda: not self.names, seconds)
            return sorted(self.names)


def _leased(
    engine: Engine, name: str, seconds: int, holder: str, job: Callable[[], None], running: _Running
) -> Callable[[], None]:
    def run() -> None:
        with running.job(name):
            _run_leased(engine, name, seconds, holder, job)

    return run


def _run_leased(engine: Engine, name: str, seconds: int, holder: str, job: Callable[[], None]) -> None:
    lease = Lease(engine, name, seconds, holder)
    try:
        if not lease.acquire():
            log.info("job %s: another scheduler holds the lease; skipped", name)
            return
    except Exception as exc:  # noqa: BLE001 - database down: skip this run, the next one retries
        log.error("job %s: cannot take its lease (%s); skipped", name, type(exc).__name__)
        return
    try:
        job()
    except Exception as exc:
        why = first_line(exc, 300)
        log.error(
            "job %s failed (%s: %s); it runs again at its next time", name, type(exc).__name__, redact(why)
        )
        log.debug("job %s failed", name, exc_info=True)
    finally:
        try:
            lease.release()
        except Exception:  # noqa: BLE001 - a lease expires by itself
            log.warning("job %s: could not release its lease; it expires by itself", name)


def build_scheduler(
    engine: Engine,
    schedule: Schedule,
    jobs: Mapping[str, Callable[[], None]] | None = None,
    holder: str | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """A ``BackgroundScheduler`` (not started) with the ledger's jobs (or ``jobs`` given by name, for tests).
    ``stop``, once set, cuts a webhook delivery in flight short (:func:`run_scheduler` sets it
    on SIGTERM). The webhook settings are read and checked here: a bad URL fails at start."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    stop = stop or threading.Event()
    table = dict(jobs) if jobs is not None else default_jobs(engine, schedule, stop)
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": schedule.misfire_grace_seconds}
    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults=defaults,
        executors={"default": ThreadPoolExecutor(max_workers=len(table) + 1)},
    )
    running = _Running()
    scheduler.ledger_running = running
    triggers = {
        "rollup": IntervalTrigger(seconds=schedule.rollup_seconds, timezone=UTC),
        "deliver": IntervalTrigger(seconds=schedule.rollup_seconds, timezone=UTC),
        "daily-reports": CronTrigger(
            hour=schedule.report_hour, minute=0, timezone=parse_zone(schedule.report_tz)
        ),
        "billing": CronTrigger(minute=0, timezone=UTC),  # hourly: catches up within the hour
    }
    if "rollup" in table and "deliver" in table:
        table["rollup"] = _then_wake(table["rollup"], scheduler, "deliver")
    for name, job in table.items():
        first = datetime.now(UTC) if name in ("rollup", "deliver") else None
        scheduler.add_job(
            _leased(engine, name, schedule.lease_seconds, holder, job, running),
            triggers[name],
            id=name,
            name=name,
            next_run_time=first,
            **defaults,
        )
    return scheduler


def _then_wake(job: Callable[[], None], scheduler: Any, other: str) -> Callable[[], None]:
    """``job``, then ask for a run of ``other`` now (new alerts go out right after the rollup
    that fired them; a delivery still running just skips that run)."""

    def run() -> None:
        try:
            job()
        finally:
            try:
                scheduler.modify_job(other, next_run_time=datetime.now(UTC))
            except Exception:  # noqa: BLE001 - shutting down, or the job is gone: its own trigger runs it
                log.debug("could not wake job %s", other, exc_info=True)

    return run


def run_scheduler(
    engine: Engine, schedule: Schedule, jobs: Mapping[str, Callable[[], None]] | None = None
) -> None:
    """Run until SIGTERM or SIGINT; then stop at once (see the module docstring) and return."""
    stopping = threading.Event()
    scheduler = build_scheduler(engine, schedule, jobs, stop=stopping)

    def stop(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()  # only a flag: the main thread below does the shutting down
            log.warning("scheduler: %s received, shutting down", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.warning("scheduler: started with jobs %s", ", ".join(j.id for j in scheduler.get_jobs()))
    if not stopping.is_set():
        scheduler.start()
        while not stopping.wait(0.5):  # a timed wait, so the signal handler runs promptly
            pass
        scheduler.shutdown(wait=False)  # no new runs; running ones are waited for below
    left = scheduler.ledger_running.wait_idle(schedule.shutdown_grace_seconds)
    if left:
        log.error(
            "scheduler: job(s) %s still running after %d s; exiting without them (the next run "
            "redoes their work)",
            ", ".join(left),
            schedule.shutdown_grace_seconds,
        )
        logging.shutdown()
        os._exit(1)  # the pool's worker threads would otherwise hold the process at exit
    log.warning("scheduler: stopped")
