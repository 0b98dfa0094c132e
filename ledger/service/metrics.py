"""Metrics: ``GET /metrics``, the ledger's figures for Prometheus to scrape.

This module owns the ``/metrics`` endpoint and the names below. It takes a token like the JSON
API (``Authorization: Bearer <token>``; Prometheus's ``authorization`` scrape setting sends
one) and answers the Prometheus text format 0.0.4, written by ``prometheus_client``: each scrape
reads the database once, in one snapshot (:func:`ledger.store.read_snapshot`), and a collector
yields the families into a fresh registry for :func:`prometheus_client.generate_latest`.

**Spend and usage**, summed over all time from ``usage_rollup``, labelled ``project``,
``model``, ``route`` and ``free`` (``"true"``/``"false"``):

* ``ledger_paid_spend_usd_total`` (counter): ``cost_nanos`` of paid rows (``free = false``),
  the same paid spend as the budgets and ``summary``'s ``paid_usd``; its ``free`` label is always
  ``"false"``, kept so it joins the two counters below on the same labels;
* ``ledger_tokens_total`` (counter), with ``type`` = ``input``, ``cached``, ``output`` or
  ``reasoning`` (prompt, cached, completion and reasoning tokens);
* ``ledger_calls_total`` (counter), with ``status`` = ``ok``, ``error`` or ``incomplete``:
  attempts, that is ``kind = 'usage'`` rows only (a correction is no call).

**Money is a float only here.** The ledger counts integer nano-dollars; the value is
``float(Decimal(nanos) / 10**9)``, the nearest float to the exact figure, because Prometheus
values are floats. The exact figure is in the JSON API. Rows without a model (``''`` in the
rollups) are labelled ``model="unknown"``.

**Counters and corrections.** Sums over all time of rows that are only ever added never go down
between scrapes. Corrections (:mod:`ledger.store.reprice`) are part of the sums, so these
figures agree with every other view of the ledger: tokens net to the same total (a reversal and
its restatement arrive together), but a re-pricing that *lowers* a cost lowers the paid spend,
and one that moves a call between free and paid moves its tokens between series. Prometheus
reads a drop as a counter reset, so ``increase()`` over a window holding one over-counts by the
value; re-pricing is a rare, deliberate admin act, and a separate never-falling counter would
disagree with the budgets and reports, which is worse.

**Bounded labels.** At most :attr:`~ledger.service.app.Settings.metrics_max_projects` projects
and :attr:`~ledger.service.app.Settings.metrics_max_models` models keep their own value: the
top ones by paid spend, then calls, then name; the rest are summed under ``other`` (a project
or model really named ``other`` shares that series). The SQL sums per (project, model, route,
free, status); Python only ranks and folds, within the caller's scope.

**Budgets** (gauges, labels ``project`` and ``period``, from
:func:`ledger.budgets.spend.budget_status`, never folded): ``ledger_budget_usd``,
``ledger_budget_remaining_usd`` (negative once overspent) and ``ledger_budget_forecast_usd``.
A project without a budget amount has no series; every value is finite.

**Ledger health** (gauges, :mod:`ledger.service.health`): ``ledger_spool_backlog_bytes``,
``ledger_writer_lag_seconds``, ``ledger_rollup_lag_seconds``, ``ledger_rollup_pending_batches``
and ``ledger_undelivered_alerts``.

**Scope.** A viewer token with projects sees only series of those projects: the SQL is limited
to ``project IN (...)``, folding into ``other`` happens within them, and so do the budgets. The
health gauges carry no project names and are shown to every caller, except that
``ledger_undelivered_alerts`` counts only the alerts of the viewer's projects (an alert names its
project, and another project's alert count would leak its activity).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, case, func, select
from starlette.responses import Response

from ledger.budgets.budgets import list_budgets
from ledger.budgets.spend import BudgetStatus, budget_status
from ledger.service.app import Settings, api_principal
from ledger.service.auth import Principal
from ledger.service.health import Health, health_on
from ledger.store import read_snapshot
from ledger.store.schema import AlertRow, UsageRollupRow

__all__ = ["OTHER", "Snapshot", "Sums", "fold", "read_metrics", "render", "router", "usd"]

OTHER = "other"
NO_MODEL = "unknown"
TOKEN_TYPES = ("input", "cached", "output", "reasoning")
NANOS = Decimal(10**9)

router = APIRouter()

Key = tuple[str, str, str, bool, str]  # project, model, route, free, status


@dataclass(slots=True)
class Sums:
    """Sums of one label set: paid spend (nano-dollars), calls and the four token counts."""

    paid_nanos: int = 0
    calls: int = 0
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0)

    def add(self, other: Sums) -> None:
        self.paid_nanos += other.paid_nanos
        self.calls += other.calls
        self.tokens = (
            self.tokens[0] + other.tokens[0],
            self.tokens[1] + other.tokens[1],
            self.tokens[2] + other.tokens[2],
            self.tokens[3] + other.tokens[3],
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows, read in one transaction."""

    usage: dict[Key, Sums]
    budgets: list[BudgetStatus]
    health: Health
    undelivered_alerts: int


def usd(nanos: int) -> float:
    """Integer nano-dollars as USD, exact until the float conversion (the last step)."""
    return float(Decimal(nanos) / NANOS)


def _scoped(column: Any, principal: Principal) -> Any:
    return column.in_(sorted(principal.projects)) if principal.projects is not None else None


def _usage(conn: Connection, principal: Principal) -> dict[Key, Sums]:
    r = UsageRollupRow.__table__.c

    def total(expr: Any) -> Any:
        return func.coalesce(func.sum(expr), 0)

    query = select(
        r.project,
        r.model,
        r.route,
        r.free,
        r.status,
        total(case((r.free.is_(False), r.cost_nanos), else_=0)),
        total(case((r.kind == "usage", r.events), else_=0)),
        total(r.prompt_tokens),
        total(r.cached_tokens),
        total(r.completion_tokens),
        total(r.reasoning_tokens),
    ).group_by(r.project, r.model, r.route, r.free, r.status)
    scope = _scoped(r.project, principal)
    if scope is not None:
        query = query.where(scope)
    out: dict[Key, Sums] = {}
    for row in conn.execute(query):
        key: Key = (row[0], row[1] or NO_MODEL, row[2], bool(row[3]), row[4])
        usage = Sums(int(row[5]), int(row[6]), (int(row[7]), int(row[8]), int(row[9]), int(row[10])))
        if key in out:  # '' and a model really named "unknown"
            out[key].add(usage)
        else:
            out[key] = usage
    return out


def read_metrics(
    engine: Engine, principal: Principal, settings: Settings, now: datetime | None = None
) -> Snapshot:
    """Read one scrape's figures for ``principal`` in one snapshot of the ledger."""
    now = now or datetime.now(UTC)
    with read_snapshot(engine) as conn:
        usage = _usage(conn, principal)
        budgets = [
            status
            for budget in list_budgets(conn)
            if principal.sees(budget.project) and (status := budget_status(conn, budget, now)) is not None
        ]
        health = health_on(conn, settings.spool_dir, now)
        undelivered = health.undelivered_alerts
        if principal.projects is not None:
            a = AlertRow.__table__.c
            undelivered = conn.execute(
                select(func.count()).where(a.delivered_at.is_(None), _scoped(a.project, principal))
            ).scalar_one()
    return Snapshot(usage, budgets, health, int(undelivered))


def _top(totals: dict[str, tuple[int, int]], keep: int) -> set[str]:
    """The ``keep`` names with the most paid spend, then calls; ties go to the first name."""
    ranked = sorted(totals, key=lambda name: (-totals[name][0], -totals[name][1], name))
    return set(ranked[: max(keep, 0)])


def fold(usage: dict[Key, Sums], max_projects: int, max_models: int) -> dict[Key, Sums]:
    """``usage`` with all but the top projects and models summed under :data:`OTHER`."""
    projects: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    models: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for (project, model, *_), u in usage.items():
        p, m = projects[project], models[model]
        projects[project] = (p[0] + u.paid_nanos, p[1] + u.calls)
        models[model] = (m[0] + u.paid_nanos, m[1] + u.calls)
    kept_projects = _top(projects, max_projects)
    kept_models = _top(models, max_models)
    out: dict[Key, Sums] = {}
    for (project, model, route, free, status), u in usage.items():
        key: Key = (
            project if project in kept_projects else OTHER,
            model if model in kept_models else OTHER,
            route,
            free,
            status,
        )
        out.setdefault(key, Sums()).add(u)
    return out


class _Collector(Collector):
    """Yields one scrape's families (already read; collecting touches no database)."""

    def __init__(self, snapshot: Snapshot, settings: Settings) -> None:
        self.snapshot = snapshot
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._usage()
        yield from self._budgets()
        yield from self._health()

    def _usage(self) -> Iterator[Metric]:
        usage = fold(
            self.snapshot.usage, self.settings.metrics_max_projects, self.settings.metrics_max_models
        )
        labels = ["project", "model", "route", "free"]
        spend = CounterMetricFamily(
            "ledger_paid_spend_usd",
            "Paid spend in USD (free=false rows; corrections included; exact figure in the JSON API).",
            labels=labels,
        )
        tokens = CounterMetricFamily("ledger_tokens", "Tokens by type.", labels=[*labels, "type"])
        calls = CounterMetricFamily(
            "ledger_calls", "Attempts (usage events) by status.", labels=[*labels, "status"]
        )
        per_set: dict[tuple[str, str, str, bool], Sums] = {}
        for (project, model, route, free, status), u in sorted(usage.items()):
            per_set.setdefault((project, model, route, free), Sums()).add(u)
            calls.add_metric([project, model, route, _flag(free), status], u.calls)
        for (project, model, route, free), u in sorted(per_set.items()):
            values = [project, model, route, _flag(free)]
            if not free:
                spend.add_metric(values, usd(u.paid_nanos))
            for kind, count in zip(TOKEN_TYPES, u.tokens, strict=True):
                tokens.add_metric([*values, kind], count)
        yield from (spend, tokens, calls)

    def _budgets(self) -> Iterator[Metric]:
        families = (
            ("ledger_budget_usd", "The budget of the current period, USD.", "budget_nanos"),
            (
                "ledger_budget_remaining_usd",
                "Budget left this period, USD (negative: overspent).",
                "remaining_nanos",
            ),
            (
                "ledger_budget_forecast_usd",
                "Paid spend forecast for the period's end, USD.",
                "forecast_nanos",
            ),
        )
        for name, doc, field in families:
            gauge = GaugeMetricFamily(name, doc, labels=["project", "period"])
            for status in self.snapshot.budgets:
                gauge.add_metric([status.project, status.period], usd(getattr(status, field)))
            yield gauge

    def _health(self) -> Iterator[Metric]:
        h = self.snapshot.health
        figures: Iterable[tuple[str, str, float]] = (
            ("ledger_spool_backlog_bytes", "Spool bytes not yet in the database.", h.spool_backlog_bytes),
            (
                "ledger_writer_lag_seconds",
                "How long the spool writer has not moved on.",
                h.writer_lag_seconds,
            ),
            ("ledger_rollup_lag_seconds", "Age of the oldest batch not rolled up.", h.rollup_lag_seconds),
            ("ledger_rollup_pending_batches", "Ingest batches not rolled up yet.", h.rollup_pending_batches),
            ("ledger_undelivered_alerts", "Alerts not delivered yet.", self.snapshot.undelivered_alerts),
        )
        for name, doc, value in figures:
            yield GaugeMetricFamily(name, doc, value=value)


def _flag(free: bool) -> str:
    return "true" if free else "false"


def render(snapshot: Snapshot, settings: Settings) -> bytes:
    """The text exposition (format 0.0.4) of ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot, settings))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, principal: Annotated[Principal, Depends(api_principal)]) -> Response:
    """The scrape: the caller's figures, in the Prometheus text format."""
    settings: Settings = request.app.state.settings
    snapshot = read_metrics(request.app.state.engine, principal, settings)
    return Response(render(snapshot, settings), media_type=CONTENT_TYPE_PLAIN_0_0_4)
