"""Errors the wrapper raises: the official SDK's names and shapes, so ``except`` clauses port.

An upstream error is recorded in the ledger first, then raised as one of these:
``status_code``, ``body`` (the decoded error body) and ``response`` as the SDK has them.
Messages come from the upstream body and never include a key or token.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "status_error",
]


class APIError(Exception):
    """Base of every error from the upstream API."""

    def __init__(self, message: str, *, body: Any = None, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.body = body
        self.request = request
        self.code = body.get("code") if isinstance(body, dict) else None
        self.type = body.get("type") if isinstance(body, dict) else None


class APIResponseValidationError(APIError):
    """A 2xx response whose body is not what the API promises (e.g. not JSON)."""


class APIConnectionError(APIError):
    """No response: the connection failed."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """No response in time."""

    def __init__(self, request: httpx.Request | None = None) -> None:
        super().__init__("Request timed out.", request=request)


class APIStatusError(APIError):
    """The upstream answered with an error status (or sent an error event in a stream)."""

    def __init__(self, message: str, *, response: httpx.Response | None, body: Any, status_code: int) -> None:
        super().__init__(message, body=body, request=response.request if response is not None else None)
        self.response = response
        self.status_code = status_code


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class BudgetExceededError(APIStatusError):
    """Not from the upstream: the ledger refused a paid-model call because the project's hard
    monthly budget is spent (status 402, ``code`` ``hard_budget_spent``; see :mod:`ledger.call.stops`).
    Nothing was sent, and the refusal is recorded. Not retried."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(status: int, body: Any, response: httpx.Response | None) -> APIStatusError:
    """The exception for an error ``status`` with decoded ``body``."""
    message = f"Error code: {status}"
    if isinstance(body, dict):
        inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
        text = inner.get("message") or inner.get("detail")
        if isinstance(text, str):
            message = f"{message} - {text}"
    cls = status_class(status)
    if status == 402 and response is not None and response.headers.get("x-ledger-refused"):
        cls = BudgetExceededError
    return cls(message, response=response, body=body, status_code=status)


def status_class(status: int) -> type[APIStatusError]:
    """The exception class the SDKs raise for an error ``status``."""
    return _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
