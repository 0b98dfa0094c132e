"""Events: the record of one upstream attempt, before it is priced.

A :class:`CallEvent` is built once, when an attempt ends (response read, error raised, stream
finished, cut or abandoned), and never changed. It carries identity, route, models, upstream
ids, outcome, token counts and timings, and *never* a key, a token, a prompt or a completion.

:func:`new_event_id` makes time-ordered ids (UUIDv7, RFC 9562, with a counter so ids made in
the same millisecond still sort in creation order). The event's one serialization, the spool
record, is :mod:`ledger.journal.codec`'s; :func:`bounded` cuts an event to the ledger's limits first.

Imports nothing else of the ledger.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "ROUTES",
    "STATUSES",
    "TimeInfo",
    "Usage",
    "CallEvent",
    "ENDPOINTS",
    "MAX_TAGS",
    "MAX_TOKENS",
    "MAX_TAG_KEY",
    "MAX_TAG_VALUE",
    "bounded",
    "json_encoder",
    "new_event_id",
    "normalize_tags",
]

Status = Literal["ok", "error", "incomplete"]
Route = Literal["cerebras", "lava"]
STATUSES: tuple[str, ...] = ("ok", "error", "incomplete")
ROUTES: tuple[str, ...] = ("cerebras", "lava")
# The billed endpoints, by name, with the end of their request path: the one table (the transport
# records what matches it, the spool accepts what is in it). A new endpoint is one line here.
# Checked in order, so /chat/completions is never taken for the legacy /completions.
ENDPOINT_PATHS: tuple[tuple[str, str], ...] = (
    ("chat.completions", "/chat/completions"),
    ("completions", "/completions"),
)
ENDPOINTS: tuple[str, ...] = tuple(name for name, _ in ENDPOINT_PATHS)

log = logging.getLogger("ledger.events")

# What enters the spool is bounded, whatever the caller or the upstream sends (see bounded()):
# the longest the database keeps of each text field, and of tags.
MAX_TAGS = 100
MAX_TAG_KEY = 200
MAX_TAG_VALUE = 1000
TEXT_LIMITS: tuple[tuple[str, int], ...] = (
    ("project", 200),
    ("book", 32),
    ("requested_model", 200),
    ("served_model", 200),
    ("error_type", 100),
    ("error_code", 100),
    ("upstream_id", 200),
    ("lava_request_id", 200),
    ("source", 16),
    ("note", 200),
    ("endpoint", 32),
    ("service_tier", 32),
    ("finish_reason", 32),
)
ID_LIMIT = 64  # event ids are the ledger's own (36 characters); a longer one is cut, never a megabyte


# One call can't use more tokens than this; a larger count is a broken upstream, not usage.
MAX_TOKENS = 100_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one completion, as the upstream reported them.

    Attributes:
        prompt_tokens: input tokens, cached ones included.
        cached_tokens: the part of ``prompt_tokens`` served from the prompt cache.
        completion_tokens: output tokens, reasoning ones included.
        reasoning_tokens: the part of ``completion_tokens`` spent on reasoning.
        total_tokens: ``prompt_tokens + completion_tokens``.
        accepted_prediction_tokens, rejected_prediction_tokens: predicted-output tokens the
            model kept / threw away (both part of ``completion_tokens``).
        image_tokens: the part of ``prompt_tokens`` that came from images.
    """

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    image_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TimeInfo:
    """Cerebras's own ``time_info`` for a completion, in whole microseconds.

    Attributes:
        queue_us, prompt_us, completion_us, total_us: the four durations the API reports.
    """

    queue_us: int | None
    prompt_us: int | None
    completion_us: int | None
    total_us: int | None


def json_encoder(*, sort_keys: bool = False, compact: bool = False) -> Callable[[Any], str]:
    """``json.dumps`` with ``ensure_ascii=False`` (and ``sort_keys``, compact separators), for
    the hot paths: ``JSONEncoder.encode`` builds a fresh C encoder on every call (about 4 µs,
    half the cost of encoding an event); this keeps one. Same output for what the ledger
    encodes (no cycles check: spool records and tags are flat; no NaN ever occurs in them)."""
    key_sep, item_sep = (":", ",") if compact else (": ", ", ")
    slow = json.JSONEncoder(ensure_ascii=False, sort_keys=sort_keys, separators=(item_sep, key_sep))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator in this Python
        return slow.encode
    fast = make(None, None, json.encoder.encode_basestring, None, key_sep, item_sep, sort_keys, False, True)

    def encode(value: Any) -> str:
        return "".join(fast(value, 0))

    return encode


_id_lock = threading.Lock()
_last_ms = 0
_seq = 0


# The random bits make ids unique across processes and machines, not secret. A generator of our
# own, seeded from os.urandom (and again in a forked child), costs a fraction of a microsecond,
# where os.urandom is a system call each time (tens of µs on some VMs); being our own, it is
# untouched by an application that calls random.seed(42) in every worker.
_rng = random.Random()
_random_bits = _rng.getrandbits
os.register_at_fork(after_in_child=_rng.seed)


def new_event_id() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, a 12-bit counter, 62 random bits."""
    global _last_ms, _seq
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # counter spent: borrow the next millisecond
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms, _seq = ms, _random_bits(6)
        seq = _seq
    rand = _random_bits(62)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def normalize_tags(tags: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """Tags as sorted ``(key, value)`` string pairs; ``None`` values are dropped."""
    if not tags:
        return ()
    if not isinstance(tags, Mapping):
        raise TypeError("tags must be a mapping of names to values")
    return tuple(sorted((str(k), str(v)) for k, v in tags.items() if v is not None))


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One attempt at a completion (chat, or legacy text), as the caller's process saw it.

    Attributes:
        event_id: time-ordered UUIDv7; the ledger's idempotency key.
        occurred_at: when the attempt started, timezone-aware UTC.
        project: the project the call is billed to.
        route: ``cerebras`` (direct) or ``lava`` (Lava's forward proxy).
        book: the price book that applies: ``lava`` for Lava managed mode, else ``cerebras``.
        requested_model: the ``model`` of the request body.
        served_model: the ``model`` of the response, when one came.
        status: ``ok``, ``error`` or ``incomplete`` (stream cut or abandoned).
        http_status: the HTTP status, or the ``status_code`` of an in-stream error event.
        error_type, error_code: from the error body; never its message.
        stream: whether the response was streamed.
        usage: token counts, or ``None`` when the upstream did not (validly) say.
        latency_us: from sending the request to the end of the response, in microseconds.
        ttft_us: for a stream, time to the first event, in microseconds.
        time_info: Cerebras's own timings.
        upstream_id: the ``chatcmpl-…`` id.
        lava_request_id: the ``x-lava-request-id`` response header.
        tags: free-form ``(key, value)`` pairs, sorted.
        source: ``wrapper``, ``transport`` or ``import``.
        note: why usage is unknown, or another short machine-made remark; never content.
        endpoint: ``chat.completions`` or ``completions`` (the legacy text endpoint).
        service_tier: the ``service_tier`` the request asked for (responses do not echo it).
        finish_reason: the first choice's ``finish_reason`` (``stop``, ``length``, ...).
        rl_tokens_minute, rl_requests_day: the ``x-ratelimit-remaining-tokens-minute`` and
            ``x-ratelimit-remaining-requests-day`` headers: quota headroom after this call.
    """

    event_id: str
    occurred_at: datetime
    project: str
    route: Route
    book: str
    requested_model: str | None
    served_model: str | None
    status: Status
    http_status: int | None
    error_type: str | None
    error_code: str | None
    stream: bool
    usage: Usage | None
    latency_us: int | None
    ttft_us: int | None
    time_info: TimeInfo | None
    upstream_id: str | None
    lava_request_id: str | None
    tags: tuple[tuple[str, str], ...] = field(default=())
    source: str = "wrapper"
    note: str | None = None
    endpoint: str = "chat.completions"
    service_tier: str | None = None
    finish_reason: str | None = None
    rl_tokens_minute: int | None = None
    rl_requests_day: int | None = None

    @property
    def model(self) -> str | None:
        """The model that did the work: served if known, else requested."""
        return self.served_model or self.requested_model


_clip_said = False
_texts = operator.attrgetter(*(name for name, _ in TEXT_LIMITS))


def _clipped_tags(tags: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...] | None:
    """``tags`` cut to the limits, or ``None`` when they fit as they are."""
    if type(tags) is not tuple:
        return None  # not what normalize_tags makes: the writer sets the record aside
    if len(tags) <= MAX_TAGS:
        for pair in tags:
            if type(pair) is tuple and any(
                type(x) is str and len(x) > limit for x, limit in zip(pair, _TAG_LIMITS, strict=False)
            ):
                break
        else:
            return None
    return tuple(
        tuple(x[:limit] if type(x) is str else x for x, limit in zip(pair, _TAG_LIMITS, strict=False))  # type: ignore[misc]
        if type(pair) is tuple
        else pair
        for pair in tags[:MAX_TAGS]
    )


_TAG_LIMITS = (MAX_TAG_KEY, MAX_TAG_VALUE)


_LIMITS = tuple(limit for _, limit in TEXT_LIMITS)


def _fits(event: CallEvent) -> bool:
    """The usual case, checked cheaply (this runs on every call): every text field, the id and
    the tags within their limits. Anything odd (a field of another type) is left to the full
    check in :func:`bounded`."""
    try:
        for value, limit in zip(_texts(event), _LIMITS, strict=True):
            if value is not None and len(value) > limit:
                return False
        tags = event.tags
        if len(event.event_id) > ID_LIMIT or type(tags) is not tuple or len(tags) > MAX_TAGS:
            return False
        for key, value in tags:
            if len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
                return False
    except (TypeError, ValueError):
        return False
    return True


def bounded(event: CallEvent) -> CallEvent:
    """``event`` with every text field, the id and the tags cut to what the ledger keeps, so a
    1 MB model name from a hostile upstream or thousands of tags from a caller never make a
    spool record the writer cannot read. Text is cut to :data:`TEXT_LIMITS` characters, the
    tags to the first :data:`MAX_TAGS` (sorted) with keys of :data:`MAX_TAG_KEY` and values of
    :data:`MAX_TAG_VALUE` characters (the note says how many tags were dropped, if any). The event itself is
    returned when nothing needs cutting (the usual case, checked cheaply)."""
    if _fits(event):
        return event
    changes: dict[str, Any] = {}
    for (name, limit), value in zip(TEXT_LIMITS, _texts(event), strict=True):
        if type(value) is str and len(value) > limit:
            changes[name] = value[:limit]
    if type(event.event_id) is str and len(event.event_id) > ID_LIMIT:
        changes["event_id"] = event.event_id[:ID_LIMIT]
    tags = _clipped_tags(event.tags)
    if tags is not None:
        changes["tags"] = tags
        dropped = len(event.tags) - len(tags)
        if dropped:
            remark = f"tags clipped: {dropped} of {len(event.tags)} dropped"
            note = changes.get("note", event.note)
            changes["note"] = (f"{remark}; {note}" if note else remark)[:200]
    if not changes:
        return event
    global _clip_said
    if not _clip_said:  # once a process: a caller that always over-tags must not flood the log
        _clip_said = True
        log.warning(
            "ledger: an event of project %r was cut to the ledger's limits (%s); later ones are cut silently",
            event.project[:200],
            ", ".join(sorted(changes)),
        )
    return replace(event, **changes)
