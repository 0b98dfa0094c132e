"""cerebras-ledger: record, price and report every Cerebras chat completion.

The call path (:class:`CerebrasClient`, :class:`AsyncCerebrasClient`, :func:`instrument`)
imports only httpx and the standard library; SQLAlchemy loads on the background writer
thread, and pandas and Alembic only in the commands that need them. :class:`Ledger` is the
library's way to everything the CLI does (roll up, report, bill, export, budgets, prices,
verify) and to a pandas DataFrame of usage (:meth:`Ledger.frame`).
"""

from ledger._version import __version__
from ledger.api import Ledger
from ledger.call.aclient import AsyncCerebrasClient
from ledger.call.client import CerebrasClient
from ledger.call.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from ledger.call.streams import AsyncStream, Stream
from ledger.call.transport import AsyncRecordingTransport, RecordingTransport, instrument
from ledger.config import ConfigError
from ledger.money import Money, usd

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncCerebrasClient",
    "AsyncRecordingTransport",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "CerebrasClient",
    "ConfigError",
    "ConflictError",
    "InternalServerError",
    "Ledger",
    "Money",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RecordingTransport",
    "Stream",
    "UnprocessableEntityError",
    "__version__",
    "instrument",
    "usd",
]
