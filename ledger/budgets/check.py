"""Running the rules and recording what they find: each alert fired exactly once, and the
``check`` entry point (roll up, fire, keep the hard stops, deliver).

**Once.** Each alert is inserted with ``ON CONFLICT DO NOTHING`` on the unique key (project,
rule, period, threshold), with evidence JSON (figures as exact decimal strings, window start
and end in ISO UTC, the threshold) and a message. Re-runs, restarts and concurrent processes
therefore never make a duplicate: the database decides which insert wins.

Every new alert is logged (logger ``ledger.alerts``, WARNING) by the process that
created it; the ``alerts`` table is also the webhook's outbox (:mod:`ledger.budgets.outbox`).
:func:`list_alerts` reads it back with each alert's delivery state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from ledger.budgets.budgets import list_budgets, utc_now
from ledger.budgets.outbox import DeliveryResult, deliver
from ledger.budgets.rules import RULE_CHECKS, Candidate, RuleContext, SpikeRule
from ledger.budgets.stops import update_stops
from ledger.budgets.webhook import Webhook, webhook_from_env
from ledger.events import new_event_id
from ledger.store import dialect_insert, read_snapshot, write_transaction
from ledger.store.rollup import rollup
from ledger.store.schema import AlertRow

__all__ = ["Alert", "AlertRecord", "check", "evaluate", "fire", "list_alerts", "run_checks"]

log = logging.getLogger("ledger.alerts")


@dataclass(frozen=True, slots=True)
class Alert:
    """One fired alert (a row of ``alerts``, without its delivery state)."""

    alert_id: str
    project: str
    rule: str
    period: str
    threshold: int
    created_at: datetime
    message: str
    evidence: dict[str, Any]


def evaluate(
    engine: Engine,
    *,
    now: datetime | None = None,
    spike: SpikeRule | None = None,
    projects: Sequence[str] | None = None,
) -> list[Alert]:
    """Fire every alert that is due (from the rollups as they are) and return the new ones.

    Each (project, rule, period, threshold) fires once: inserts use ``ON CONFLICT DO NOTHING``,
    so concurrent or repeated runs never duplicate. New alerts are logged to ``ledger.alerts``."""
    when = utc_now(now)
    rule = spike or SpikeRule()
    with read_snapshot(engine) as conn:
        budgets = [b for b in list_budgets(conn) if projects is None or b.project in projects]
        candidates: list[Candidate] = []
        for b in budgets:
            ctx = RuleContext.of(conn, b, when, rule)
            for run in RULE_CHECKS:  # in order: the alerts are fired in this order
                candidates += run(ctx)
        if not candidates:
            return []
        a = AlertRow.__table__.c
        existing = {
            tuple(r)
            for r in conn.execute(
                select(a.project, a.rule, a.period, a.threshold).where(
                    a.project.in_([b.project for b in budgets])
                )
            )
        }
    created = fire(
        engine, [c for c in candidates if (c.project, c.rule, c.period, c.threshold) not in existing], when
    )
    for alert in created:
        log.warning("alert %s: %s", alert.rule, alert.message)
    return created


def fire(engine: Engine, fresh: Sequence[Candidate], when: datetime) -> list[Alert]:
    """Insert alerts, skipping any whose (project, rule, period, threshold) exists; return the new ones."""
    created: list[Alert] = []
    if not fresh:
        return created
    with write_transaction(engine) as conn:
        for c in fresh:
            alert = Alert(
                new_event_id(),
                c.project,
                c.rule,
                c.period,
                c.threshold,
                when,
                c.message,
                {"rule": c.rule, "period": c.period, "project": c.project, **c.evidence},
            )
            stmt = (
                dialect_insert(conn, AlertRow.__table__)
                .values(
                    alert_id=alert.alert_id,
                    project=alert.project,
                    rule=alert.rule,
                    period=alert.period,
                    threshold=alert.threshold,
                    created_at=when,
                    message=alert.message,
                    evidence=json.dumps(alert.evidence, sort_keys=True, ensure_ascii=False),
                    attempts=0,
                    next_attempt_at=when,
                    claimed_until=None,
                    delivered_at=None,
                    last_error=None,
                )
                .on_conflict_do_nothing()
                .returning(AlertRow.__table__.c.alert_id)
            )
            # RETURNING, not rowcount: SQLAlchemy 2.1 + psycopg report -1 for a single-row INSERT.
            if conn.execute(stmt).first() is not None:
                created.append(alert)
    return created


def check(
    engine: Engine,
    *,
    now: datetime | None = None,
    spike: SpikeRule | None = None,
    webhook: Webhook | None = None,
    deliver_now: bool = True,
    projects: Sequence[str] | None = None,
) -> tuple[list[Alert], DeliveryResult]:
    """Roll up, fire due alerts, then deliver the outbox to ``webhook`` (if any)."""
    rollup(engine)
    created = evaluate(engine, now=now, spike=spike, projects=projects)
    update_stops(engine, now=now, projects=projects)
    result = deliver(engine, webhook, now=now) if deliver_now else DeliveryResult()
    return created, result


def run_checks(engine: Engine, now: datetime | None = None) -> tuple[list[Alert], DeliveryResult]:
    """:func:`check` with the webhook from the environment (``alerts check`` without options; the
    scheduler runs the same in two jobs: the checks after each rollup, the delivery on its own)."""
    return check(engine, now=now, webhook=webhook_from_env())


# -- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert with its delivery state."""

    alert: Alert
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_error: str | None

    @property
    def status(self) -> str:
        if self.delivered_at is not None:
            return "delivered"
        return "retrying" if self.attempts else "pending"


def list_alerts(
    conn: Connection, project: str | None = None, *, undelivered: bool = False, limit: int | None = None
) -> list[AlertRecord]:
    """Alerts, newest first."""
    a = AlertRow.__table__.c
    query = select(AlertRow.__table__).order_by(a.created_at.desc(), a.alert_id.desc())
    if project is not None:
        query = query.where(a.project == project)
    if undelivered:
        query = query.where(a.delivered_at.is_(None))
    if limit is not None:
        query = query.limit(limit)
    return [
        AlertRecord(
            Alert(
                r.alert_id,
                r.project,
                r.rule,
                r.period,
                int(r.threshold),
                r.created_at,
                r.message,
                json.loads(r.evidence),
            ),
            int(r.attempts),
            r.next_attempt_at,
            r.delivered_at,
            r.last_error,
        )
        for r in conn.execute(query)
    ]
