"""Re-pricing: find unpriced usage, and re-price a past period with ``correction`` rows.

Today's book comes from :mod:`ledger.store.prices` (:func:`~ledger.store.prices.load_price_book`);
this module never rewrites an event:

* :func:`unpriced` lists (book, model) pairs with usage but no price.
* :func:`reprice` writes, for each usage event of a period whose cost under today's book
  differs from what it was charged (plus earlier corrections), one ``correction`` row holding
  the difference. Running it twice writes nothing the second time; two runs at once serialize,
  and a unique key makes a second correction set of one generation impossible. A cost that came
  from outside (an imported ``cost_usd``) is kept unless the caller asks to re-price it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, select
from sqlalchemy.exc import IntegrityError

from ledger.events import CallEvent, Usage, new_event_id
from ledger.money import Money
from ledger.pricing import Charge, charge
from ledger.store.engine import transaction_lock
from ledger.store.ingest import event_row, insert_events
from ledger.store.prices import load_price_book
from ledger.store.schema import EventRow

__all__ = ["RepriceConflict", "RepriceResult", "Unpriced", "reprice", "unpriced"]


@dataclass(frozen=True, slots=True)
class Unpriced:
    book: str
    model: str
    events: int
    tokens: int


def unpriced(conn: Connection) -> list[Unpriced]:
    """(book, model) pairs with usage that no price covers, busiest first."""
    e = EventRow.__table__.c
    corr = EventRow.__table__.alias("corr")
    corrected = exists().where(corr.c.corrects_event_id == e.event_id)
    model = func.coalesce(e.served_model, e.requested_model, "(none)")
    rows = conn.execute(
        select(e.book, model.label("model"), func.count(), func.coalesce(func.sum(e.total_tokens), 0))
        .where(and_(e.kind == "usage", e.priced.is_(False), e.usage_known.is_(True), ~corrected))
        .group_by(e.book, model)
        .order_by(func.count().desc())
    ).all()
    return [Unpriced(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


@dataclass(frozen=True, slots=True)
class RepriceResult:
    examined: int
    corrections: int
    delta: Money


REVERSAL = "reversal"
RESTATEMENT = "restatement"


def _event_of(r: Any, usage: Usage | None, note: str | None = None) -> CallEvent:
    return CallEvent(
        event_id=new_event_id(),
        occurred_at=r.occurred_at,
        project=r.project,
        route=r.route,
        book=r.book,
        requested_model=r.requested_model,
        served_model=r.served_model,
        status=r.status,
        http_status=r.http_status,
        error_type=r.error_type,
        error_code=r.error_code,
        stream=bool(r.stream),
        usage=usage,
        latency_us=None,
        ttft_us=None,
        time_info=None,
        upstream_id=r.upstream_id,
        lava_request_id=r.lava_request_id,
        tags=tuple(sorted((str(k), str(v)) for k, v in _tags(r.tags).items())),
        source="reprice",
        note=note,
        endpoint=r.endpoint,
    )


def _money(nanos: Any) -> Money | None:
    return None if nanos is None else Money(int(nanos))


REPRICE_LOCK_KEY = 0x7265_7072_6963_65  # "reprice": PostgreSQL advisory lock key


class RepriceConflict(ValueError):
    """Another re-pricing stored corrections for the same events meanwhile; nothing was written."""


def outside_cost(price_id: str | None, cost_nanos: int | None) -> bool:
    """Whether a standing charge came from outside the price book (an imported ``cost_usd``):
    a cost with no price point behind it."""
    return price_id is None and cost_nanos is not None


def reprice(
    conn: Connection,
    since: datetime,
    until: datetime,
    project: str | None = None,
    *,
    dry_run: bool = False,
    include_imported: bool = False,
) -> RepriceResult:
    """Re-price usage events of [since, until) with today's book, in the caller's write
    transaction (:func:`ledger.store.write_transaction`).

    An event whose price under today's book differs from how it stands (its own charge, or its
    latest restatement) gets two ``correction`` rows pointing at it: a *reversal* (the standing
    charge and tokens, negated) and a *restatement* (the tokens at the new charge), numbered
    ``2g-1`` and ``2g`` in ``correction_seq`` for the event's next generation ``g``. Sums over all
    rows then equal the new pricing exactly, per price, per free/paid and per priced flag, and
    no row is ever updated.

    Runs serialize (see :func:`_lock`): a second run at the same time waits, then finds the
    first one's corrections and writes nothing for them. An event whose standing cost came from
    outside (an imported ``cost_usd``, no price point) is left alone unless ``include_imported``.
    Raises :class:`RepriceConflict` if corrections of the same generation appeared meanwhile
    anyway (a writer that skipped the lock); the caller's transaction then rolls back.
    """
    transaction_lock(conn, REPRICE_LOCK_KEY)
    book = load_price_book(conn)
    e = EventRow.__table__.c
    corr = EventRow.__table__.alias("corr")
    top = (
        select(
            corr.c.corrects_event_id.label("eid"),
            func.max(corr.c.correction_seq).label("top"),
            func.max(case((corr.c.note == RESTATEMENT, corr.c.correction_seq))).label("rseq"),
        )
        .where(corr.c.kind == "correction")
        .group_by(corr.c.corrects_event_id)
        .subquery()
    )
    standing = EventRow.__table__.alias("standing")
    query = (
        select(
            EventRow.__table__,
            standing.c.price_id.label("s_price_id"),
            standing.c.cost_nanos.label("s_cost"),
            standing.c.free.label("s_free"),
            standing.c.priced.label("s_priced"),
            standing.c.list_cost_nanos.label("s_list"),
            standing.c.event_id.label("rid"),
            top.c.top,
        )
        .outerjoin(top, top.c.eid == e.event_id)
        .outerjoin(
            standing,
            and_(standing.c.corrects_event_id == e.event_id, standing.c.correction_seq == top.c.rseq),
        )
        .where(
            and_(e.kind == "usage", e.usage_known.is_(True), e.occurred_at >= since, e.occurred_at < until)
        )
        .order_by(e.occurred_at, e.event_id)
    )
    if project is not None:
        query = query.where(e.project == project)
    now = datetime.now(UTC)
    examined, rows, total = 0, [], 0
    for r in conn.execute(query).all():
        examined += 1
        usage = Usage(
            r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.reasoning_tokens, r.total_tokens
        )
        if r.rid is None:
            old = Charge(
                r.price_id, _money(r.cost_nanos), bool(r.free), bool(r.priced), _money(r.list_cost_nanos)
            )
        else:
            old = Charge(r.s_price_id, _money(r.s_cost), bool(r.s_free), bool(r.s_priced), _money(r.s_list))
        if not include_imported and outside_cost(old.price_id, None if old.cost is None else old.cost.nanos):
            continue  # billed elsewhere: kept as given
        new = charge(_event_of(r, usage), book)
        if new.cost is None or (new.price_id, new.cost, new.free) == (old.price_id, old.cost, old.free):
            continue  # unchanged, or still unpriced: nothing to restate
        negated = Usage(
            *(
                -n
                for n in (
                    usage.prompt_tokens,
                    usage.cached_tokens,
                    usage.completion_tokens,
                    usage.reasoning_tokens,
                    usage.total_tokens,
                )
            )
        )
        reversal = Charge(
            old.price_id,
            None if old.cost is None else -old.cost,
            old.free,
            old.priced,
            None if old.list_cost is None else -old.list_cost,
        )
        generation = (int(r.top or 0) + 1) // 2 + 1
        rows.append(
            event_row(
                _event_of(r, negated, REVERSAL),
                reversal,
                now,
                kind="correction",
                corrects=r.event_id,
                seq=2 * generation - 1,
            )
        )
        rows.append(
            event_row(
                _event_of(r, usage, RESTATEMENT),
                new,
                now,
                kind="correction",
                corrects=r.event_id,
                seq=2 * generation,
            )
        )
        total += new.cost.nanos - (old.cost.nanos if old.cost is not None else 0)
    if rows and not dry_run:
        try:
            batch = insert_events(conn, rows, "reprice")
            stored = conn.execute(
                select(func.count()).select_from(EventRow.__table__).where(e.batch_id == batch)
            ).scalar_one()
        except Exception as exc:  # the PostgreSQL path writes through the driver: its own error types
            if not isinstance(exc, (IntegrityError, conn.dialect.loaded_dbapi.IntegrityError)):
                raise
            stored = -1
        if stored != len(rows):
            raise RepriceConflict(
                "another re-pricing stored corrections for the same events meanwhile; "
                "nothing was written: run it again"
            )
    return RepriceResult(examined, len(rows) // 2, Money(total))


def _tags(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
