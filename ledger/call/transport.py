"""Transport: the one place where a chat-completion exchange becomes a :class:`CallEvent`.

:class:`RecordingTransport` (and :class:`AsyncRecordingTransport`) wrap any httpx (or httpx2)
transport, following httpx's own contract: ``handle_request(request) -> response``, with the
response body wrapped by a stream whose ``__iter__`` passes chunks through untouched and whose
``close()`` does the bookkeeping. Every attempt at a billed endpoint (``events.ENDPOINT_PATHS``:
``/v1/chat/completions`` and the legacy ``/v1/completions``; direct, or through Lava's
``/v1/forward?u=…``) yields exactly one event, handed to the journal when the attempt ends:

* ``ok``: the body (JSON, or the event stream) arrived whole; usage read from the wire.
* ``error``: an HTTP error status, an error event inside a stream, or a transport failure
  (connect error, timeout) before any response. The exception or response reaches the caller
  unchanged.
* ``incomplete``: the body was cut (connection reset, read timeout) or the caller stopped
  reading; whatever is known is kept, usage is marked unknown.

A call of a project whose hard monthly budget is spent (:mod:`ledger.call.stops`) to a model that
is not free in its book is not sent: the transport answers 402 itself (``x-ledger-refused:
hard-budget``) and records an ``error`` event with ``error_code`` ``hard_budget_spent``.

Accounting never breaks a call: any failure in here is logged and the response goes through.
The request's ``x-ledger-project`` / ``x-ledger-tags`` headers, if any, are read and removed
before the request leaves the process. :func:`instrument` fits this transport into an existing
``httpx.Client`` / ``AsyncClient`` (or their httpx2 twins), e.g. the one handed to the official
``cerebras-cloud-sdk`` or ``openai`` client as ``http_client=``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Protocol, TypedDict, TypeVar
from urllib.parse import parse_qs, unquote

import httpx

from ledger.config import ConfigError, check_project, is_lava_byok
from ledger.config import database_url as resolve_url
from ledger.events import ENDPOINT_PATHS, CallEvent, Route, Status, new_event_id, normalize_tags
from ledger.journal import Journal, journal_for
from ledger.call.stops import Stop
from ledger.call.wire import Skeleton, SSEDecoder, error_from, time_info_from, usage_from
from ledger.events import TimeInfo, Usage

__all__ = ["ATTEMPT", "CALL_OPTIONS", "AsyncRecordingTransport", "CallOptions", "HTTPRequest", "HTTPResponse",
           "RecordingTransport", "instrument"]

log = logging.getLogger("ledger")

class CallOptions(TypedDict, total=False):
    """What the wrapper client hands its transport with a request, in
    ``request.extensions[CALL_OPTIONS]``: the call's project and tags (they beat the transport's
    defaults) and the model it asked for (so the body need not be scanned for it)."""

    project: str | None
    tags: Mapping[str, Any] | None
    model: str | None


CALL_OPTIONS = "ledger"  # the request extension holding a :class:`CallOptions`
ATTEMPT = "ledger.attempt"  # the response extension holding its :class:`Attempt` (the decoded body, for the wrapper)


class HTTPRequest(Protocol):
    """What the transport reads of a request: ``httpx.Request`` and ``httpx2.Request`` alike."""

    headers: Any  # httpx.Headers (or httpx2's): raw pairs, pop()
    extensions: dict[str, Any]

    @property
    def url(self) -> Any: ...  # httpx.URL (or httpx2's): path, query

    @property
    def content(self) -> bytes: ...


class HTTPResponse(Protocol):
    """What the transport reads and wraps of a response: httpx's and httpx2's alike."""

    status_code: int
    headers: Any
    stream: Any  # its SyncByteStream / AsyncByteStream, replaced by the recording wrapper
    extensions: dict[str, Any]


class SyncTransport(Protocol):
    """The inner transport: httpx's (or httpx2's) ``HTTPTransport``, or any that quacks alike."""

    def handle_request(self, request: Any) -> Any: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def handle_async_request(self, request: Any) -> Any: ...

    async def aclose(self) -> None: ...


PROJECT_HEADER = "x-ledger-project"
TAGS_HEADER = "x-ledger-tags"
REFUSED_HEADER = "x-ledger-refused"  # on the 402 the ledger answers for a spent hard budget
REFUSAL_CODE = "hard_budget_spent"
# A stream event or a JSON body bigger than this is read through a :class:`~ledger.call.wire.Skeleton`
# (its long strings emptied) rather than held and parsed whole: the tap stays linear, cheap and
# small on a body of any size. (Below it, a parse in C beats the skeleton's Python loop on bodies
# of many small strings, such as a long list of tool calls.)
BIG_EVENT = 1024 * 1024
BIG_BODY = 16 * 1024 * 1024
# The project of a call that names none, or whose x-ledger-project was refused: its cost is
# kept (and shows in reports under this name) rather than lost.
UNATTRIBUTED = "(unattributed)"  # we keep at most this much of a JSON body to read usage from


@functools.lru_cache(maxsize=32)
def _book_for_forward(authorization: str) -> str:
    token = authorization.removeprefix("Bearer ").removeprefix("bearer ")
    return "cerebras" if is_lava_byok(token) else "lava"


@dataclass(frozen=True, slots=True)
class _Target:
    route: Route
    book: str
    endpoint: str


def _endpoint(path: str) -> str | None:
    for name, suffix in ENDPOINT_PATHS:
        if path.endswith(suffix):
            return name
    return None


def _target(request: Any) -> _Target | None:
    """Whether ``request`` is a billed completion (:data:`ledger.events.ENDPOINT_PATHS`), and by which route.

    Lava's forward proxy is ``…/v1/forward?u=<target>``; SDKs pointed at it with a ``base_url``
    of ``…/v1/forward?u=<base>`` send ``…/v1/forward/chat/completions?u=<base>``, so the target
    is ``u`` plus whatever path follows ``/v1/forward``.
    """
    path: str = request.url.path
    head, sep, rest = path.partition("/v1/forward")
    if sep and (not rest or rest.startswith("/")):
        query = request.url.query
        raw = query.decode("ascii", "replace") if isinstance(query, bytes) else str(query)
        targets = parse_qs(raw).get("u")
        target = (unquote(targets[0]).split("?", 1)[0] if targets else "").rstrip("/") + rest
        endpoint = _endpoint(target)
        if endpoint is not None:
            return _Target("lava", _book_for_forward(request.headers.get("authorization", "")), endpoint)
        return None
    endpoint = _endpoint(path)
    return None if endpoint is None else _Target("cerebras", "cerebras", endpoint)


def _parse_tags_header(value: str) -> dict[str, str]:
    value = value.strip()
    if value.startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError("tags header is not an object")
        return {str(k): str(v) for k, v in parsed.items()}
    pairs = (p.split("=", 1) for p in value.split(",") if p.strip())
    return {k.strip(): v.strip() for k, v in pairs}


def _loads(body: bytes) -> Any:
    """``json.loads`` of a body that is UTF-8 (as RFC 8259 requires on the wire) without the
    encoding sniffing ``json.loads(bytes)`` does first; any other body goes the long way."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return json.loads(body)
    return json.loads(text)


@functools.lru_cache(maxsize=64)
def _decoder_factory(http: ModuleType, encoding: str) -> Callable[[], Any] | None:
    """How to make the decoder ``http`` (httpx, or httpx2) itself picks for this
    ``content-encoding``: its class (asked once per package and value, so a call does not build
    a probe response each time), a fresh probe for a chain of several, ``None`` for none."""

    def probe() -> Any:
        return http.Response(200, headers=[("content-encoding", encoding)])._get_content_decoder()

    kind = type(probe())
    if kind.__name__ == "IdentityDecoder":
        return None
    return probe if kind.__name__ == "MultiDecoder" else kind


class _Decoder:
    """Content-Encoding undone for our own copy of the body, exactly as the caller's httpx (or
    httpx2) undoes it for the caller: by the decoder that package itself picks for those headers
    (``br`` once ``brotli`` is installed, ``zstd`` once ``zstandard`` is, gzip and deflate always,
    values it does not know skipped, several undone in reverse order). So the ledger reads what
    the SDK reads, whichever release of which package the caller runs (httpx's decoders return
    bytes, httpx2's iterators of bytes; both are taken)."""

    def __init__(self, http: ModuleType, encoding: str) -> None:
        self._d: Any = None
        if encoding and encoding.strip().lower() != "identity":
            make = _decoder_factory(http, encoding)
            self._d = None if make is None else make()

    def __call__(self, chunk: bytes) -> bytes:
        if self._d is None:
            return chunk
        out = self._d.decode(chunk)
        return out if isinstance(out, bytes) else b"".join(out)

    def flush(self) -> bytes:
        if self._d is None:
            return b""
        out = self._d.flush()
        return out if isinstance(out, bytes) else b"".join(out)


def _header_count(value: bytes) -> int | None:
    """A rate-limit header's whole, non-negative count (ASCII digits only), else ``None``."""
    text = value.strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


class Attempt:
    """One attempt's facts as they arrive; :meth:`finish` turns them into exactly one event."""

    def __init__(self, journal: Journal, target: _Target, project: str, tags: tuple[tuple[str, str], ...],
                 model: str | None, source: str, facts: _RequestFacts | None = None) -> None:
        self.journal = journal
        self.target = target
        self.project = project
        self.tags = tags
        self.requested_model = model
        self.source = source
        self.occurred_at = datetime.now(UTC)
        self.t0 = time.perf_counter()
        self.http_status: int | None = None
        self.lava_request_id: str | None = None
        self.stream = False  # the body is an event stream
        self.requested_stream = facts is not None and facts.stream
        self.service_tier = None if facts is None else facts.service_tier
        self.finish_reason: str | None = None
        self.rl_tokens_minute: int | None = None  # x-ratelimit-remaining-tokens-minute
        self.rl_requests_day: int | None = None  # x-ratelimit-remaining-requests-day
        self.ttft_us: int | None = None
        self.served_model: str | None = None
        self.upstream_id: str | None = None
        self.usage: Usage | None = None
        self.time_info: TimeInfo | None = None
        self.error_type: str | None = None
        self.error_code: str | None = None
        self.note: str | None = None
        self.finished = False  # a stream chunk carried a finish_reason
        self.done = False
        # The decoded JSON body, lent to the wrapper client so it need not parse it again.
        self.body: Mapping[str, Any] | None = None
        self.refusal: Stop | None = None  # a spent hard budget: answered here, never sent
        self.tap: _BodyTap | None = None  # the body being read, once there is one
        self.owner: object = None  # the transport that sent it (which ends it when it closes)
        journal.open_attempts.add(self)

    def abandon(self, why: str) -> None:
        """End an attempt its caller left open (a stream never read to its end nor closed), when
        its transport or the ledger closes or the interpreter exits: what arrived counts."""
        if self.done:
            return
        try:
            if self.tap is not None:
                self.tap.cut(why)
            else:
                self.finish("incomplete", why)
        except Exception:
            log.exception("ledger: could not end an abandoned attempt")
            self.finish("incomplete", why)

    def finish(self, status: Status, note: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.journal.open_attempts.discard(self)
        try:
            event = CallEvent(
                event_id=new_event_id(),
                occurred_at=self.occurred_at,
                project=self.project,
                route=self.target.route,
                book=self.target.book,
                requested_model=self.requested_model,
                served_model=self.served_model,
                status=status,
                endpoint=self.target.endpoint,
                http_status=self.http_status,
                error_type=self.error_type,
                error_code=self.error_code,
                stream=self.stream or self.requested_stream,
                usage=self.usage,  # kept even when the body was cut after it arrived
                latency_us=int((time.perf_counter() - self.t0) * 1_000_000),
                ttft_us=self.ttft_us,
                time_info=self.time_info,
                upstream_id=self.upstream_id,
                lava_request_id=self.lava_request_id,
                tags=self.tags,
                source=self.source,
                note=note or self.note,
                service_tier=self.service_tier,
                finish_reason=self.finish_reason,
                rl_tokens_minute=self.rl_tokens_minute,
                rl_requests_day=self.rl_requests_day,
            )
            self.journal.append(event)
        except Exception:  # accounting must never break the call
            log.exception("ledger: could not record an attempt for project %r", self.project)

    def failed(self, exc: BaseException) -> None:
        """The transport raised before a response: an ``error`` event named after the exception."""
        self.error_type = type(exc).__name__
        self.finish("error", "no response from upstream")

    def on_response(self, response: Any) -> str:
        """Read the response's status and headers; returns its content-encoding."""
        self.http_status = response.status_code
        encoding = ""
        # one pass over the raw headers (each httpx Headers lookup scans and decodes them all)
        for key, value in response.headers.raw:
            name = key.lower()
            if name == b"content-type":
                self.stream = value[:17].lower() == b"text/event-stream"
            elif name == b"content-encoding":  # every one, as httpx joins them
                encoding = f"{encoding},{value.decode('latin-1')}" if encoding else value.decode("latin-1")
            elif name == b"x-lava-request-id":
                self.lava_request_id = value.decode("latin-1")
            elif name == b"inference-id":  # the upstream id, even when the body cannot be read
                self.upstream_id = self.upstream_id or value.decode("latin-1")
            elif name == b"x-ratelimit-remaining-tokens-minute":
                self.rl_tokens_minute = _header_count(value)
            elif name == b"x-ratelimit-remaining-requests-day":
                self.rl_requests_day = _header_count(value)
        return encoding

    def read_body(self, body: bytes) -> None:
        """A whole JSON body (success or error) has arrived."""
        try:
            parsed = _loads(body) if body else None
        except ValueError:
            parsed = None
        status = self.http_status or 0
        if status >= 400:
            err = error_from(status, parsed)
            self.error_type, self.error_code = err.type, err.code
            self.finish("error")
            return
        if not isinstance(parsed, Mapping):
            self.finish("ok", "response body is not a JSON object")
            return
        self.body = parsed
        self._read_completion(parsed)
        self.finish("ok")

    def _read_completion(self, body: Mapping[str, Any]) -> None:
        """One body, or one stream chunk. What a chunk says adds to what earlier ones said and
        never erases it: usage is the last non-null usage seen (a later ``"usage": null``, a
        ``time_info`` alone or another choice's finish chunk keep it), and so on per field."""
        model, rid = body.get("model"), body.get("id")
        if isinstance(model, str) and model:
            self.served_model = model
        if isinstance(rid, str) and rid:
            self.upstream_id = rid
        if body.get("usage") is not None:
            self.usage, self.note = usage_from(body)
        elif self.usage is None and not self.stream:
            self.note = "no usage in response"
        if body.get("time_info") is not None:
            self.time_info = time_info_from(body) or self.time_info
        choices = body.get("choices")
        if type(choices) is list:
            for c in choices:
                reason = c.get("finish_reason") if isinstance(c, Mapping) else None
                if isinstance(reason, str) and reason:
                    self.finished = True
                    if self.finish_reason is None or c.get("index") in (0, None):
                        self.finish_reason = reason[:32]

    def read_event(self, data: str) -> bool:
        """One SSE ``data:`` payload. Returns ``True`` when it was an in-stream error."""
        if self.ttft_us is None:
            self.ttft_us = int((time.perf_counter() - self.t0) * 1_000_000)
        elif not ('"usage"' in data or '"error"' in data or '"finish_reason"' in data
                  or self.upstream_id is None):
            return False  # a plain content delta: nothing for the ledger in it
        if data.strip() == "[DONE]":
            return False
        try:
            chunk = json.loads(data)
        except ValueError:  # the SDKs and the wrapper raise on it: the attempt failed
            self.note = "malformed event in stream"
            return True
        if not isinstance(chunk, Mapping):
            return False
        if chunk.get("error"):  # as the SDKs: any truthy "error" is an error event
            err = error_from(self.http_status, chunk)
            self.http_status, self.error_type, self.error_code = err.status, err.type, err.code
            return True
        self._read_completion(chunk)
        return False


# What makes an SSE event matter to the ledger after the first one (see Attempt.read_event).
_MARKERS = (b'"usage"', b'"error"', b'"finish_reason"', b"[DONE]")


def _marked_spans(whole: bytes) -> list[tuple[int, int]]:
    """Where, in LF-delimited SSE bytes that end on an event boundary, lie the events holding
    one of :data:`_MARKERS`: sorted ``(start, end)`` spans, each whole events (byte searches
    only; nothing is decoded)."""
    spans: set[tuple[int, int]] = set()
    for marker in _MARKERS:
        at = whole.find(marker)
        while at >= 0:
            start = whole.rfind(b"\n\n", 0, at)
            end = whole.find(b"\n\n", at) + 2
            spans.add((0 if start < 0 else start + 2, end))
            at = whole.find(marker, end)
    return sorted(spans)


class _BodyTap:
    """What the sync and async body wrappers share: decode a copy, read it, finish once.

    A stream's first event is read as it arrives (for the time to first token and the upstream
    id). After it, chunks are only held, as they are, and *scanned* in one go when the body
    ends, is cut, or :attr:`scan_bytes` have piled up: a byte search finds the events that may
    matter (:data:`_MARKERS`: usage, errors, finish reasons, ``[DONE]``) and only those are
    decoded. Content deltas, nearly all of a stream, cost the caller one list append each.
    Only LF-delimited streams are skimmed so (what Cerebras and Lava send); at a CR the rest goes
    through the decoder whole.

    An event that grows past :data:`BIG_EVENT` (or a JSON body past :data:`BIG_BODY`) goes through a
    :class:`~ledger.call.wire.Skeleton` instead, chunk by chunk: its long strings are dropped as
    they pass and the rest (ids, model, usage, finish reasons) is read as usual, so a body of
    any size costs about one ``memchr`` pass and bounded memory."""

    scan_bytes = 64 * 1024
    big_event = BIG_EVENT  # (tests make these small, to read small bodies the big way)
    big_body = BIG_BODY

    def __init__(self, attempt: Attempt, encoding: str, http: ModuleType) -> None:
        self.attempt = attempt
        self.decoder = _Decoder(http, encoding)
        self.sse = SSEDecoder() if attempt.stream else None
        self.buf: list[bytes] = []  # a JSON body's chunks, or a skimmed stream's unscanned ones
        self.size = 0
        self.errored = False
        self.saw_done = False
        self.can_skim = True  # tests turn skimming off to compare with full decoding
        self.skim = False  # the first event is read; chunks are held for scanning
        self.pending = b""  # scanned bytes after the last event boundary
        self.big: Skeleton | None = None  # reading a big event or body through its skeleton
        attempt.tap = self

    def feed(self, chunk: bytes) -> None:
        if self.skim:
            self.buf.append(chunk)
            self.size += len(chunk)
            if self.size >= self.scan_bytes:
                self._scan()
            return
        if self.attempt.done:
            return
        try:
            data = self.decoder(chunk)
            if self.big is not None:
                self._big(data)
            elif self.sse is None:
                self.buf.append(data)
                self.size += len(data)
                if self.size > self.big_body:  # from here on, only the skeleton of the body is kept
                    self.big = Skeleton()
                    held, self.buf, self.size = b"".join(self.buf), [], 0
                    self.big.feed(held)
            else:
                self._events(data)
                if self.sse.held() > self.big_event:
                    self.big = Skeleton()
                    self._big(self.sse.take_held())
                    return
                a = self.attempt
                self.skim = (self.can_skim and a.ttft_us is not None and a.upstream_id is not None
                             and self.sse.at_boundary())
        except Exception:
            log.exception("ledger: could not read a response chunk")
            self.attempt.note = "response could not be decoded"

    def _big(self, data: bytes) -> None:
        """A chunk of a big event (or body): through the skeleton; for a stream, the skeleton's
        events are read as usual, and once the big event is over, the stream is read as usual."""
        big = self.big
        assert big is not None
        big.feed(data)
        if self.sse is None:
            return
        self._events(big.take())
        if not big.in_string and self.sse.at_boundary():
            self.big = None

    def _events(self, data: bytes) -> None:
        assert self.sse is not None
        for ev in self.sse.feed(data):
            self.saw_done |= ev.data == "[DONE]"
            self.errored |= self.attempt.read_event(ev.data)

    def _scan(self) -> None:
        """Read the held chunks of a skimmed stream: the events in them that may matter."""
        if not self.buf:
            return
        data = b"".join(self.buf) if len(self.buf) > 1 else self.buf[0]
        self.buf, self.size = [], 0
        if self.attempt.done:
            return
        try:
            data = self.decoder(data)
            data = self.pending + data if self.pending else data
            if b"\r" in data:  # not the usual LF-only stream: decode the rest in full
                self.skim, self.pending = False, b""
                self._events(data)
                return
            cut = data.rfind(b"\n\n") + 2
            if cut < 2:  # no event boundary yet
                if len(data) > self.big_event:  # a big event: read the rest of it through its skeleton
                    self.skim, self.pending = False, b""
                    self.big = Skeleton()
                    self._big(data)
                else:
                    self.pending = data
                return
            whole, self.pending = data[:cut], data[cut:]
            for start, end in _marked_spans(whole):
                self._events(whole[start:end])
        except Exception:
            log.exception("ledger: could not read a response chunk")
            self.attempt.note = "response could not be decoded"

    def _rest(self) -> None:
        """The body ended: held chunks are scanned, and bytes after the last boundary decoded."""
        self._scan()
        tail = self.decoder.flush()
        if self.big is not None:
            self._big(tail)
            return
        rest, self.pending = self.pending + tail, b""
        if rest and self.sse is not None:
            self._events(rest)

    def end(self) -> None:
        """The body arrived whole."""
        a = self.attempt
        if a.done:
            return
        try:
            if self.sse is None:
                tail = self.decoder.flush()
                if self.big is not None:
                    self.big.feed(tail)
                    a.read_body(self.big.take())
                else:
                    self.buf.append(tail)
                    a.read_body(b"".join(self.buf))
            else:
                self._rest()
                for ev in self.sse.close():
                    self.errored |= a.read_event(ev.data)
                if self.errored or (a.http_status or 0) >= 400:
                    a.finish("error")
                elif a.usage is None and a.note is None:
                    if self.saw_done or a.finished:  # whole, but the upstream sent no usage
                        a.finish("ok", "no usage in response")
                    else:
                        a.finish("incomplete", "stream ended before usage arrived")
                else:
                    a.finish("ok")
        except Exception:
            log.exception("ledger: could not read a response body")
            a.finish("ok", "response could not be read")

    def cut(self, why: str) -> None:
        """The body stopped early: a read error, or the caller closed it unread.

        The SDKs stop reading at ``data: [DONE]`` and close the response; a stream that got
        that far, or whose final chunk (with usage) arrived, is whole, not cut."""
        a = self.attempt
        if a.done:
            return
        if self.skim:
            self._scan()  # what arrived before the cut counts
        if self.sse is not None and (self.saw_done or a.usage is not None):
            self.end()
            return
        if self.errored:  # the caller stopped at the error it raised: that is what the event says
            a.finish("error", None if a.note else why)
            return
        a.finish("error" if (a.http_status or 0) >= 400 else "incomplete", why)


@functools.cache
def _sync_stream_class(mod: ModuleType) -> type:
    base: type = mod.SyncByteStream

    class RecordingStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, tap: _BodyTap) -> None:
            self._inner = inner
            self._tap = tap

        def __iter__(self) -> Iterator[bytes]:
            try:
                for chunk in self._inner:
                    self._tap.feed(chunk)
                    yield chunk
            except GeneratorExit:  # the reader stopped early and closed the body
                self._tap.cut("response closed before the body was read")
                raise
            except BaseException as exc:
                self._tap.cut(f"body cut: {type(exc).__name__}")
                raise
            self._tap.end()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._tap.cut("response closed before the body was read")

        def __del__(self) -> None:
            if not self._tap.attempt.done:
                self._tap.cut("response abandoned before the body was read")

    return RecordingStream


@functools.cache
def _async_stream_class(mod: ModuleType) -> type:
    base: type = mod.AsyncByteStream

    class AsyncRecordingStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, tap: _BodyTap) -> None:
            self._inner = inner
            self._tap = tap

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._inner:
                    self._tap.feed(chunk)
                    yield chunk
            except GeneratorExit:  # the reader stopped early and closed the body
                self._tap.cut("response closed before the body was read")
                raise
            except BaseException as exc:
                self._tap.cut(f"body cut: {type(exc).__name__}")
                raise
            self._tap.end()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._tap.cut("response closed before the body was read")

        def __del__(self) -> None:
            if not self._tap.attempt.done:
                self._tap.cut("response abandoned before the body was read")

    return AsyncRecordingStream


@functools.cache
def _stream_class(module: str, is_async: bool) -> type:
    """The body wrapper for responses made in ``module`` (httpx's, or httpx2's)."""
    mod = sys.modules[module.split(".", 1)[0]]
    return _async_stream_class(mod) if is_async else _sync_stream_class(mod)


class _Recorder:
    """Settings and request-side work shared by the sync and async transports."""

    def __init__(self, project: str | None, tags: Mapping[str, Any] | None, database_url: str | None,
                 spool_dir: str | None, journal: Journal | None, source: str) -> None:
        default = project or os.environ.get("LEDGER_PROJECT")
        self.project = check_project(default) if default else None
        self.tags = normalize_tags(tags)
        self.journal = journal or journal_for(resolve_url(database_url), spool_dir)
        self.source = source

    def begin(self, request: HTTPRequest) -> Attempt | None:
        try:
            headers = request.headers
            # Ours, so removed first and always: they never leave the process, chat or not.
            raw_project = raw_tags = None
            if b"x-ledger-" in b"\n".join([k for k, _ in headers.raw]).lower():  # one cheap pass
                raw_project = headers.pop(PROJECT_HEADER, None)
                raw_tags = headers.pop(TAGS_HEADER, None)
            target = _target(request)
            if target is None:
                return None
            project = self.project
            tags = self.tags
            model: str | None = None
            notes: list[str] = []
            ext: CallOptions | None = request.extensions.get(CALL_OPTIONS)
            if ext:
                project = ext.get("project") or project
                if call_tags := ext.get("tags"):
                    tags = normalize_tags({**dict(tags), **call_tags})
                model = ext.get("model")
            if raw_project is not None:
                try:
                    project = check_project(raw_project)
                except ConfigError as exc:
                    log.warning("ledger: x-ledger-project refused (%s); the call is recorded under %r",
                                exc, project or UNATTRIBUTED)
                    notes.append("x-ledger-project refused")
            if raw_tags is not None:
                try:
                    tags = normalize_tags({**dict(tags), **_parse_tags_header(raw_tags)})
                except ValueError:
                    log.warning("ledger: x-ledger-tags ignored: neither k=v pairs nor a JSON object")
                    notes.append("x-ledger-tags ignored")
            if project is None:
                log.warning("ledger: a call names no project (pass project=..., set LEDGER_PROJECT or send "
                            "x-ledger-project); recorded under %r", UNATTRIBUTED)
                project = UNATTRIBUTED
            facts = _request_facts(request)
            if model is None:
                model = facts.model
            attempt = Attempt(self.journal, target, project, tags, model, self.source, facts)
            attempt.owner = self
            attempt.note = "; ".join(notes) or None
        except Exception:
            log.exception("ledger: could not start recording a request; it goes unrecorded")
            return None
        try:
            attempt.refusal = self.journal.stops.refused(project, target.book, model)
        except Exception:
            log.exception("ledger: could not check the hard budget of project %r; the call goes ahead", project)
        return attempt

    def refuse(self, attempt: Attempt, request: HTTPRequest) -> HTTPResponse | None:
        """Answer a call whose project's hard budget is spent, without sending it: a 402 with a
        Cerebras-shaped error body, recorded as an ``error`` event that costs nothing. ``None``
        if the answer cannot be made (logged): the call then goes ahead, as if not stopped."""
        stop = attempt.refusal
        if stop is None:
            return None
        try:
            message = stop.message(attempt.requested_model)
            body = json.dumps({"message": message, "type": "budget_exceeded_error", "param": "model",
                               "code": REFUSAL_CODE}).encode()
            http = sys.modules[type(request).__module__.split(".", 1)[0]]  # httpx's or httpx2's
            response: HTTPResponse = http.Response(402, headers=[(b"content-type", b"application/json"),
                                                   (REFUSED_HEADER.encode(), b"hard-budget")],
                                     content=body, request=request)
        except Exception:
            log.exception("ledger: could not refuse a call of project %r; it goes ahead", stop.project)
            return None
        said = self.journal.stops.said
        if (stop.project, stop.period) not in said:
            said.add((stop.project, stop.period))
            log.warning("%s", message)
        attempt.http_status = 402
        attempt.error_type = "budget_exceeded_error"
        attempt.error_code = REFUSAL_CODE
        attempt.finish("error", "refused by the ledger: hard monthly budget spent")
        return response

    def abandon_open(self) -> None:
        """End this transport's attempts still open (their caller never finished nor closed them)."""
        for attempt in list(self.journal.open_attempts):
            if isinstance(attempt, Attempt) and attempt.owner is self:
                attempt.abandon("response abandoned: its client was closed before the body was read")

    def wrap(self, attempt: Attempt, response: HTTPResponse, *, is_async: bool) -> HTTPResponse:
        try:
            http = sys.modules[type(response).__module__.split(".", 1)[0]]  # httpx, or httpx2
            tap = _BodyTap(attempt, attempt.on_response(response), http)
            response.stream = _stream_class(type(response).__module__, is_async)(response.stream, tap)
            response.extensions[ATTEMPT] = attempt
        except Exception:
            log.exception("ledger: could not watch a response; recorded without its body")
            attempt.finish("ok" if response.status_code < 400 else "error", "response not readable by ledger")
        return response


@dataclass(frozen=True, slots=True)
class _RequestFacts:
    """What the ledger keeps of a request body: the model, whether it asked for a stream, and its
    ``service_tier``. Never the prompt."""

    model: str | None
    stream: bool
    service_tier: str | None


def _request_facts(request: Any) -> _RequestFacts:
    """The request's :class:`_RequestFacts`, found the way :func:`_requested_model` finds the
    model: a key met once (the usual case) is read where it stands; one met more than once (a
    tool schema with a property named ``stream``, say) sends a small body to the parser."""
    try:
        content = request.content
    except Exception:
        return _RequestFacts(None, False, None)
    model = _requested_model(content)
    stream_at, tier_at = content.find(b'"stream"'), content.find(b'"service_tier"')
    if stream_at < 0 and tier_at < 0:
        return _RequestFacts(model, False, None)
    again = ((stream_at >= 0 and content.find(b'"stream"', stream_at + 8) >= 0)
             or (tier_at >= 0 and content.find(b'"service_tier"', tier_at + 14) >= 0))
    if again and len(content) <= PARSE_LIMIT:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            tier = body.get("service_tier")
            ok = isinstance(tier, str) and _TIER_VALUE.fullmatch(tier) is not None
            return _RequestFacts(model, body.get("stream") is True, tier if ok else None)
    stream = tier = None
    if stream_at >= 0 and (found := _STREAM_KEY.match(content, stream_at)) is not None:
        stream = found.group(1) == b"true"
    if tier_at >= 0 and (found := _TIER_KEY.match(content, tier_at)) is not None:
        tier = found.group(1).decode("ascii")
    return _RequestFacts(model, bool(stream), tier)


def _requested_model(content: bytes) -> str | None:
    """The request body's ``model``. A body bigger than :data:`PARSE_LIMIT` (a long prompt) is
    scanned for its first ``"model": "…"`` key, so the call path never parses a prompt of
    megabytes; so is any body with ``"model"`` in it only once (the usual case, and the scan
    costs a few per cent of a parse). Others are parsed. (Inside a JSON string a quote is
    escaped, so the pattern only matches a key; in the SDKs' bodies the first such key is the
    top-level one. A body whose only ``"model"`` is nested, with none at the top, is a request
    the API refuses; its error event then names that value as the requested model. The same
    scan finds ``"stream": true`` and ``"service_tier"``.)"""
    try:
        big = len(content) > PARSE_LIMIT
        first = content.find(b'"model"')
        if first >= 0 and (big or content.find(b'"model"', first + 7) < 0):
            # Big, or only one "model" in it: the scan finds what a parse would, far cheaper.
            found = _MODEL_KEY.search(content, first)
            if found:
                value = found.group(1)
                return value[1:-1].decode() if _PLAIN_STRING.fullmatch(value) else json.loads(value)
        if big:
            return None
        body = json.loads(content)
    except Exception:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


PARSE_LIMIT = 64 * 1024
_MODEL_KEY = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')
_PLAIN_STRING = re.compile(rb'"[ -!#-\[\]-~]*"')  # printable ASCII, no escapes: its JSON value is itself
_STREAM_KEY = re.compile(rb'"stream"\s*:\s*(true|false)')
_TIER_KEY = re.compile(rb'"service_tier"\s*:\s*"([A-Za-z0-9_.-]{1,32})"')
_TIER_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class RecordingTransport(httpx.BaseTransport):
    """A sync transport that records every chat completion sent through ``inner``.

    Args:
        inner: the transport that does the I/O (default ``httpx.HTTPTransport()``).
        project: default project (else ``LEDGER_PROJECT``); ``x-ledger-project`` overrides.
        tags: default tags; ``x-ledger-tags`` (``k=v,k=v`` or a JSON object) adds to them.
        database_url / spool_dir: which ledger; default from the environment.
    """

    def __init__(self, inner: Any = None, *, project: str | None = None, tags: Mapping[str, Any] | None = None,
                 database_url: str | None = None, spool_dir: str | None = None,
                 journal: Journal | None = None, source: str = "transport", flush_timeout: float = 5.0) -> None:
        self.inner: SyncTransport = inner if inner is not None else httpx.HTTPTransport()
        self.recorder = _Recorder(project, tags, database_url, spool_dir, journal, source)
        self.flush_timeout = flush_timeout

    @property
    def journal(self) -> Journal:
        return self.recorder.journal

    # The request is httpx's or httpx2's (a Protocol covers both); the response is whatever the
    # inner transport made, httpx's or httpx2's, so it is typed by what both offer, not as httpx's.
    def handle_request(self, request: HTTPRequest) -> HTTPResponse:  # type: ignore[override]
        attempt = self.recorder.begin(request)
        if attempt is None:  # not a billed endpoint: passed through untouched
            passed: HTTPResponse = self.inner.handle_request(request)
            return passed
        if attempt.refusal is not None and (refused := self.recorder.refuse(attempt, request)) is not None:
            return refused
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            attempt.failed(exc)
            raise
        return self.recorder.wrap(attempt, response, is_async=False)

    def close(self) -> None:
        try:
            self.recorder.abandon_open()
            self.inner.close()
        finally:
            self.recorder.journal.flush(self.flush_timeout)


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`RecordingTransport` (same arguments)."""

    def __init__(self, inner: Any = None, *, project: str | None = None, tags: Mapping[str, Any] | None = None,
                 database_url: str | None = None, spool_dir: str | None = None,
                 journal: Journal | None = None, source: str = "transport", flush_timeout: float = 5.0) -> None:
        self.inner: AsyncTransport = inner if inner is not None else httpx.AsyncHTTPTransport()
        self.recorder = _Recorder(project, tags, database_url, spool_dir, journal, source)
        self.flush_timeout = flush_timeout

    @property
    def journal(self) -> Journal:
        return self.recorder.journal

    async def handle_async_request(self, request: HTTPRequest) -> HTTPResponse:  # type: ignore[override]
        attempt = self.recorder.begin(request)
        if attempt is None:  # not a billed endpoint: passed through untouched
            passed: HTTPResponse = await self.inner.handle_async_request(request)
            return passed
        if attempt.refusal is not None and (refused := self.recorder.refuse(attempt, request)) is not None:
            return refused
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            attempt.failed(exc)
            raise
        return self.recorder.wrap(attempt, response, is_async=True)

    async def aclose(self) -> None:
        try:
            self.recorder.abandon_open()
            await self.inner.aclose()
        finally:
            # flush() blocks briefly; run it off the event loop
            import asyncio

            await asyncio.to_thread(self.recorder.journal.flush, self.flush_timeout)


_C = TypeVar("_C")


def instrument(http_client: _C, *, project: str | None = None, tags: Mapping[str, Any] | None = None,
               database_url: str | None = None, spool_dir: str | None = None) -> _C:
    """Make ``http_client`` record every chat completion it sends, and return it.

    Works on ``httpx.Client`` / ``httpx.AsyncClient`` and on their ``httpx2`` twins (which
    ``openai`` >= 3 is built on). Its transport, and any mounted transports, are wrapped in
    place, so pass the result as ``http_client=`` to ``cerebras.cloud.sdk.Cerebras`` or
    ``openai.OpenAI`` (or their async clients)::

        client = Cerebras(http_client=ledger.instrument(httpx.Client(), project="search"))
    """
    is_async = hasattr(http_client, "aclose") and not hasattr(http_client, "close")
    if not hasattr(http_client, "_transport") or not hasattr(http_client, "_mounts"):
        raise TypeError(f"instrument() takes an httpx or httpx2 client, not {type(http_client).__name__}")
    client: Any = http_client
    if isinstance(client._transport, (RecordingTransport, AsyncRecordingTransport)):
        return http_client  # already instrumented
    cls: type = AsyncRecordingTransport if is_async else RecordingTransport
    first = cls(client._transport, project=project, tags=tags, database_url=database_url, spool_dir=spool_dir)
    client._transport = first
    mounts = client._mounts
    for pattern, transport in list(mounts.items()):
        if transport is not None:
            mounts[pattern] = cls(transport, journal=first.journal, project=project, tags=tags)
    return http_client
