"""Retry: how the wrapper client sends one call, with the SDK's retries and back-off.

:func:`send_sync` / :func:`send_async` make up to ``max_retries + 1`` attempts of one request
(each one event, recorded by the transport): connection errors, timeouts, 408, 409, 429 and 5xx
are retried after :func:`retry_delay` (``retry-after-ms``, else ``retry-after``, else
exponential back-off with jitter); the last failure is raised as the SDK raises it. What comes
back is the decoded body (the one the transport already parsed, when it did), or a
:class:`~ledger.call.streams.Stream` / :class:`~ledger.call.streams.AsyncStream`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ledger.call.errors import APIConnectionError, APIResponseValidationError, APITimeoutError, status_error
from ledger.call.streams import AsyncStream, Stream
from ledger.call.transport import ATTEMPT

__all__ = ["retry_delay", "send_async", "send_sync"]

RETRY_STATUSES = frozenset({408, 409, 429})


def _header_seconds(response: httpx.Response, name: str, scale: float) -> float | None:
    value = response.headers.get(name)
    try:
        seconds = float(value) / scale if value is not None else -1.0
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 60 else None  # (a NaN fails this test too)


def retry_delay(attempt: int, response: httpx.Response | None) -> float:
    """How long to wait before the next attempt: ``retry-after-ms`` (what Cerebras sends on a
    429), else ``retry-after`` in seconds, as the SDKs read them; else exponential back-off."""
    if response is not None:
        for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
            seconds = _header_seconds(response, name, scale)
            if seconds is not None:
                return seconds
    return min(0.5 * pow(2.0, attempt), 8.0) * random.uniform(0.75, 1.0)


def _should_retry(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _ok_body(response: httpx.Response) -> dict[str, Any]:
    # The recording transport already decoded this body to read its usage: reuse that.
    attempt = response.extensions.get(ATTEMPT)
    body = getattr(attempt, "body", None)
    if body is None:
        body = _json_or_none(response)
    if not isinstance(body, dict):
        raise APIResponseValidationError("response body is not a JSON object", request=response.request)
    return body


def send_sync(
    send: Callable[[httpx.Request], httpx.Response], max_retries: int, request: httpx.Request, stream: bool
) -> dict[str, Any] | Stream:
    """Send ``request`` with the SDK's retries; the body, or a :class:`Stream`."""
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            response = send(request)
        except httpx.TimeoutException:
            if last:
                raise APITimeoutError(request) from None
            time.sleep(retry_delay(attempt, None))
            continue
        except httpx.TransportError as exc:
            if last:
                raise APIConnectionError(request=request) from exc
            time.sleep(retry_delay(attempt, None))
            continue
        if response.status_code >= 400:
            response.read()
            response.close()
            if not last and _should_retry(response.status_code):
                time.sleep(retry_delay(attempt, response))
                continue
            raise status_error(response.status_code, _json_or_none(response), response)
        if stream:
            return Stream(response)
        try:
            response.read()
        except httpx.TimeoutException:
            raise APITimeoutError(request) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(request=request) from exc
        finally:
            response.close()
        return _ok_body(response)
    raise AssertionError("unreachable")  # pragma: no cover


async def send_async(
    send: Callable[[httpx.Request], Awaitable[httpx.Response]],
    max_retries: int,
    request: httpx.Request,
    stream: bool,
) -> dict[str, Any] | AsyncStream:
    """The async twin of :func:`send_sync`."""
    import asyncio  # here, not at the top: asyncio costs 60 ms to import, and sync callers never need it

    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            response = await send(request)
        except httpx.TimeoutException:
            if last:
                raise APITimeoutError(request) from None
            await asyncio.sleep(retry_delay(attempt, None))
            continue
        except httpx.TransportError as exc:
            if last:
                raise APIConnectionError(request=request) from exc
            await asyncio.sleep(retry_delay(attempt, None))
            continue
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            if not last and _should_retry(response.status_code):
                await asyncio.sleep(retry_delay(attempt, response))
                continue
            raise status_error(response.status_code, _json_or_none(response), response)
        if stream:
            return AsyncStream(response)
        try:
            await response.aread()
        except httpx.TimeoutException:
            raise APITimeoutError(request) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(request=request) from exc
        finally:
            await response.aclose()
        return _ok_body(response)
    raise AssertionError("unreachable")  # pragma: no cover
