"""Ingest: every write to the ``events`` table, idempotent by ``event_id``.

* :func:`event_row` turns a :class:`~ledger.events.CallEvent` and its charge into a row
  (text clipped by :func:`clip` to what the columns hold).
* :func:`insert_events` inserts rows as one new ingest batch (``ON CONFLICT DO NOTHING``): a
  replay after a crash never counts an event twice.
* :func:`insert_spooled` is the spool writer thread's hot path: it prices and inserts spool
  records without building an event or a dict each.
* Both end in the same fast path (:mod:`ledger.store.fastpath`): ``executemany`` of plain tuples
  on SQLite, ``COPY`` into a staging table on PostgreSQL.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Connection

from ledger.events import CallEvent, json_encoder, new_event_id
from ledger.pricing import Charge, PriceBook, charge_nanos
from ledger.store.engine import insert_or_skip
from ledger.store.fastpath import EVENT_COLUMNS, insert_params
from ledger.store.schema import EventRow, IngestBatchRow, UTCDateTime

__all__ = [
    "clip",
    "event_row",
    "event_values",
    "insert_events",
    "insert_spooled",
    "sqlite_params",
]


def clip(value: str | None, limit: int) -> str | None:
    """Text as the database can hold it: no NUL (PostgreSQL refuses it), no lone surrogate (not
    UTF-8), at most ``limit`` characters."""
    if value is None:
        return None
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the common case, checked cheaply (isascii is O(1))
    text = value.replace("\x00", "\ufffd")[:limit]
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


_clip = clip  # (the module's own hot paths call it by the short name)


def _plain_tags(tags: Sequence[Sequence[str]]) -> bool:
    """Whether every tag fits the narrowest limits (key 100, value 200) as it is: ASCII, no NUL."""
    for k, v in tags:
        if len(k) > 100 or len(v) > 200 or not k.isascii() or not v.isascii() or "\x00" in k or "\x00" in v:
            return False
    return True


def event_row(
    event: CallEvent,
    charge: Charge,
    recorded_at: datetime,
    *,
    kind: str = "usage",
    corrects: str | None = None,
    seq: int = 0,
) -> dict[str, Any]:
    if event.occurred_at.utcoffset() is None or recorded_at.utcoffset() is None:
        raise ValueError("naive datetime given to the ledger; use timezone-aware UTC")
    u = event.usage
    t = event.time_info
    tags = {_clip(k, 200): _clip(v, 1000) for k, v in event.tags}
    return {
        "event_id": event.event_id,
        "kind": kind,
        "corrects_event_id": corrects,
        "occurred_at": event.occurred_at,
        "recorded_at": recorded_at,
        "project": _clip(event.project, 200),
        "route": event.route,
        "book": event.book,
        # An empty optional text is no text: CSV cannot tell "" from none, so the ledger never keeps "".
        "requested_model": _clip(event.requested_model or None, 200),
        "served_model": _clip(event.served_model or None, 200),
        "status": event.status,
        "http_status": event.http_status,
        "error_type": _clip(event.error_type or None, 100),
        "error_code": _clip(event.error_code or None, 100),
        "stream": event.stream,
        "usage_known": u is not None,
        "prompt_tokens": u and u.prompt_tokens,
        "cached_tokens": u and u.cached_tokens,
        "completion_tokens": u and u.completion_tokens,
        "reasoning_tokens": u and u.reasoning_tokens,
        "total_tokens": u and u.total_tokens,
        "latency_us": event.latency_us,
        "ttft_us": event.ttft_us,
        "queue_us": t and t.queue_us,
        "prompt_us": t and t.prompt_us,
        "completion_us": t and t.completion_us,
        "total_us": t and t.total_us,
        "upstream_id": _clip(event.upstream_id or None, 200),
        "lava_request_id": _clip(event.lava_request_id or None, 200),
        "price_id": charge.price_id,
        "cost_nanos": None if charge.cost is None else charge.cost.nanos,
        "list_cost_nanos": None if charge.list_cost is None else charge.list_cost.nanos,
        "correction_seq": seq,
        "free": charge.free,
        "priced": charge.priced,
        "tags": _tags_json(tags),
        "source": _clip(event.source, 16),
        "note": _clip(event.note, 200),
        "endpoint": event.endpoint,
        "service_tier": _clip(event.service_tier, 32),
        "finish_reason": _clip(event.finish_reason, 32),
        "accepted_prediction_tokens": u and u.accepted_prediction_tokens,
        "rejected_prediction_tokens": u and u.rejected_prediction_tokens,
        "image_tokens": u and u.image_tokens,
        "rl_remaining_tokens_minute": _bigint(event.rl_tokens_minute),
        "rl_remaining_requests_day": _bigint(event.rl_requests_day),
        "batch_id": None,  # set by insert_events
        TAG_PAIRS: tags.items(),  # not a column: spares insert_events parsing the JSON back
    }


TAG_PAIRS = "_tag_pairs"
_DATETIME_COLUMNS = frozenset(c.name for c in EventRow.__table__.columns if isinstance(c.type, UTCDateTime))
_BOOL_COLUMNS = frozenset(c.name for c in EventRow.__table__.columns if isinstance(c.type, Boolean))


event_values = operator.itemgetter(*EVENT_COLUMNS)


def sqlite_params(row: dict[str, Any], batch_id: str) -> tuple[Any, ...]:
    fixed = dict(row)
    fixed["batch_id"] = batch_id
    for name in _DATETIME_COLUMNS:
        if fixed[name] is not None:
            fixed[name] = _sqlite_time(fixed[name])
    for name in _BOOL_COLUMNS:
        fixed[name] = int(fixed[name])
    return tuple(event_values(fixed))


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]], source: str = "spool") -> str | None:
    """Insert event rows (from :func:`event_row`) as one new ingest batch; rows whose
    ``event_id`` is already there are skipped (they stay in the batch that first brought them).
    Returns the batch id."""
    if not rows:
        return None
    sqlite = conn.dialect.name == "sqlite"
    batch_id = _new_batch(conn, source)
    params = [sqlite_params(r, batch_id) if sqlite else (*event_values(r)[:-1], batch_id) for r in rows]
    tags = [
        (r["event_id"], _clip(k, 100), _clip(str(v), 200))
        for r in rows
        for k, v in (r.get(TAG_PAIRS) or json.loads(r["tags"]).items())
    ]
    insert_params(conn, params, tags)
    return batch_id


def _new_batch(conn: Connection, source: str) -> str:
    batch_id = new_event_id()
    conn.execute(
        insert_or_skip(conn, IngestBatchRow.__table__),
        [{"batch_id": batch_id, "created_at": datetime.now(UTC), "source": source[:16], "rolled_up": False}],
    )
    return batch_id


_SPOOL_COLUMNS = (
    "event_id",
    "kind",
    "corrects_event_id",
    "occurred_at",
    "recorded_at",
    "project",
    "route",
    "book",
    "requested_model",
    "served_model",
    "status",
    "http_status",
    "error_type",
    "error_code",
    "stream",
    "usage_known",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "latency_us",
    "ttft_us",
    "queue_us",
    "prompt_us",
    "completion_us",
    "total_us",
    "upstream_id",
    "lava_request_id",
    "price_id",
    "cost_nanos",
    "free",
    "priced",
    "tags",
    "source",
    "note",
    "list_cost_nanos",
    "endpoint",
    "service_tier",
    "finish_reason",
    "accepted_prediction_tokens",
    "rejected_prediction_tokens",
    "image_tokens",
    "rl_remaining_tokens_minute",
    "rl_remaining_requests_day",
    "correction_seq",
    "batch_id",
)
if EVENT_COLUMNS != _SPOOL_COLUMNS:  # insert_spooled builds rows in this order
    raise ImportError("events table columns changed; update store.insert_spooled")
_NO_TIMES = (None, None, None, None)
_BIGINT_MAX = 2**63 - 1


def _bigint(value: int | None) -> int | None:
    """A count from a header as a BIGINT holds it: one past its range is not kept."""
    return value if value is None or 0 <= value <= _BIGINT_MAX else None


_tags_json = json_encoder(sort_keys=True)  # as json.dumps(tags, sort_keys=True, ensure_ascii=False)


def _sqlite_time(when: datetime) -> str:
    # SQLAlchemy's own SQLite DATETIME format, in UTC (what UTCDateTime reads back)
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    return when.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def insert_spooled(
    conn: Connection,
    records: Sequence[list[Any]],
    book: PriceBook,
    recorded_at: datetime,
    source: str = "spool",
) -> str | None:
    """Price and insert spool records (from :func:`ledger.journal.codec.decode_fields`) as one ingest
    batch: the writer thread's hot path, the same rows as :func:`event_row` +
    :func:`insert_events` without building a :class:`CallEvent` and a dict per event.

    Raises ``ValueError`` for a record that cannot be priced (an amount out of range)."""
    if not records:
        return None
    sqlite = conn.dialect.name == "sqlite"
    batch_id = _new_batch(conn, source)
    recorded = _sqlite_time(recorded_at) if sqlite else recorded_at
    params: list[tuple[Any, ...]] = []
    tag_rows: list[tuple[str, str | None, str | None]] = []
    for (
        _,
        event_id,
        at,
        project,
        route,
        book_name,
        requested,
        served,
        status,
        http_status,
        error_type,
        error_code,
        stream,
        usage,
        latency,
        ttft,
        time_info,
        upstream_id,
        lava_id,
        tags,
        src,
        note,
        endpoint,
        tier,
        finish,
        rl_tokens,
        rl_requests,
    ) in records:
        model = served or requested
        known = usage is not None
        price_id, cost, list_cost, free, priced = charge_nanos(
            book, book_name, model, at, status, (usage[0], usage[1], usage[2]) if known else None
        )
        t = time_info or _NO_TIMES
        u = usage if known else _NO_USAGE
        if not tags:
            tags_json = "{}"
        elif _plain_tags(tags):  # nothing to clip anywhere: skip four _clip calls a tag
            tags_json = _tags_json(dict(tags))
            tag_rows.extend([(event_id, k, v) for k, v in tags])
        else:
            pairs = {_clip(k, 200): _clip(v, 1000) for k, v in tags}
            tags_json = _tags_json(pairs)
            tag_rows.extend((event_id, _clip(k, 100), _clip(v, 200)) for k, v in pairs.items())
        params.append(
            (
                event_id,
                "usage",
                None,
                _sqlite_time(at) if sqlite else at,
                recorded,
                _clip(project, 200),
                route,
                book_name,
                _clip(requested or None, 200),
                _clip(served or None, 200),
                status,
                http_status,
                None if not error_type else _clip(error_type, 100),  # (usually None: no call); "" is none
                None if not error_code else _clip(error_code, 100),
                int(stream) if sqlite else stream,
                int(known) if sqlite else known,
                u[0],
                u[1],
                u[2],
                u[3],
                u[4],
                latency,
                ttft,
                t[0],
                t[1],
                t[2],
                t[3],
                _clip(upstream_id or None, 200),
                None if not lava_id else _clip(lava_id, 200),
                price_id,
                cost,
                int(free) if sqlite else free,
                int(priced) if sqlite else priced,
                tags_json,
                _clip(src, 16),
                None if note is None else _clip(note, 200),
                list_cost,
                endpoint,
                None if tier is None else _clip(tier, 32),
                None if finish is None else _clip(finish, 32),
                u[5],
                u[6],
                u[7],
                None if rl_tokens is None else _bigint(rl_tokens),
                None if rl_requests is None else _bigint(rl_requests),
                0,
                batch_id,
            )
        )
    insert_params(conn, params, tag_rows)
    return batch_id


_NO_USAGE = (None, None, None, None, None, None, None, None)
