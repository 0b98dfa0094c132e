"""Tap: the ledger's copy of a response body, read as it passes to the caller untouched.

:class:`BodyTap` undoes the body's Content-Encoding with the decoder the caller's own httpx (or
httpx2) picks, so it reads what the SDK reads; reads a JSON body whole, or an event stream
(:class:`~ledger.call.wire.SSEDecoder`) event by event, then skimmed (only events that may hold
usage, an error, a finish reason or ``[DONE]`` are decoded); and reads an event bigger than
:data:`BIG_EVENT` (a JSON body bigger than :data:`BIG_BODY`) through a
:class:`~ledger.call.wire.Skeleton`. What it reads goes to its :class:`~ledger.call.attempt.Attempt`,
which it ends exactly once: the body arrived whole (:meth:`BodyTap.end`) or stopped early
(:meth:`BodyTap.cut`). :func:`stream_class` is the body wrapper (``SyncByteStream`` /
``AsyncByteStream`` of the response's own package) that feeds the tap.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ledger.call.wire import Skeleton, SSEDecoder

if TYPE_CHECKING:
    from ledger.call.attempt import Attempt

__all__ = ["BodyTap", "stream_class"]

log = logging.getLogger("ledger")

# A stream event or a JSON body bigger than this is read through a :class:`~ledger.call.wire.Skeleton`
# (its long strings emptied) rather than held and parsed whole: the tap stays linear, cheap and
# small on a body of any size. (Below it, a parse in C beats the skeleton's Python loop on bodies
# of many small strings, such as a long list of tool calls.)
BIG_EVENT = 1024 * 1024
BIG_BODY = 16 * 1024 * 1024


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


class BodyTap:
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
                self.skim = (
                    self.can_skim
                    and a.ttft_us is not None
                    and a.upstream_id is not None
                    and self.sse.at_boundary()
                )
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
        def __init__(self, inner: Any, tap: BodyTap) -> None:
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
        def __init__(self, inner: Any, tap: BodyTap) -> None:
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
def stream_class(module: str, is_async: bool) -> type:
    """The body wrapper for responses made in ``module`` (httpx's, or httpx2's)."""
    mod = sys.modules[module.split(".", 1)[0]]
    return _async_stream_class(mod) if is_async else _sync_stream_class(mod)
