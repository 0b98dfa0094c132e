"""Exports stage: files made from the store for other tools, and event files read back into it.

* :mod:`ledger.exports.focuscolumns`: the FOCUS 1.2 columns, their constants and SKU metadata.
* :mod:`ledger.exports.focus`: how a billing month's events become FOCUS rows.
* :mod:`ledger.exports.focusfiles`: those rows as CSV or Parquet, written whole under a temporary name.
* :mod:`ledger.exports.billing`: issuing a month (lock, ``billed_batches``, ``billing_exports``),
  :func:`~ledger.exports.billing.export_billing` and the scheduler's
  :func:`~ledger.exports.billing.catch_up`.
* :mod:`ledger.exports.eventfiles`: the event file columns and ``events export`` (CSV / JSON Lines).
* :mod:`ledger.exports.eventimport`: ``events import``: parsing and checking a file, then inserting it.

It reads and writes through :mod:`ledger.store` and uses the foundations (money, pricing, calendar,
config, outfile, events). It must never import :mod:`ledger.scheduler`, :mod:`ledger.api` or
:mod:`ledger.cli` (they call it), nor :mod:`ledger.reports` or :mod:`ledger.budgets`; pyarrow loads
only when a Parquet file is written.
"""
