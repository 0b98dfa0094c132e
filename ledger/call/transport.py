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

Here: the transports, their shared request-side work (``_Recorder``: project and tags, the
hard-budget refusal, wrapping the response), :func:`instrument`, and the typed channel between
the wrapper client and its transport (:class:`CallOptions`, :data:`CALL_OPTIONS`,
:data:`ATTEMPT`) with the request/response/transport Protocols. What a request says is
:mod:`ledger.call.route`'s, the body tap :mod:`ledger.call.tap`'s, one attempt's facts and its
event :mod:`ledger.call.attempt`'s.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import httpx

from ledger.call import route
from ledger.call.attempt import Attempt
from ledger.call.tap import BodyTap, stream_class
from ledger.config import ConfigError, check_project
from ledger.config import database_url as resolve_url
from ledger.events import normalize_tags

if TYPE_CHECKING:
    from ledger.journal import Journal

__all__ = [
    "ATTEMPT",
    "CALL_OPTIONS",
    "AsyncRecordingTransport",
    "CallOptions",
    "HTTPRequest",
    "HTTPResponse",
    "RecordingTransport",
    "instrument",
]

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


REFUSED_HEADER = "x-ledger-refused"  # on the 402 the ledger answers for a spent hard budget
REFUSAL_CODE = "hard_budget_spent"
# The project of a call that names none, or whose x-ledger-project was refused: its cost is
# kept (and shows in reports under this name) rather than lost.
UNATTRIBUTED = "(unattributed)"


class _Recorder:
    """Settings and request-side work shared by the sync and async transports."""

    def __init__(
        self,
        project: str | None,
        tags: Mapping[str, Any] | None,
        database_url: str | None,
        spool_dir: str | None,
        journal: Journal | None,
        source: str,
    ) -> None:
        default = project or os.environ.get("LEDGER_PROJECT")
        self.project = check_project(default) if default else None
        self.tags = normalize_tags(tags)
        if not journal:
            # The call stage's one hand-off to the journal (a later stage): imported here, when a
            # transport is made without one, so importing the call path loads no journal code.
            from ledger.journal import journal_for

            journal = journal_for(resolve_url(database_url), spool_dir)
        self.journal = journal
        self.source = source

    def begin(self, request: HTTPRequest) -> Attempt | None:
        try:
            headers = request.headers
            # Ours, so removed first and always: they never leave the process, chat or not.
            raw_project = raw_tags = None
            if b"x-ledger-" in b"\n".join([k for k, _ in headers.raw]).lower():  # one cheap pass
                raw_project = headers.pop(route.PROJECT_HEADER, None)
                raw_tags = headers.pop(route.TAGS_HEADER, None)
            target = route.target(request)
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
                    log.warning(
                        "ledger: x-ledger-project refused (%s); the call is recorded under %r",
                        exc,
                        project or UNATTRIBUTED,
                    )
                    notes.append("x-ledger-project refused")
            if raw_tags is not None:
                try:
                    tags = normalize_tags({**dict(tags), **route.parse_tags_header(raw_tags)})
                except ValueError:
                    log.warning("ledger: x-ledger-tags ignored: neither k=v pairs nor a JSON object")
                    notes.append("x-ledger-tags ignored")
            if project is None:
                log.warning(
                    "ledger: a call names no project (pass project=..., set LEDGER_PROJECT or send "
                    "x-ledger-project); recorded under %r",
                    UNATTRIBUTED,
                )
                project = UNATTRIBUTED
            facts = route.request_facts(request)
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
            log.exception(
                "ledger: could not check the hard budget of project %r; the call goes ahead", project
            )
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
            body = json.dumps(
                {"message": message, "type": "budget_exceeded_error", "param": "model", "code": REFUSAL_CODE}
            ).encode()
            http = sys.modules[type(request).__module__.split(".", 1)[0]]  # httpx's or httpx2's
            response: HTTPResponse = http.Response(
                402,
                headers=[(b"content-type", b"application/json"), (REFUSED_HEADER.encode(), b"hard-budget")],
                content=body,
                request=request,
            )
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
            tap = BodyTap(attempt, attempt.on_response(response), http)
            response.stream = stream_class(type(response).__module__, is_async)(response.stream, tap)
            response.extensions[ATTEMPT] = attempt
        except Exception:
            log.exception("ledger: could not watch a response; recorded without its body")
            attempt.finish("ok" if response.status_code < 400 else "error", "response not readable by ledger")
        return response


class RecordingTransport(httpx.BaseTransport):
    """A sync transport that records every chat completion sent through ``inner``.

    Args:
        inner: the transport that does the I/O (default ``httpx.HTTPTransport()``).
        project: default project (else ``LEDGER_PROJECT``); ``x-ledger-project`` overrides.
        tags: default tags; ``x-ledger-tags`` (``k=v,k=v`` or a JSON object) adds to them.
        database_url / spool_dir: which ledger; default from the environment.
    """

    def __init__(
        self,
        inner: Any = None,
        *,
        project: str | None = None,
        tags: Mapping[str, Any] | None = None,
        database_url: str | None = None,
        spool_dir: str | None = None,
        journal: Journal | None = None,
        source: str = "transport",
        flush_timeout: float = 5.0,
    ) -> None:
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

    def __init__(
        self,
        inner: Any = None,
        *,
        project: str | None = None,
        tags: Mapping[str, Any] | None = None,
        database_url: str | None = None,
        spool_dir: str | None = None,
        journal: Journal | None = None,
        source: str = "transport",
        flush_timeout: float = 5.0,
    ) -> None:
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


def instrument(
    http_client: _C,
    *,
    project: str | None = None,
    tags: Mapping[str, Any] | None = None,
    database_url: str | None = None,
    spool_dir: str | None = None,
) -> _C:
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
