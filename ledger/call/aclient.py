"""Async client: ``AsyncCerebrasClient``, the async twin of :class:`~ledger.call.client.CerebrasClient`.

Same arguments, same route and recording (an :class:`~ledger.call.transport.AsyncRecordingTransport`
under it), the same retries (:func:`ledger.call.retry.send_async`); ``create(stream=True)``
returns an :class:`~ledger.call.streams.AsyncStream`. Here: the client with its
``chat.completions`` and ``completions`` namespaces; its settings are :mod:`ledger.call.settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, overload

import httpx

from ledger.call.retry import send_async
from ledger.call.settings import DEFAULT_TIMEOUT, Settings, attach, timeout_dict
from ledger.call.streams import AsyncStream
from ledger.call.transport import AsyncRecordingTransport

__all__ = ["AsyncCerebrasClient"]


class _AsyncChat:
    def __init__(self, client: AsyncCerebrasClient) -> None:
        self.completions = _AsyncCompletions(client)


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
            c._timeout if timeout is None else timeout_dict(timeout),
            tags,
            project,
            params,
        )
        return await send_async(c._send, c.max_retries, request, stream)


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
            c._timeout if timeout is None else timeout_dict(timeout),
            tags,
            project,
            params,
            path="completions",
            input_key="prompt",
        )
        return await send_async(c._send, c.max_retries, request, stream)


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
        self._settings = Settings(project, api_key, base_url, lava_forward_token, lava_base_url)
        self.transport = AsyncRecordingTransport(
            httpx.AsyncHTTPTransport(),
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
            attach(exc, request)
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
