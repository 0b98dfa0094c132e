"""Queries: the reads every view of the service shares, so the dashboard, the JSON API and the
CSV download show the same numbers (and a test checks they agree with the CSV report and the
FOCUS export to the nano-dollar).

* **Spend** is :func:`ledger.reports.build.build_report` over the rollups, as the ``report``
  command makes it, limited to what the caller may see (``within``). It never rolls up on a
  read: a page view must not write (the scheduler, or ``POST /api/v1/rollup``, does).
* **Projects** are scoped: a project outside a viewer's tokens, or one the ledger has never seen,
  is a 404 with the same words, so the answer never tells one from the other.
* **Events** are paged newest first by a *cursor* (keyset on ``occurred_at, event_id``): the next
  page costs the same at any depth, where ``OFFSET`` would read every row before it. A cursor is
  opaque URL-safe base64 of the last row's key; a cursor that does not decode is a 400. An event
  is shown as it stands (its corrections added, :func:`ledger.exports.eventfiles.event_row`),
  reading the corrections of that page's events only. The CSV download walks the same pages,
  so it streams in bounded memory.
* **Alert delivery state**: ``sent`` (delivered), ``pending`` (not tried yet), ``retrying``
  (tried, will try again) or ``failed`` (tried :data:`FAILED_AFTER` times or more without
  success; the outbox still retries it, so a receiver that comes back still gets it).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, or_, select

from ledger.budgets.budgets import Budget, list_budgets
from ledger.budgets.check import AlertRecord, list_alerts
from ledger.budgets.spend import BudgetStatus, budget_status
from ledger.calendar import Period, parse_instant, period_bounds
from ledger.config import ConfigError
from ledger.exports.eventfiles import event_row
from ledger.reports.build import Report, build_report
from ledger.service.auth import Principal
from ledger.service.problems import Problem
from ledger.store import read_snapshot
from ledger.store.schema import BudgetRow, EventRow, EventTagRow, UsageRollupRow

__all__ = [
    "FAILED_AFTER",
    "STATUSES",
    "EventFilter",
    "EventsPage",
    "OverviewRow",
    "alerts_for",
    "budgets_for",
    "decode_cursor",
    "delivery_state",
    "encode_cursor",
    "event_filter",
    "event_pages",
    "events_page",
    "known_project",
    "overview",
    "parse_tag",
    "spend_report",
    "unpriced_models",
]

FAILED_AFTER = 5
STATUSES = ("ok", "error", "incomplete")
NOT_FOUND = "no such project"


# -- projects --------------------------------------------------------------------------------------


def known_project(conn: Connection, principal: Principal, project: str) -> str:
    """``project`` if the caller may see it and the ledger knows it; else a 404 (same words either way)."""
    if not principal.sees(project):
        raise Problem(404, NOT_FOUND)
    e = EventRow.__table__.c
    b = BudgetRow.__table__.c
    seen = conn.execute(select(e.project).where(e.project == project).limit(1)).first()
    if seen is None and conn.execute(select(b.project).where(b.project == project)).first() is None:
        raise Problem(404, NOT_FOUND)
    return project


# -- spend -----------------------------------------------------------------------------------------


def spend_report(
    engine: Engine, principal: Principal, period: Period, tz: tzinfo, project: str | None = None
) -> Report:
    """The report of ``period`` in ``tz`` (one project, or every project the caller sees)."""
    if project is not None:
        with engine.connect() as conn:
            known_project(conn, principal, project)
    return build_report(engine, period, tz, project, refresh=False, within=principal.projects)


@dataclass(frozen=True, slots=True)
class OverviewRow:
    """One project on the overview: its figures this period, its budget and its open alerts."""

    project: str
    figures: dict[str, int]
    budget: Budget | None
    status: BudgetStatus | None
    open_alerts: int


def overview(
    engine: Engine, principal: Principal, period: Period, tz: tzinfo, now: datetime | None = None
) -> tuple[Report, list[OverviewRow]]:
    """Every project the caller sees with usage this period or a budget, busiest first.

    ``open_alerts`` counts the alerts fired for the project's current budget period (this month
    or today in the budget's zone): the breaches that still stand."""
    now = now or datetime.now(UTC)
    report = spend_report(engine, principal, period, tz)
    with read_snapshot(engine) as conn:
        budgets = {b.project: b for b in list_budgets(conn) if principal.sees(b.project)}
        statuses = {p: budget_status(conn, b, now) for p, b in budgets.items()}
        alerts = list_alerts(conn, limit=1000)
    open_counts: dict[str, int] = {}
    for record in alerts:
        status = statuses.get(record.alert.project)
        current = {now.date().isoformat()[:7]} if status is None else {status.period, status.period[:7]}
        if principal.sees(record.alert.project) and record.alert.period[:7] in current:
            open_counts[record.alert.project] = open_counts.get(record.alert.project, 0) + 1
    zero = {k: 0 for k in report.totals}
    names = [str(p) for p in report.projects.index] + sorted(set(budgets) - set(report.projects.index))
    rows = []
    for name in names:
        figures = (
            {k: int(v) for k, v in report.projects.loc[name].items()}
            if name in report.projects.index
            else dict(zero)
        )
        rows.append(
            OverviewRow(name, figures, budgets.get(name), statuses.get(name), open_counts.get(name, 0))
        )
    return report, rows


def budgets_for(
    conn: Connection, principal: Principal, now: datetime
) -> list[tuple[Budget, BudgetStatus | None]]:
    return [(b, budget_status(conn, b, now)) for b in list_budgets(conn) if principal.sees(b.project)]


# -- alerts and prices -----------------------------------------------------------------------------


def delivery_state(record: AlertRecord) -> str:
    if record.delivered_at is not None:
        return "sent"
    if record.attempts == 0:
        return "pending"
    return "failed" if record.attempts >= FAILED_AFTER else "retrying"


def alerts_for(
    conn: Connection, principal: Principal, project: str | None = None, limit: int = 200
) -> list[AlertRecord]:
    if project is not None:
        known_project(conn, principal, project)
    records = list_alerts(conn, project, limit=None if principal.projects is not None else limit)
    return [r for r in records if principal.sees(r.alert.project)][:limit]


def unpriced_models(conn: Connection, principal: Principal) -> list[dict[str, Any]]:
    """(book, model) pairs with ``ok`` usage and no price, from the rollups, busiest first."""
    r = UsageRollupRow.__table__.c
    calls = func.sum(case((r.kind == "usage", r.events), else_=0))
    query = (
        select(r.book, r.model, calls, func.sum(r.total_tokens))
        .where(r.status == "ok", r.priced.is_(False))
        .group_by(r.book, r.model)
        .having(calls > 0)
        .order_by(calls.desc(), r.book, r.model)
    )
    if principal.projects is not None:
        query = query.where(r.project.in_(sorted(principal.projects)))
    return [
        {"book": b, "model": m, "calls": int(c), "tokens": int(t or 0)} for b, m, c, t in conn.execute(query)
    ]


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the events explorer shows: usage events in [since, until) that match every filter given."""

    since: datetime
    until: datetime
    project: str | None = None
    model: str | None = None
    status: str | None = None
    tag: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}")
        if self.since >= self.until:
            raise ConfigError("since must be before until")


def event_filter(
    period: Period,
    zone: tzinfo,
    *,
    since: str = "",
    until: str = "",
    project: str = "",
    model: str = "",
    status: str = "",
    tag: str = "",
) -> EventFilter:
    """The filter a request's fields ask for (empty: not given): ``since`` / ``until`` are ISO
    instants that default to the period's bounds in ``zone``; ``tag`` is ``key=value``."""
    bounds = period_bounds(period, zone)
    return EventFilter(
        since=parse_instant(since, "since") if since else bounds[0],
        until=parse_instant(until, "until") if until else bounds[-1],
        project=project or None,
        model=model or None,
        status=status or None,
        tag=parse_tag(tag) if tag else None,
    )


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or len(key) > 100 or len(value) > 200:
        raise ConfigError("tag must be key=value (key up to 100 characters, value up to 200)")
    return key, value


def encode_cursor(when: datetime, event_id: str) -> str:
    raw = json.dumps([when.astimezone(UTC).isoformat(), event_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    """A cursor's key; anything that is not one the service made is a 400."""
    try:
        if len(text) > 400:
            raise ValueError
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        when_text, event_id = json.loads(raw)
        when = datetime.fromisoformat(when_text)
        if when.tzinfo is None or not isinstance(event_id, str) or len(event_id) > 36:
            raise ValueError
        return when.astimezone(UTC), event_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise Problem(400, "the cursor is not valid; start again from the first page") from None


@dataclass(frozen=True, slots=True)
class EventsPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    keys: list[tuple[datetime, str]] = field(default_factory=list)


def events_page(
    conn: Connection, principal: Principal, f: EventFilter, cursor: str | None, limit: int
) -> EventsPage:
    """One page of events, newest first, after ``cursor`` (the first page without one)."""
    if f.project is not None:
        known_project(conn, principal, f.project)
    e = EventRow.__table__.c
    query = select(EventRow.__table__).where(
        e.kind == "usage", e.occurred_at >= f.since, e.occurred_at < f.until
    )
    if f.project is not None:
        query = query.where(e.project == f.project)
    elif principal.projects is not None:
        query = query.where(e.project.in_(sorted(principal.projects)))
    if f.model is not None:
        query = query.where(
            or_(e.served_model == f.model, and_(e.served_model.is_(None), e.requested_model == f.model))
        )
    if f.status is not None:
        query = query.where(e.status == f.status)
    if f.tag is not None:
        t = EventTagRow.__table__.c
        query = query.where(
            select(t.event_id)
            .where(t.event_id == e.event_id, t.key == f.tag[0], t.value == f.tag[1])
            .exists()
        )
    if cursor is not None:
        when, last = decode_cursor(cursor)
        query = query.where(or_(e.occurred_at < when, and_(e.occurred_at == when, e.event_id < last)))
    rows = conn.execute(query.order_by(e.occurred_at.desc(), e.event_id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    corrections = _corrections(conn, [r.event_id for r in rows])
    out = [event_row(r, *corrections.get(r.event_id, (None, None, None))) for r in rows]
    keys = [(r.occurred_at, r.event_id) for r in rows]
    nxt = encode_cursor(*keys[-1]) if more and keys else None
    return EventsPage(out, nxt, keys)


def _corrections(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[int, bool | None, bool | None]]:
    """For each of ``ids`` with corrections: (their cost delta, latest restatement's free, priced)."""
    if not ids:
        return {}
    c = EventRow.__table__.c
    rows = conn.execute(
        select(c.corrects_event_id, c.cost_nanos, c.note, c.correction_seq, c.free, c.priced)
        .where(c.corrects_event_id.in_(list(ids)))
        .order_by(c.corrects_event_id, c.correction_seq)
    ).all()
    out: dict[str, tuple[int, bool | None, bool | None]] = {}
    for eid, cost, note, _seq, free, priced in rows:
        delta, s_free, s_priced = out.get(eid, (0, None, None))
        delta += int(cost or 0)
        if note == "restatement":
            s_free, s_priced = bool(free), bool(priced)
        out[eid] = (delta, s_free, s_priced)
    return out


def event_pages(
    engine: Engine, principal: Principal, f: EventFilter, size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every event of ``f``, newest first, page by page (bounded memory, for the CSV download)."""
    cursor: str | None = None
    while True:
        with engine.connect() as conn:
            page = events_page(conn, principal, f, cursor, size)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
