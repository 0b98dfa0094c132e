"""Wire: read what Cerebras (or Lava in front of it) sends back, and nothing more.

This module owns the upstream wire format (see ``shared/wire`` facts in the README):

* :class:`SSEDecoder` turns arbitrary byte chunks of a ``text/event-stream`` into events,
  whatever the chunk boundaries (a ``\\r\\n`` may be split across two chunks).
* :func:`usage_from` reads ``usage`` defensively: absent ``*_details`` objects mean zero,
  but negative, non-integer, inconsistent or absurd counts make the usage *unknown*
  (``None`` plus a reason) rather than invented.
* :func:`time_info_from` reads Cerebras's ``time_info`` (seconds) into whole microseconds.
* :func:`error_from` reads the flat error body (``{"message","type","param","code"}``), the
  403 ``{"detail": ...}`` body, and the in-stream ``{"error": {...}, "status_code": N}`` event.

Pure functions over bytes and mappings: no I/O, no clock. The records it fills (:class:`~ledger.events.Usage`,
:class:`~ledger.events.TimeInfo`) are the events module's.
Message text is never returned, because an error message can echo a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.events import MAX_TOKENS, TimeInfo, Usage

__all__ = [
    "SSEDecoder",
    "SSEEvent",
    "Skeleton",
    "WireError",
    "error_from",
    "time_info_from",
    "usage_from",
]


@dataclass(frozen=True, slots=True)
class WireError:
    """What an upstream error says about itself: its type and code, never its message.

    Attributes:
        status: the HTTP status (or the ``status_code`` of an in-stream error event).
        type: e.g. ``invalid_request_error``; ``None`` when the body does not say.
        code: e.g. ``wrong_api_key``; ``None`` when the body does not say.
    """

    status: int | None
    type: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: its ``event:`` name (usually ``None``) and its joined ``data:``."""

    event: str | None
    data: str


def _count(value: Any) -> int | None:
    """A token count, or ``None`` when the value is not a plausible count."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_from(body: Mapping[str, Any]) -> tuple[Usage | None, str | None]:
    """Read ``body["usage"]``: ``(usage, None)``, or ``(None, reason)`` when unknown."""
    raw = body.get("usage")
    if raw is None:
        return None, "no usage in response"
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict from json.loads, nearly always
        return None, "usage is not an object"
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        return None, "usage has missing, negative or absurd token counts"
    total_raw = raw.get("total_tokens", prompt + completion)
    total = _count(total_raw)
    if total is None or total != prompt + completion:
        return None, "usage total_tokens disagrees with prompt + completion"
    prompt_details, completion_details = (
        raw.get("prompt_tokens_details"),
        raw.get("completion_tokens_details"),
    )
    cached = _detail(prompt_details, "cached_tokens")
    reasoning = _detail(completion_details, "reasoning_tokens")
    if cached is None or cached > prompt or reasoning is None or reasoning > completion:
        return None, "usage details are invalid"
    if prompt_details is None and completion_details is None:
        return Usage(prompt, cached, completion, reasoning, total), None
    # Kept for analysis, never priced apart: an implausible one is dropped, not the usage.
    accepted = _detail(completion_details, "accepted_prediction_tokens")
    rejected = _detail(completion_details, "rejected_prediction_tokens")
    images = _detail(prompt_details, "image_tokens")
    return Usage(
        prompt,
        cached,
        completion,
        reasoning,
        total,
        accepted if accepted is not None and accepted <= completion else 0,
        rejected if rejected is not None and rejected <= completion else 0,
        images if images is not None and images <= prompt else 0,
    ), None


def _detail(details: Any, key: str) -> int | None:
    """A count inside a ``*_details`` object; an absent object or key means zero."""
    if details is None:
        return 0
    if type(details) is not dict and not isinstance(details, Mapping):
        return None
    value = details.get(key)
    return 0 if value is None else _count(value)


def _micros(value: Any) -> int | None:
    kind = type(value)
    if (
        kind is not float
        and kind is not int
        and (isinstance(value, bool) or not isinstance(value, (int, float)))
    ):
        return None
    if not 0 <= value < 86_400:  # a NaN fails this test too
        return None
    return int(round(value * 1_000_000))


def time_info_from(body: Mapping[str, Any]) -> TimeInfo | None:
    """Read ``body["time_info"]`` (seconds) into microseconds; ``None`` when absent."""
    raw = body.get("time_info")
    if type(raw) is not dict and not isinstance(raw, Mapping):
        return None
    return TimeInfo(
        _micros(raw.get("queue_time")),
        _micros(raw.get("prompt_time")),
        _micros(raw.get("completion_time")),
        _micros(raw.get("total_time")),
    )


def _text(value: Any, limit: int = 100) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def error_from(status: int | None, body: Any) -> WireError:
    """Read an error body: flat, ``{"detail": ...}``, or wrapped in ``{"error": {...}}``."""
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            code = body.get("status_code")
            if type(code) is int and 100 <= code <= 599:  # anything else is not an HTTP status
                status = code
            body = inner
        if "detail" in body and "type" not in body:
            return WireError(status, "authentication_error" if status == 403 else None, None)
        return WireError(status, _text(body.get("type")), _text(body.get("code")))
    return WireError(status, None, None)


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder (WHATWG rules for ``data:`` and ``event:``).

    Feed it byte chunks of any size; it returns each event once its blank line arrives.
    :meth:`close` returns an event left without its final blank line, since some servers end
    the body right after the last ``data:`` line. Linear in the bytes fed, however long a line
    is: chunks of a line still waiting for its end are kept as they are and joined once.
    """

    __slots__ = ("_buf", "_data", "_event", "_more", "_held")

    def __init__(self) -> None:
        self._buf = b""
        self._more: list[bytes] = []  # later pieces of the unfinished line in _buf
        self._data: list[bytes] = []
        self._event: str | None = None
        self._held = 0  # bytes held back: the unfinished line and this event's data lines

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if chunk.endswith(b"\n\n") and self.at_boundary() and b"\r" not in chunk:
            return self._whole_events(chunk)
        if self._buf and self._buf[-1] != 0x0D and b"\n" not in chunk and b"\r" not in chunk:
            self._more.append(chunk)  # the line goes on: keep the piece, join once it ends
            self._held += len(chunk)
            return []
        if self._more:
            self._more.append(chunk)
            buf = self._buf + b"".join(self._more)
            self._more = []
        else:
            buf = self._buf + chunk if self._buf else chunk
        out: list[SSEEvent] = []
        lines = buf.splitlines(keepends=True)
        self._buf = b""
        last = len(lines) - 1
        for i, line in enumerate(lines):
            # A line ending in a bare CR at the end of a chunk may be half of CRLF: wait.
            if i == last and (line.endswith(b"\r") or not line.endswith((b"\n", b"\r"))):
                self._buf = line
                break
            self._line(line.rstrip(b"\r\n"), out)
        self._held = len(self._buf) + sum(len(d) for d in self._data)
        return out

    def held(self) -> int:
        """How many bytes are held back waiting for the end of their line or event."""
        return self._held

    def take_held(self) -> bytes:
        """Hand back what is held (the current event so far, as stream text) and forget it."""
        parts = [] if self._event is None else [b"event: " + self._event.encode("utf-8", "replace") + b"\n"]
        parts.extend(b"data: " + d + b"\n" for d in self._data)
        parts.append(self._buf)
        parts.extend(self._more)
        self._buf, self._more, self._data, self._event, self._held = b"", [], [], None, 0
        return b"".join(parts)

    def _whole_events(self, chunk: bytes) -> list[SSEEvent]:
        """The usual chunk: LF only, starting and ending on an event boundary (servers flush
        event by event). A block of one ``data: `` line is an event at once; any other block
        goes line by line as usual."""
        out: list[SSEEvent] = []
        for block in chunk[:-2].split(b"\n\n"):
            if block.startswith(b"data: ") and b"\n" not in block:
                out.append(SSEEvent(None, block[6:].decode("utf-8", "replace")))
                continue
            for line in block.split(b"\n"):
                self._line(line, out)
            self._line(b"", out)
        return out

    def at_boundary(self) -> bool:
        """Whether everything fed so far ended with a complete event (nothing held back)."""
        return not self._buf and not self._data and self._event is None

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._buf or self._more:
            tail = self._buf + b"".join(self._more)
            self._buf, self._more = b"", []
            self._line(tail.rstrip(b"\r\n"), out)
        self._line(b"", out)
        self._held = 0
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                out.append(SSEEvent(self._event, data))
            self._data = []
            self._event = None
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


class Skeleton:
    """JSON text with its long strings emptied, streamed: what a huge body says about itself.

    Feed it the bytes of JSON documents (or of an event stream of them) in chunks of any size;
    :meth:`take` returns them with every string value longer than ``keep`` bytes replaced by
    ``""``, everything else byte for byte. Huge bodies are huge because of content (a completion
    of megabytes in one string); ids, model, ``usage``, ``time_info`` and ``finish_reason`` are
    small, so the skeleton parses in microseconds and says all the ledger needs. Strings are
    found with ``bytes.find`` (a ``memchr``), so a 100 MB body costs about one pass over its
    bytes and ``keep`` bytes of memory, not a parse. An escaped quote ends no string, even when
    its backslashes arrived in an earlier chunk.
    """

    __slots__ = ("_cur", "_in", "_len", "_out", "_trail", "keep")

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._out: list[bytes] = []
        self._in = False  # inside a string
        self._cur: list[bytes] = []  # the current string's bytes, while it is short
        self._len = 0  # the current string's length so far
        self._trail = 0  # backslashes that ended the previous chunk, inside the current string

    @property
    def in_string(self) -> bool:
        return self._in

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if not self._in:
                q = data.find(b'"', pos)
                if q < 0:
                    self._out.append(data[pos:] if pos else data)
                    return
                self._out.append(data[pos : q + 1])
                self._in, self._cur, self._len = True, [], 0
                pos = q + 1
                continue
            end = self._closing_quote(data, pos)
            piece = data[pos:] if end < 0 else data[pos:end]
            self._len += len(piece)
            if self._len <= self.keep:
                self._cur.append(piece)
            elif self._cur:
                self._cur = []
            if end < 0:
                return
            if self._len <= self.keep:
                self._out.extend(self._cur)
            self._out.append(b'"')
            self._in, self._cur = False, []
            pos = end + 1

    def _closing_quote(self, data: bytes, start: int) -> int:
        """Where the current string ends in ``data`` (from ``start``), or -1 (it goes on)."""
        pos = start
        while True:
            q = data.find(b'"', pos)
            if q < 0:
                i = len(data)
                while i > start and data[i - 1] == 0x5C:
                    i -= 1
                run = len(data) - i
                self._trail = self._trail + run if i == start else run
                return -1
            i = q
            while i > start and data[i - 1] == 0x5C:
                i -= 1
            run = q - i + (self._trail if i == start else 0)
            if run % 2 == 0:
                self._trail = 0
                return q
            pos = q + 1

    def take(self) -> bytes:
        """The skeleton so far (and forget it); a string still open stays open."""
        out, self._out = b"".join(self._out), []
        return out
