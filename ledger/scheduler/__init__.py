"""Scheduler stage: runs the other stages' jobs on a timetable, one process or several.

* :mod:`ledger.scheduler.jobs`: what each job does (rollup and alert checks, webhook delivery,
  daily reports, billing months due) and :func:`~ledger.scheduler.jobs.default_jobs`.
* :mod:`ledger.scheduler.runner`: the :class:`~ledger.scheduler.runner.Schedule` and its loading, the
  APScheduler wiring, a :class:`~ledger.scheduler.runner.Lease` and a worker per job, and signals.

It calls into :mod:`ledger.store`, :mod:`ledger.budgets`, :mod:`ledger.reports` and
:mod:`ledger.exports` (inside the jobs, so each loads when its job first runs). It must never import
:mod:`ledger.cli` or :mod:`ledger.api` (the CLI starts it); APScheduler loads only when a scheduler
is built.
"""
