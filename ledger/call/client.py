"""Client: ``CerebrasClient`` and ``AsyncCerebrasClient``, thin wrappers with the SDK's shape.

``client.chat.completions.create(model=..., messages=..., stream=False, ...)`` sends one chat
completion (direct, or through Lava's forward proxy when a forward token is set) and returns
the decoded JSON body, or, with ``stream=True``, an iterator of chunk mappings delivered as they
arrive. Recording is not done here: the client's httpx transport is a
:class:`~ledger.call.transport.RecordingTransport`, the same one :func:`ledger.instrument` puts under
the official SDKs, so each attempt (retries included) becomes exactly one event.

Like the SDK, the client retries connection errors, timeouts, 408, 409, 429 and 5xx up to
``max_retries`` times (default 2) with exponential back-off, honouring ``retry-after``
(:mod:`ledger.call.retry`); a stream is a :class:`~ledger.call.streams.Stream` (or
:class:`~ledger.call.streams.AsyncStream`). Here: the sync client with its ``chat.completions``
and ``completions`` namespaces; the async client is :mod:`ledger.call.aclient`, and the settings
(route, credentials, the request of a call) both build on are :mod:`ledger.call.settings`.

The client sends through its transport directly (``transport.handle_request(request)``, httpx's
public transport API), not through an ``httpx.Client``: it needs none of what the Client layer
adds per request (merging default URL, headers and cookies, auth and redirect flows, event hooks,
a cookie jar), and that layer costs about 0.15–0.25 ms a call, more than the recording does (see
the README's benchmarks). Consequences, by decision: no cookies are kept between calls (the API
sets none), redirects are not followed (as with httpx's own default), and proxies come only from
what you mount yourself (as before: an ``httpx.Client`` given a transport ignores
``HTTPS_PROXY``); to go through a proxy, instrument your own ``httpx.Client`` with
:func:`ledger.instrument` and use the official SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, overload

import httpx

from ledger.call.retry import send_sync
from ledger.call.settings import DEFAULT_TIMEOUT, Settings, attach, timeout_dict
from ledger.call.streams import Stream
from ledger.call.transport import RecordingTransport

__all__ = ["CerebrasClient"]


class _Completions:
    def __init__(self, client: CerebrasClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Any,
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Any,
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> Stream: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Any,
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any] | Stream: ...

    def create(
        self,
        *,
        model: str,
        messages: Any,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any] | Stream:
        """Send a chat completion; a dict, or a :class:`Stream` of chunk dicts when ``stream=True``."""
        c = self._client
        request = c._settings.build(
            model,
            messages,
            stream,
            extra_headers,
            c._timeout if timeout is None else timeout_dict(timeout),
            tags,
            project,
            params,
        )
        return send_sync(c._send, c.max_retries, request, stream)


class _TextCompletions:
    """``client.completions``: the legacy text endpoint (``POST /v1/completions``), billed like chat."""

    def __init__(self, client: CerebrasClient) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: Any,
        stream: Literal[False] = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: Any,
        stream: Literal[True],
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> Stream: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: Any,
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any] | Stream: ...

    def create(
        self,
        *,
        model: str,
        prompt: Any,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Any = None,
        tags: Mapping[str, Any] | None = None,
        project: str | None = None,
        **params: Any,
    ) -> dict[str, Any] | Stream:
        """Send a text completion; a dict, or a :class:`Stream` of chunk dicts when ``stream=True``."""
        c = self._client
        request = c._settings.build(
            model,
            prompt,
            stream,
            extra_headers,
            c._timeout if timeout is None else timeout_dict(timeout),
            tags,
            project,
            params,
            path="completions",
            input_key="prompt",
        )
        return send_sync(c._send, c.max_retries, request, stream)


class _Chat:
    def __init__(self, client: CerebrasClient) -> None:
        self.completions = _Completions(client)


class CerebrasClient:
    """A Cerebras chat client that records every call in the ledger.

    >>> with CerebrasClient(project="search") as client:          # doctest: +SKIP
    ...     reply = client.chat.completions.create(model="gpt-oss-120b",
    ...                                            messages=[{"role": "user", "content": "Hi"}])

    Args:
        project: the project calls are billed to (else ``LEDGER_PROJECT``).
        api_key: Cerebras key (else ``CEREBRAS_API_KEY``). Never stored.
        base_url: Cerebras base URL without ``/v1`` (else ``CEREBRAS_BASE_URL``).
        lava_forward_token: go through Lava's forward proxy (else ``LAVA_FORWARD_TOKEN``).
        lava_base_url: else ``LAVA_BASE_URL``.
        tags: default tags for every call; ``create(tags=...)`` adds to them.
        database_url / spool_dir: which ledger (else the environment, else the embedded default).
        timeout: an httpx timeout; max_retries: retries per call (default 2, as the SDK).
        flush_timeout: how long ``close()`` waits for the database before leaving events in the spool.
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        lava_forward_token: str | None = None,
        lava_base_url: str | None = None,
        tags: Mapping[str, Any] | None = None,
        database_url: str | None = None,
        spool_dir: str | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        flush_timeout: float = 5.0,
    ) -> None:
        self._settings = Settings(project, api_key, base_url, lava_forward_token, lava_base_url)
        self.transport = RecordingTransport(
            httpx.HTTPTransport(),
            project=self._settings.project,
            tags=tags,
            database_url=database_url,
            spool_dir=spool_dir,
            source="wrapper",
            flush_timeout=flush_timeout,
        )
        self._timeout = timeout_dict(timeout)
        self._closed = False
        self.max_retries = max_retries
        self.chat = _Chat(self)
        self.completions = _TextCompletions(self)

    @property
    def project(self) -> str:
        return self._settings.project

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every recorded event is in the database (they are safe in the spool anyway)."""
        return self.transport.journal.flush(timeout)

    def _send(self, request: httpx.Request) -> httpx.Response:
        """One attempt, straight through the transport; the response body is not read yet."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        try:
            # the client's own transport wraps an httpx.HTTPTransport: its responses are httpx's
            response = cast(httpx.Response, self.transport.handle_request(request))
        except httpx.RequestError as exc:
            attach(exc, request)
            raise
        response.request = request
        return response

    def close(self) -> None:
        """Close the connections and write what was recorded (see ``flush_timeout``)."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def __enter__(self) -> CerebrasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
