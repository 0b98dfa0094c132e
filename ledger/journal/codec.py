"""Codec: the spool record, the one serialization of a :class:`~ledger.events.CallEvent`.

:func:`encode` writes an event as one line of JSON (a list led by the spool version, each field at
its ``F_*`` position), cut to the ledger's limits first (:func:`ledger.events.bounded`), so every line
fits one read. :func:`decode_fields` reads a line back as checked fields without building an event
(the writer's hot path); :func:`decode` builds the event, and ``decode(encode(e)) == e``. A line that
is not a valid record (torn, corrupt, another version) raises :class:`EventDecodeError`; version 1
records, written by an older ledger, are still read.

Used on the call path (:meth:`ledger.journal.Journal.append`) and by the writer; imports only
:mod:`ledger.events`.
"""

from __future__ import annotations

import json
import operator
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.events import ENDPOINTS, ROUTES, STATUSES, CallEvent, TimeInfo, Usage, bounded, json_encoder

__all__ = ["F_TAGS", "EventDecodeError", "decode", "decode_fields", "encode", "event_id_of"]

_SPOOL_VERSION = 2  # version 1 records (22 fields, 5 usage counts) are still read

_encode_json = json_encoder(compact=True)


class EventDecodeError(ValueError):
    """A spool record that is not a valid event (torn, corrupt or from a newer version)."""


def encode(event: CallEvent) -> bytes:
    """The event as one line of JSON (with its newline), for the spool, cut to the ledger's
    limits first (:func:`bounded`)."""
    event = bounded(event)
    u = event.usage
    t = event.time_info
    row = [
        _SPOOL_VERSION,
        event.event_id,
        (at if (at := event.occurred_at).tzinfo is UTC else at.astimezone(UTC)).isoformat(),
        event.project,
        event.route,
        event.book,
        event.requested_model,
        event.served_model,
        event.status,
        event.http_status,
        event.error_type,
        event.error_code,
        event.stream,
        None
        if u is None
        else [
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            u.reasoning_tokens,
            u.total_tokens,
            u.accepted_prediction_tokens,
            u.rejected_prediction_tokens,
            u.image_tokens,
        ],
        event.latency_us,
        event.ttft_us,
        None if t is None else [t.queue_us, t.prompt_us, t.completion_us, t.total_us],
        event.upstream_id,
        event.lava_request_id,
        [list(p) if type(p) is tuple else p for p in event.tags],
        event.source,
        event.note,
        event.endpoint,
        event.service_tier,
        event.finish_reason,
        event.rl_tokens_minute,
        event.rl_requests_day,
    ]
    text = _encode_json(row)
    # surrogatepass: a lone surrogate (from a JSON "\\ud800" or a file name) must not lose the event
    return text.encode("utf-8", "surrogatepass") + b"\n"


# Where each field sits in a spool record (the JSON list :func:`encode` writes).
(
    F_VERSION,
    F_ID,
    F_AT,
    F_PROJECT,
    F_ROUTE,
    F_BOOK,
    F_REQUESTED,
    F_SERVED,
    F_STATUS,
    F_HTTP,
    F_ERROR_TYPE,
    F_ERROR_CODE,
    F_STREAM,
    F_USAGE,
    F_LATENCY,
    F_TTFT,
    F_TIME_INFO,
    F_UPSTREAM_ID,
    F_LAVA_ID,
    F_TAGS,
    F_SOURCE,
    F_NOTE,
    F_ENDPOINT,
    F_SERVICE_TIER,
    F_FINISH_REASON,
    F_RL_TOKENS,
    F_RL_REQUESTS,
) = range(27)
_FIELDS = 27
_V1_FIELDS = 22
_V1_PADDING = ("chat.completions", None, None, None, None)  # what a version 1 record did not say


def decode_fields(line: bytes, *, trusted: bool = False) -> list[Any]:
    """One spool line's fields, checked, as a list indexed by the ``F_*`` positions.

    ``F_AT`` holds the aware UTC datetime; every other field is as :func:`encode` wrote it
    (``F_USAGE`` five ints or ``None``, ``F_TIME_INFO`` four, ``F_TAGS`` ``[key, value]`` pairs).
    This is the writer's hot path: it turns lines into rows without building a :class:`CallEvent`.
    ``trusted`` skips the field type checks: for lines this very process just wrote (its live
    segment); a dead process's segment, which may be torn or corrupt, is always checked."""
    try:
        row = json.loads(line)
        if type(row) is not list:
            raise EventDecodeError("unknown spool record version or shape")
        if len(row) == _V1_FIELDS and row[0] == 1:  # written by an older ledger: still good
            row.extend(_V1_PADDING)
            usage = row[F_USAGE]
            if type(usage) is list and len(usage) == 5:
                usage.extend((0, 0, 0))
        elif len(row) != _FIELDS or row[0] != _SPOOL_VERSION:
            raise EventDecodeError("unknown spool record version or shape")
        if row[F_ENDPOINT] not in ENDPOINTS:
            raise EventDecodeError("unknown endpoint")
        when = datetime.fromisoformat(row[F_AT])
        if when.tzinfo is None or row[F_STATUS] not in STATUSES or row[F_ROUTE] not in ROUTES:
            raise EventDecodeError("bad timestamp, status or route")
        row[F_AT] = when if when.utcoffset() == _ZERO else when.astimezone(UTC)
        if not trusted:
            _check_types(*_checked(row))
        return row
    except EventDecodeError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        raise EventDecodeError(f"corrupt spool record: {type(exc).__name__}") from None


def decode(line: bytes, *, trusted: bool = False) -> CallEvent:
    """Read back one spool line written by :func:`encode` (see :func:`decode_fields`)."""
    f = decode_fields(line, trusted=trusted)
    usage, time_info = f[F_USAGE], f[F_TIME_INFO]
    return CallEvent(
        event_id=f[F_ID],
        occurred_at=f[F_AT],
        project=f[F_PROJECT],
        route=f[F_ROUTE],
        book=f[F_BOOK],
        requested_model=f[F_REQUESTED],
        served_model=f[F_SERVED],
        status=f[F_STATUS],
        http_status=f[F_HTTP],
        error_type=f[F_ERROR_TYPE],
        error_code=f[F_ERROR_CODE],
        stream=f[F_STREAM],
        usage=None if usage is None else Usage(*usage),
        latency_us=f[F_LATENCY],
        ttft_us=f[F_TTFT],
        time_info=None if time_info is None else TimeInfo(*time_info),
        upstream_id=f[F_UPSTREAM_ID],
        lava_request_id=f[F_LAVA_ID],
        tags=tuple((k, v) for k, v in f[F_TAGS]),
        source=f[F_SOURCE],
        note=f[F_NOTE],
        endpoint=f[F_ENDPOINT],
        service_tier=f[F_SERVICE_TIER],
        finish_reason=f[F_FINISH_REASON],
        rl_tokens_minute=f[F_RL_TOKENS],
        rl_requests_day=f[F_RL_REQUESTS],
    )


_ZERO = timedelta(0)
_checked = operator.itemgetter(
    F_ID,
    F_PROJECT,
    F_BOOK,
    F_REQUESTED,
    F_SERVED,
    F_HTTP,
    F_ERROR_TYPE,
    F_ERROR_CODE,
    F_STREAM,
    F_USAGE,
    F_LATENCY,
    F_TTFT,
    F_TIME_INFO,
    F_UPSTREAM_ID,
    F_LAVA_ID,
    F_TAGS,
    F_SOURCE,
    F_NOTE,
    F_SERVICE_TIER,
    F_FINISH_REASON,
    F_RL_TOKENS,
    F_RL_REQUESTS,
)


def _check_types(
    event_id: Any,
    project: Any,
    book: Any,
    requested: Any,
    served: Any,
    http_status: Any,
    error_type: Any,
    error_code: Any,
    stream: Any,
    usage: Any,
    latency: Any,
    ttft: Any,
    time_info: Any,
    upstream_id: Any,
    lava_id: Any,
    tags: Any,
    source: Any,
    note: Any,
    tier: Any,
    finish_reason: Any,
    rl_tokens: Any,
    rl_requests: Any,
) -> None:
    """Refuse a record whose fields have the wrong types (it would fail later, in the database)."""
    # plain loops: this runs for every spooled event, and all(<generator>) costs twice as much
    for v in (event_id, project, book, source):
        if type(v) is not str:
            raise EventDecodeError("id, project, book and source must be text")
    for v in (requested, served, error_type, error_code, upstream_id, lava_id, note, tier, finish_reason):
        if v is not None and type(v) is not str:
            raise EventDecodeError("optional text fields must be text or null")
    for v in (http_status, latency, ttft, rl_tokens, rl_requests):
        if v is not None and type(v) is not int:
            raise EventDecodeError("status and timings must be whole numbers or null")
    if type(stream) is not bool:
        raise EventDecodeError("stream must be true or false")
    if usage is not None:
        if type(usage) is not list or len(usage) != 8:
            raise EventDecodeError("usage must be eight whole numbers")
        for v in usage:
            if type(v) is not int:
                raise EventDecodeError("usage must be eight whole numbers")
    if time_info is not None:
        if type(time_info) is not list or len(time_info) != 4:
            raise EventDecodeError("time_info must be four whole numbers or nulls")
        for v in time_info:
            if v is not None and type(v) is not int:
                raise EventDecodeError("time_info must be four whole numbers or nulls")
    if type(tags) is not list:
        raise EventDecodeError("tags must be pairs of text")
    for p in tags:
        if type(p) is not list or len(p) != 2 or type(p[0]) is not str or type(p[1]) is not str:
            raise EventDecodeError("tags must be pairs of text")


def event_id_of(line: bytes) -> str:
    """The event id of a spool line, for a log message (``(unreadable)`` if it has none)."""
    try:
        return str(decode_fields(line)[F_ID])
    except EventDecodeError:
        return "(unreadable)"
