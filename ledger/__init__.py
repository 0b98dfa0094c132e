"""cerebras-ledger: record, price and report every Cerebras chat completion.

The call path (:class:`CerebrasClient`, :class:`AsyncCerebrasClient`, :func:`instrument`)
imports only httpx and the standard library; SQLAlchemy loads on the background writer
thread, and pandas and Alembic only in the commands that need them. :class:`Ledger` is the
library's way to everything the CLI does (roll up, report, bill, export, budgets, prices,
verify) and to a pandas DataFrame of usage (:meth:`Ledger.frame`).
"""

from ._version import __version__
from .api import Ledger
from .client import AsyncCerebrasClient, AsyncStream, CerebrasClient, Stream
from .config import ConfigError
from .errors import (
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
from .money import Money, usd
from .transport import AsyncRecordingTransport, RecordingTransport, instrument

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
