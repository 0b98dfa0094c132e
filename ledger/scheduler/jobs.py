"""The scheduler's jobs: what each one does (when they run, and how: :mod:`ledger.scheduler.runner`).

* ``rollup`` (:func:`rollup_and_checks`): roll up new events, then fire due alerts and keep the
  hard-budget stops (:mod:`ledger.store.rollup`, :mod:`ledger.budgets.check`).
* ``deliver``: the webhook outbox (:func:`ledger.budgets.outbox.deliver`); a stop flag cuts an
  attempt in flight short.
* ``daily-reports``: the reports of the day just ended (:func:`ledger.reports.files.daily_reports`).
* ``billing``: every billing month due (:func:`ledger.exports.billing.catch_up`).

:func:`default_jobs` gives them by name and checks the webhook settings (a bad URL fails at
start); the other stages' code loads when a job first runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

if TYPE_CHECKING:
    from ledger.scheduler.runner import Schedule

__all__ = ["default_jobs"]

log = logging.getLogger("ledger.scheduler")


def rollup_and_checks(engine: Engine) -> None:
    """The ``rollup`` job: roll up, then fire due alerts and keep the hard-budget stops (the
    webhook outbox is the ``deliver`` job's)."""
    from ledger.budgets import check
    from ledger.store import rollup

    result = rollup.rollup(engine)
    log.info("rollup: %d event(s) from %d batch(es)", result.events, result.batches)
    check.check(engine, deliver_now=False)


def default_jobs(
    engine: Engine, schedule: Schedule, stop: threading.Event | None = None
) -> dict[str, Callable[[], None]]:
    from ledger.budgets import outbox
    from ledger.budgets.webhook import webhook_from_env

    webhook = webhook_from_env()  # ConfigError here: a bad URL stops the start, in one line

    def deliver() -> None:
        outbox.deliver(engine, webhook, stop=stop)

    def daily_reports() -> None:
        from ledger.reports import files as reports

        reports.daily_reports(engine, datetime.now(UTC), schedule.report_tz, Path(schedule.reports_dir))

    def billing() -> None:
        from ledger.exports.billing import catch_up

        grace = timedelta(hours=schedule.billing_grace_hours)
        for issued in catch_up(engine, datetime.now(UTC), Path(schedule.billing_dir), grace=grace):
            log.info(
                "billing: %s %s, %d row(s)",
                "rewrote" if issued.reissued else "issued",
                issued.month,
                len(issued.rows),
            )

    return {
        "rollup": lambda: rollup_and_checks(engine),
        "deliver": deliver,
        "daily-reports": daily_reports,
        "billing": billing,
    }
