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
:class:`~ledger.call.streams.AsyncStream`). Here: the settings (route, credentials, the request of
a call) and the two clients with their ``chat.completions`` and ``completions`` namespaces.

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

import json
import os
from collections.abc import Mapping
from typing import Any, Literal, cast, overload
from urllib.parse import quote

import httpx

from ledger._version import __version__
from ledger.call.retry import send_async, send_sync
from ledger.call.streams import AsyncStream, Stream
from ledger.call.transport import CALL_OPTIONS, AsyncRecordingTransport, CallOptions, RecordingTransport
from ledger.config import ConfigError, check_project

__all__ = ["AsyncCerebrasClient", "CerebrasClient"]

DEFAULT_BASE_URL = "https://api.cerebras.ai"
DEFAULT_LAVA_BASE_URL = "https://api.lava.so"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class _Settings:
    """Route, credentials and defaults, resolved once: arguments first, then the environment."""

    def __init__(
        self,
        project: str | None,
        api_key: str | None,
        base_url: str | None,
        lava_forward_token: str | None,
        lava_base_url: str | None,
    ) -> None:
        env = os.environ
        self.project = check_project(project or env.get("LEDGER_PROJECT"))
        self.base_url = (base_url or env.get("CEREBRAS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.forward_token = lava_forward_token or env.get("LAVA_FORWARD_TOKEN") or None
        self.lava_base_url = (lava_base_url or env.get("LAVA_BASE_URL") or DEFAULT_LAVA_BASE_URL).rstrip("/")
        self.api_key = api_key or env.get("CEREBRAS_API_KEY") or None
        if self.forward_token is None and self.api_key is None:
            raise ConfigError(
                "no credentials: pass api_key=... or set CEREBRAS_API_KEY "
                "(or LAVA_FORWARD_TOKEN to go through Lava)"
            )
        secret = self.forward_token or self.api_key or ""
        # one URL per endpoint the client offers (see ledger.events.ENDPOINT_PATHS)
        self.urls = {path: httpx.URL(self._url(path)) for path in ("chat/completions", "completions")}
        self.url = str(self.urls["chat/completions"])
        self.parsed_url = self.urls["chat/completions"]
        self.headers = {
            "authorization": f"Bearer {secret}",
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "user-agent": f"cerebras-ledger/{__version__}",
        }

    def _url(self, path: str) -> str:
        target = f"{self.base_url}/v1/{path}"
        if self.forward_token:
            return f"{self.lava_base_url}/v1/forward?u={quote(target, safe='')}"
        return target

    @property
    def route(self) -> str:
        return "lava" if self.forward_token else "cerebras"

    def build(
        self,
        model: str,
        messages: Any,
        stream: bool,
        extra_headers: Mapping[str, str] | None,
        timeout: dict[str, float | None],
        tags: Mapping[str, Any] | None,
        project: str | None,
        params: dict[str, Any],
        *,
        path: str = "chat/completions",
        input_key: str = "messages",
    ) -> httpx.Request:
        """The request of one call (sent as is by every attempt of it): a chat completion, or
        with ``path="completions", input_key="prompt"`` a legacy text completion."""
        body: dict[str, Any] = {"model": model, input_key: messages, **params}
        if stream:
            body["stream"] = True
        headers = dict(self.headers)
        if stream:
            headers["accept"] = "text/event-stream"
        if extra_headers:
            headers.update(extra_headers)
        options: CallOptions = {
            "project": check_project(project) if project else None,
            "tags": tags,
            "model": model,
        }
        ext = {CALL_OPTIONS: options, "timeout": timeout}
        return httpx.Request(
            "POST", self.urls[path], content=json.dumps(body).encode(), headers=headers, extensions=ext
        )


def _attach(exc: httpx.RequestError, request: httpx.Request) -> None:
    """Give a transport error its request, as ``httpx.Client`` does (callers read ``exc.request``)."""
    try:
        exc.request  # noqa: B018 - the property raises when unset
    except RuntimeError:
        exc.request = request


def _timeout(value: Any) -> dict[str, float | None]:
    """A timeout (seconds, an ``httpx.Timeout`` or ``None`` for none) as the transport takes it."""
    return httpx.Timeout(value).as_dict()


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
            c._timeout if timeout is None else _timeout(timeout),
            tags,
            project,
            params,
        )
        return send_sync(c, request, stream)


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
            c._timeout if timeout is None else _timeout(timeout),
            tags,
            project,
            params,
            path="completions",
            input_key="prompt",
        )
        return send_sync(c, request, stream)


class _Chat:
    def __init__(self, client: CerebrasClient) -> None:
        self.completions = _Completions(client)


class _AsyncChat:
    def __init__(self, client: AsyncCerebrasClient) -> None:
        self.completions = _AsyncCompletions(client)


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
        self._settings = _Settings(project, api_key, base_url, lava_forward_token, lava_base_url)
        self.transport = RecordingTransport(
            httpx.HTTPTransport(),
            project=self._settings.project,
            tags=tags,
            database_url=database_url,
            spool_dir=spool_dir,
            source="wrapper",
            flush_timeout=flush_timeout,
        )
        self._timeout = _timeout(timeout)
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
            _attach(exc, request)
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


class _AsyncCompletions:
    def __init__(self, client: AsyncCerebrasClient) -> None:
        self._client = client

    @overload
    async def create(
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
    async def create(
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
    ) -> AsyncStream: ...

    @overload
    async def create(
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
    ) -> dict[str, Any] | AsyncStream: ...

    async def create(
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
    ) -> dict[str, Any] | AsyncStream:
        """Send a chat completion; a dict, or an :class:`AsyncStream` when ``stream=True``."""
        c = self._client
        request = c._settings.build(
            model,
            messages,
            stream,
            extra_headers,
            c._timeout if timeout is None else _timeout(timeout),
            tags,
            project,
            params,
        )
        return await send_async(c, request, stream)


class _AsyncTextCompletions:
    """The async twin of ``client.completions`` (the legacy text endpoint)."""

    def __init__(self, client: AsyncCerebrasClient) -> None:
        self._client = client

    @overload
    async def create(
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
    async def create(
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
    ) -> AsyncStream: ...

    @overload
    async def create(
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
    ) -> dict[str, Any] | AsyncStream: ...

    async def create(
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
    ) -> dict[str, Any] | AsyncStream:
        """Send a text completion; a dict, or an :class:`AsyncStream` when ``stream=True``."""
        c = self._client
        request = c._settings.build(
            model,
            prompt,
            stream,
            extra_headers,
            c._timeout if timeout is None else _timeout(timeout),
            tags,
            project,
            params,
            path="completions",
            input_key="prompt",
        )
        return await send_async(c, request, stream)


class AsyncCerebrasClient:
    """The async twin of :class:`CerebrasClient` (same arguments); use ``async with``."""

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
        self._settings = _Settings(project, api_key, base_url, lava_forward_token, lava_base_url)
        self.transport = AsyncRecordingTransport(
            httpx.AsyncHTTPTransport(),
            project=self._settings.project,
            tags=tags,
            database_url=database_url,
            spool_dir=spool_dir,
            source="wrapper",
            flush_timeout=flush_timeout,
        )
        self._timeout = _timeout(timeout)
        self._closed = False
        self.max_retries = max_retries
        self.chat = _AsyncChat(self)
        self.completions = _AsyncTextCompletions(self)

    @property
    def project(self) -> str:
        return self._settings.project

    async def flush(self, timeout: float = 10.0) -> bool:
        import asyncio

        return await asyncio.to_thread(self.transport.journal.flush, timeout)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        try:
            response = cast(httpx.Response, await self.transport.handle_async_request(request))
        except httpx.RequestError as exc:
            _attach(exc, request)
            raise
        response.request = request
        return response

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.transport.aclose()

    async def __aenter__(self) -> AsyncCerebrasClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
