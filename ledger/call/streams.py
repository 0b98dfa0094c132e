"""Streams: a streamed completion as the wrapper client returns it, chunk mappings as they arrive.

:class:`Stream` (and :class:`AsyncStream`) decode the response's event stream
(:class:`~ledger.call.wire.SSEDecoder`) into one dict per ``data:`` payload, stop at
``[DONE]``, and raise as the SDKs do: an error event as the :class:`~ledger.call.errors.APIStatusError`
its ``status_code`` names, a malformed event as :class:`~ledger.call.errors.APIResponseValidationError`,
a timeout or a cut connection as :class:`~ledger.call.errors.APITimeoutError` /
:class:`~ledger.call.errors.APIConnectionError`. Closing one closes its response (the transport
then records what arrived).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import Any

import httpx

from ledger.call.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    status_class,
)
from ledger.call.wire import SSEDecoder

__all__ = ["AsyncStream", "Stream"]


def _stream_error(payload: Mapping[str, Any], response: httpx.Response) -> APIStatusError:
    """An error event inside a stream, raised as the SDK raises it: the class by the event's
    ``status_code`` (else the response's), the error's message, the whole event as the body."""
    err = payload.get("error")
    message = err.get("message") if isinstance(err, Mapping) else None
    code = payload.get("status_code")
    status = code if type(code) is int and 100 <= code <= 599 else response.status_code
    return status_class(status)(
        message if isinstance(message, str) else "An error occurred during streaming",
        response=response,
        body=dict(payload),
        status_code=status,
    )


def _payload(data: str, response: httpx.Response) -> dict[str, Any] | None:
    """One SSE ``data:`` payload as a chunk mapping; ``None`` for ``[DONE]`` (and anything that is
    not an object); raises on an error event or a malformed one."""
    try:
        payload = json.loads(data)
    except ValueError:
        if data.strip() == "[DONE]":  # tried after the parse: it comes once a stream, deltas every time
            return None
        raise APIResponseValidationError("malformed event in stream", request=response.request) from None
    if type(payload) is not dict:
        return None
    if payload.get("error"):  # as the SDKs: any truthy "error"
        raise _stream_error(payload, response)
    return payload


class Stream:
    """Chunks of a streamed completion, as they arrive. Close it (or use ``with``) if you stop early."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iter = self._chunks()

    def _chunks(self) -> Generator[dict[str, Any], None, None]:
        decoder = SSEDecoder()
        response = self.response
        try:
            for data in response.iter_bytes():
                for ev in decoder.feed(data):
                    if (payload := _payload(ev.data, response)) is not None:
                        yield payload
            for ev in decoder.close():
                if (payload := _payload(ev.data, response)) is not None:
                    yield payload
        except httpx.TimeoutException:
            raise APITimeoutError(self.response.request) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(request=self.response.request) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._iter

    def __next__(self) -> dict[str, Any]:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream:
    """The async twin of :class:`Stream`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iter = self._chunks()

    async def _chunks(self) -> AsyncGenerator[dict[str, Any], None]:
        decoder = SSEDecoder()
        response = self.response
        try:
            async for data in response.aiter_bytes():
                for ev in decoder.feed(data):
                    if (payload := _payload(ev.data, response)) is not None:
                        yield payload
            for ev in decoder.close():
                if (payload := _payload(ev.data, response)) is not None:
                    yield payload
        except httpx.TimeoutException:
            raise APITimeoutError(self.response.request) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(request=self.response.request) from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter

    async def __anext__(self) -> dict[str, Any]:
        return await self._iter.__anext__()

    async def close(self) -> None:
        await self._iter.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
