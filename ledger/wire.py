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

Pure functions over bytes and mappings: no I/O, no clock, no imports from the package.
Message text is never returned, because an error message can echo a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_TOKENS",
    "SSEDecoder",
    "SSEEvent",
    "TimeInfo",
    "Usage",
    "WireError",
    "error_from",
    "time_info_from",
    "usage_from",
]

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
    """

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int


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
    cached = _detail(raw.get("prompt_tokens_details"), "cached_tokens")
    reasoning = _detail(raw.get("completion_tokens_details"), "reasoning_tokens")
    if cached is None or cached > prompt or reasoning is None or reasoning > completion:
        return None, "usage details are invalid"
    return Usage(prompt, cached, completion, reasoning, total), None


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
    if kind is not float and kind is not int and (isinstance(value, bool) or not isinstance(value, (int, float))):
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
    the body right after the last ``data:`` line.
    """

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if chunk.endswith(b"\n\n") and self.at_boundary() and b"\r" not in chunk:
            return self._whole_events(chunk)
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
        return out

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
        if self._buf:
            tail, self._buf = self._buf, b""
            self._line(tail.rstrip(b"\r\n"), out)
        self._line(b"", out)
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
