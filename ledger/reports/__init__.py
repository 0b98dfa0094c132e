"""reports stage: spend reports made from the rollups.

Owns building a report from the rollup tables (:mod:`ledger.reports.build`: the ``Report`` record,
local days, previous-period change, top tags), its CSV and JSON renderings
(:mod:`ledger.reports.formats`), the HTML dashboard and its Jinja2 templates
(:mod:`ledger.reports.html`, ``templates/``), where report files go and the scheduler's daily job
(:mod:`ledger.reports.files`), and per-project summaries from the events
(:mod:`ledger.reports.summary`).

It may import the foundations and ``ledger.store``; it must never import ``ledger.scheduler`` or
``ledger.cli`` (they call it), nor Alembic. This file stays light: importing ``ledger.reports``
imports neither pandas nor Jinja2 (import the module you need).
"""
