"""Budgets stage: budgets, alert rules, fired alerts, the webhook outbox and hard stops.

It reads the rollups (``usage_rollup``, kept by :mod:`ledger.store.rollup`) and writes the
``budgets``, ``alerts`` and ``budget_stops`` tables (and, through :mod:`ledger.call.stops`, the
stop file the call path reads). Modules, in flow order:

* :mod:`ledger.budgets.budgets`: the :class:`~ledger.budgets.budgets.Budget` record, parsing
  amounts, thresholds and time zones, and setting, listing and removing budgets.
* :mod:`ledger.budgets.spend`: paid spend of a project over a span, from the rollups.
* :mod:`ledger.budgets.rules`: the alert rules, one function per rule, run in the order of
  :data:`~ledger.budgets.rules.RULE_CHECKS`.
* :mod:`ledger.budgets.stops`: hard budgets: the ``budget_stops`` table, the stops in force, the
  stop file.
* :mod:`ledger.budgets.webhook`: the webhook's settings (URL, secret, deadline, lease), checked at
  configuration, and reading them from the environment.
* :mod:`ledger.budgets.outbox`: webhook delivery of fired alerts (signing, leases, deadlines,
  back-off).
* :mod:`ledger.budgets.check`: the ``check`` entry point: roll up, run the rules, fire each alert
  once, keep the stops, deliver; and listing alerts.

Callers import from those modules (this package re-exports nothing, so importing
:mod:`ledger.budgets.stops` from the writer thread loads neither the webhook client nor asyncio).
It may import the foundations, :mod:`ledger.call.stops` and :mod:`ledger.store`; it must not
import pandas or Alembic, and never :mod:`ledger.reports`, :mod:`ledger.exports`,
:mod:`ledger.scheduler` or :mod:`ledger.cli` (they import it, never the other way round).
"""
