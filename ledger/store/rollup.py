"""Rollups: events summed per quarter hour, in the database, incrementally and exactly once.

This module owns ``usage_rollup`` and ``tag_rollup`` (see :mod:`ledger.store.schema`). One run:

1. takes the rollup lock (``BEGIN IMMEDIATE`` on SQLite; a transaction-level advisory lock on
   PostgreSQL, so a second scheduler waits instead of doing the work twice);
2. picks ingest batches not yet rolled up (a small index lookup: a no-op run reads no event);
3. adds their events into the rollups with one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO
   UPDATE`` per table, summing into existing rows; the events are found through their batch's
   index (on PostgreSQL by insisting, see :func:`_by_index`), so a run costs what arrived, not
   the size of the history;
4. marks those batches rolled up, and commits.

Steps 2-4 are one transaction: a crash anywhere rolls all of it back, and the batches are
picked again next time. Two processes at once serialize on the lock, and a batch once marked
is never picked again, so each event counts exactly once. Late events and corrections arrive in
new batches and are added to the quarter hours they belong to, however old.

The bucket is the event's ``occurred_at`` floored to the quarter hour in UTC, computed in SQL by
:class:`quarter_hour` (its SQLite and PostgreSQL forms are below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, select, text, true, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ledger.store.engine import dialect_insert, transaction_lock, write_transaction
from ledger.store.schema import (
    ROLLUP_KEY,
    ROLLUP_MEASURES,
    EventRow,
    EventTagRow,
    IngestBatchRow,
    TagRollupRow,
    UsageRollupRow,
    UTCDateTime,
)

__all__ = ["RollupResult", "Totals", "daily_totals", "pending", "rebuild", "rollup", "rollup_once"]

ROLLUP_LOCK_KEY = 0x726F_6C6C_7570  # "rollup"
BATCHES_PER_RUN = 500


class quarter_hour(FunctionElement[Any]):  # noqa: N801 - reads like the SQL function it is
    """``occurred_at`` floored to the quarter hour, in UTC."""

    type = UTCDateTime()
    inherit_cache = True
    name = "quarter_hour"


@compiles(quarter_hour, "sqlite")
def _quarter_hour_sqlite(element: quarter_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: rewrite the minutes and zero the rest.
    col = compiler.process(element.clauses, **kw)
    return (
        f"(substr({col}, 1, 14) || printf('%02d', (CAST(substr({col}, 15, 2) AS INTEGER) / 15) * 15)"
        f" || ':00.000000')"
    )


@compiles(quarter_hour, "postgresql")
def _quarter_hour_pg(element: quarter_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # In UTC explicitly: date_trunc on a timestamptz would truncate in the session's time zone.
    col = compiler.process(element.clauses, **kw)
    utc = f"({col} AT TIME ZONE 'UTC')"
    return (
        f"((date_trunc('hour', {utc}) + floor(extract(minute FROM {utc}) / 15) * interval '15 minutes')"
        f" AT TIME ZONE 'UTC')"
    )


@dataclass(frozen=True, slots=True)
class RollupResult:
    """What a rollup did: batches and events consumed."""

    batches: int
    events: int


def _upsert(
    conn: Connection, table: Any, keys: tuple[str, ...], measures: tuple[str, ...], source: Any
) -> None:
    stmt = dialect_insert(conn, table).from_select([*keys, *measures], source)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={m: table.c[m] + excluded[m] for m in measures},
    )
    conn.execute(stmt)


def _usage_select(batch_ids: list[str]) -> Any:
    e = EventRow.__table__.c
    bucket = quarter_hour(e.occurred_at)
    model = func.substr(func.coalesce(e.served_model, e.requested_model, ""), 1, 100)
    price = func.substr(func.coalesce(e.price_id, ""), 1, 200)

    def total(col: Any) -> Any:
        return func.coalesce(func.sum(col), 0)

    return (
        select(
            bucket,
            e.project,
            e.route,
            e.book,
            model,
            price,
            e.status,
            e.kind,
            e.free,
            e.priced,
            func.count(),
            total(case((e.usage_known.is_(True), 1), else_=0)),
            total(e.prompt_tokens),
            total(e.cached_tokens),
            total(e.completion_tokens),
            total(e.reasoning_tokens),
            total(e.total_tokens),
            total(e.cost_nanos),
            total(e.list_cost_nanos),
        )
        .where(e.batch_id.in_(batch_ids))
        .group_by(bucket, e.project, e.route, e.book, model, price, e.status, e.kind, e.free, e.priced)
    )


def _tag_select(batch_ids: list[str], lateral: bool = False) -> Any:
    """Tag sums of the batches' events. ``lateral`` (PostgreSQL): look each event's tags up by
    ``event_tags``'s primary key, events first. A plain join leaves the planner free to turn it
    around -- every tag ever recorded, each looked up in ``events`` -- which it does once the
    tables are large (seconds per run at a million events, growing with the history); the
    ``OFFSET 0`` keeps it from flattening the subquery back into such a join."""
    e = EventRow.__table__.c
    t = EventTagRow.__table__.c
    bucket = quarter_hour(e.occurred_at)
    # Only usage rows count calls; corrections add their (signed) tokens and cost.
    calls = func.coalesce(func.sum(case((e.kind == "usage", 1), else_=0)), 0)
    if lateral:
        tags = select(t.key, t.value).where(t.event_id == e.event_id).offset(0).lateral("t")
        source = EventRow.__table__.join(tags, true())
        key, value = tags.c.key, tags.c.value
    else:
        source = EventRow.__table__.join(EventTagRow.__table__, t.event_id == e.event_id)
        key, value = t.key, t.value
    return (
        select(
            bucket,
            e.project,
            key,
            value,
            calls,
            func.coalesce(func.sum(e.total_tokens), 0),
            func.coalesce(func.sum(e.cost_nanos), 0),
        )
        .select_from(source)
        .where(e.batch_id.in_(batch_ids))
        .group_by(bucket, e.project, key, value)
    )


BIG_CHUNK_EVENTS = 100_000  # a chunk this big is summed as the planner sees fit (see _by_index)


def _by_index(conn: Connection, on: bool = True) -> None:
    """On PostgreSQL, make this transaction read ``events`` and ``event_tags`` through their
    indexes -- a chunk's events by ``ix_events_batch_id``, their tags by ``event_tags``'s primary
    key (see :func:`_tag_select`) -- and without JIT compilation.

    Left to itself the planner reads a chunk's events with a sequential scan of ``events`` and
    hash-joins a sequential scan of all of ``event_tags``, or turns the join around: either way
    every incremental run costs the size of the whole history, not of what arrived. Its row
    estimates for ``batch_id IN (…)`` run several times too high, which also pushes the plans'
    costs past the JIT thresholds, and compiling them took longer than running them. (In a
    ten-minute soak on PostgreSQL the rollups fell minutes behind; a 10-batch run on a 1.3 M-event
    ledger took 0.4 s, and 0.02 s by index.) ``SET LOCAL`` ends with the transaction. SQLite
    already looks ``batch_id IN (…)`` up by its index.

    ``on=False`` lifts that again (JIT stays off) for a chunk of :data:`BIG_CHUNK_EVENTS` or
    more -- a backlog after an outage, or an import -- whose tags are then joined plainly, not
    event by event: for such a chunk scanning and hashing is what the planner rightly picks."""
    if conn.dialect.name == "postgresql":
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            conn.execute(text(f"SET LOCAL {setting} = {'off' if on else 'on'}"))
        conn.execute(text("SET LOCAL jit = off"))


def rollup_once(engine: Engine, max_batches: int = BATCHES_PER_RUN) -> RollupResult:
    """Roll up at most ``max_batches`` pending batches in one transaction."""
    b = IngestBatchRow.__table__.c
    with write_transaction(engine) as conn:
        transaction_lock(conn, ROLLUP_LOCK_KEY)
        _by_index(conn)
        batch_ids = list(
            conn.execute(
                select(b.batch_id)
                .where(b.rolled_up.is_(False))
                .order_by(b.created_at, b.batch_id)
                .limit(max_batches)
            ).scalars()
        )
        if not batch_ids:
            return RollupResult(0, 0)
        count = conn.execute(
            select(func.count())
            .select_from(EventRow.__table__)
            .where(EventRow.__table__.c.batch_id.in_(batch_ids))
        ).scalar_one()
        big = count >= BIG_CHUNK_EVENTS
        if big:
            _by_index(conn, on=False)
        _upsert(conn, UsageRollupRow.__table__, ROLLUP_KEY, ROLLUP_MEASURES, _usage_select(batch_ids))
        _upsert(
            conn,
            TagRollupRow.__table__,
            ("bucket", "project", "key", "value"),
            ("events", "total_tokens", "cost_nanos"),
            _tag_select(batch_ids, lateral=conn.dialect.name == "postgresql" and not big),
        )
        conn.execute(update(IngestBatchRow).where(b.batch_id.in_(batch_ids)).values(rolled_up=True))
        return RollupResult(len(batch_ids), int(count))


def pending(engine: Engine) -> tuple[int, int]:
    """(batches, events) waiting to be rolled up.

    Events are counted batch by batch (a subquery per pending batch, by ``ix_events_batch_id``),
    so this costs what is pending; as a join, PostgreSQL's planner would walk all of ``events``."""
    b = IngestBatchRow.__table__.c
    e = EventRow.__table__.c
    per_batch = select(func.count()).where(e.batch_id == b.batch_id).scalar_subquery()
    with engine.connect() as conn:
        _by_index(conn)
        batches, events = conn.execute(
            select(func.count(), func.coalesce(func.sum(per_batch), 0)).where(b.rolled_up.is_(False))
        ).one()
    return int(batches), int(events)


def rollup(engine: Engine, progress: Callable[[int], None] | None = None) -> RollupResult:
    """Roll up everything pending, one transaction per chunk of batches."""
    batches = events = 0
    while True:
        step = rollup_once(engine)
        if not step.batches:
            return RollupResult(batches, events)
        batches += step.batches
        events += step.events
        if progress:
            progress(step.events)


def rebuild(engine: Engine, progress: Callable[[int], None] | None = None) -> RollupResult:
    """Empty the rollups and roll every batch up again.

    The reset is one transaction under the rollup lock; the refill goes chunk by chunk, so a
    crash part-way leaves a consistent state that the next run simply continues."""
    with write_transaction(engine) as conn:
        transaction_lock(conn, ROLLUP_LOCK_KEY)
        conn.execute(delete(UsageRollupRow))
        conn.execute(delete(TagRollupRow))
        conn.execute(update(IngestBatchRow).values(rolled_up=False))
    return rollup(engine, progress)


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over rollup rows: calls (usage rows), tokens and money in nano-dollars."""

    calls: int = 0
    total_tokens: int = 0
    cost_nanos: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.calls + other.calls,
            self.total_tokens + other.total_tokens,
            self.cost_nanos + other.cost_nanos,
        )


def daily_totals(
    conn: Connection, tz: Any, since: datetime, until: datetime, project: str | None = None
) -> dict[date, Totals]:
    """Totals per local calendar day in ``tz`` (a ``zoneinfo.ZoneInfo``) for [since, until).

    Exact because a quarter-hour bucket never straddles a local midnight: every offset in use is a
    whole number of quarter hours. A zone that breaks this (some pre-1980 local mean times) is
    refused rather than summed approximately.
    """
    r = UsageRollupRow.__table__.c
    query = (
        select(
            r.bucket,
            func.sum(case((r.kind == "usage", r.events), else_=0)),
            func.sum(r.total_tokens),
            func.sum(r.cost_nanos),
        )
        .where(r.bucket >= since, r.bucket < until)
        .group_by(r.bucket)
    )
    if project is not None:
        query = query.where(r.project == project)
    out: dict[date, Totals] = {}
    for bucket, calls, tokens, cost in conn.execute(query):
        local = bucket.astimezone(tz)
        offset = local.utcoffset()
        if offset is None or offset.total_seconds() % 900:
            raise ValueError(f"time zone {tz} is not a whole number of quarter hours from UTC at {bucket}")
        day = local.date()
        out[day] = out.get(day, Totals()) + Totals(int(calls or 0), int(tokens or 0), int(cost or 0))
    return out
