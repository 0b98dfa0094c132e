"""Attempt: one attempt at a billed endpoint, from its request to the one event it becomes.

An :class:`Attempt` gathers an attempt's facts as they arrive: the request's (project, tags,
route, book, endpoint, requested model, stream, service tier), the response's status and
headers (:meth:`Attempt.on_response`: Lava's request id, the upstream id, rate limits), then
what its body says (:meth:`Attempt.read_body` for a JSON body, :meth:`Attempt.read_event` per
stream event: served model, usage, time info, finish reason, errors in SDK terms). Its
:meth:`Attempt.finish` turns them into exactly one :class:`~ledger.events.CallEvent` (``ok``,
``error`` or ``incomplete``) handed to the journal; an attempt its caller left open is ended by
:meth:`Attempt.abandon`. Accounting never breaks a call: a failure to record is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ledger.call.stops import Stop
from ledger.call.wire import error_from, time_info_from, usage_from
from ledger.events import CallEvent, Status, TimeInfo, Usage, new_event_id

if TYPE_CHECKING:
    from ledger.call.route import RequestFacts, Target
    from ledger.call.tap import BodyTap
    from ledger.journal import Journal

__all__ = ["Attempt"]

log = logging.getLogger("ledger")


def _loads(body: bytes) -> Any:
    """``json.loads`` of a body that is UTF-8 (as RFC 8259 requires on the wire) without the
    encoding sniffing ``json.loads(bytes)`` does first; any other body goes the long way."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return json.loads(body)
    return json.loads(text)


def _header_count(value: bytes) -> int | None:
    """A rate-limit header's whole, non-negative count (ASCII digits only), else ``None``."""
    text = value.strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


class Attempt:
    """One attempt's facts as they arrive; :meth:`finish` turns them into exactly one event."""

    def __init__(
        self,
        journal: Journal,
        target: Target,
        project: str,
        tags: tuple[tuple[str, str], ...],
        model: str | None,
        source: str,
        facts: RequestFacts | None = None,
    ) -> None:
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
        self.tap: BodyTap | None = None  # the body being read, once there is one
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
        elif not (
            '"usage"' in data or '"error"' in data or '"finish_reason"' in data or self.upstream_id is None
        ):
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
