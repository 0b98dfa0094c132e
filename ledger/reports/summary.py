"""Summary: per-project totals straight from the events table, in one aggregate query.

Used by ``cerebras-ledger demo`` and ``cerebras-ledger summary``. Money is summed in the
database as BIGINT nano-dollars and comes back as exact :class:`~ledger.money.Money`.
Correction rows add their cost deltas; their (empty) token counts add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, exists, func, select

from ledger.money import Money
from ledger.store.schema import EventRow

__all__ = ["ProjectSummary", "project_summaries"]


@dataclass(frozen=True, slots=True)
class ProjectSummary:
    """Totals for one project.

    Attributes:
        calls: attempts (usage events), whatever their status.
        errors, incomplete: attempts with that status.
        tokens: total tokens of attempts with known usage.
        paid_cost: cost of paid (non-free) usage, corrections included.
        free_calls, free_tokens: attempts priced as free, and their tokens.
        unpriced: ``ok`` attempts with no price (unknown model, or usage the upstream did not give),
            unless a correction has priced them since.
    """

    project: str
    calls: int
    errors: int
    incomplete: int
    tokens: int
    paid_cost: Money
    free_calls: int
    free_tokens: int
    unpriced: int


def project_summaries(
    conn: Connection,
    since: datetime | None = None,
    until: datetime | None = None,
    projects: Sequence[str] | None = None,
) -> list[ProjectSummary]:
    e = EventRow.__table__.c
    usage = e.kind == "usage"
    corr = EventRow.__table__.alias("corr")
    corrected = exists().where(corr.c.corrects_event_id == e.event_id)

    def count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    query = (
        select(
            e.project,
            count_if(usage),
            count_if(and_(usage, e.status == "error")),
            count_if(and_(usage, e.status == "incomplete")),
            func.coalesce(func.sum(e.total_tokens), 0),
            func.coalesce(func.sum(case((e.free.is_(False), e.cost_nanos), else_=0)), 0),
            count_if(and_(usage, e.free.is_(True))),
            func.coalesce(func.sum(case((e.free.is_(True), e.total_tokens), else_=0)), 0),
            count_if(and_(usage, e.priced.is_(False), e.status == "ok", ~corrected)),
        )
        .group_by(e.project)
        .order_by(e.project)
    )
    if since is not None:
        query = query.where(e.occurred_at >= since)
    if until is not None:
        query = query.where(e.occurred_at < until)
    if projects is not None:
        query = query.where(e.project.in_(list(projects)))
    return [
        ProjectSummary(
            r[0],
            int(r[1]),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            Money(int(r[5])),
            int(r[6]),
            int(r[7]),
            int(r[8]),
        )
        for r in conn.execute(query).all()
    ]
