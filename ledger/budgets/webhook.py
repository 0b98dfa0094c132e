"""The webhook's settings: where fired alerts are POSTed (:class:`Webhook`: URL, secret, total
deadline per attempt, lease), checked at configuration, and :func:`webhook_from_env` reading them
from ``LEDGER_ALERT_WEBHOOK_URL`` / ``_SECRET`` / ``_TIMEOUT``.

Delivery itself (claims, signing, POSTs, back-off) is :mod:`ledger.budgets.outbox`'s. An invalid
URL is refused with a one-line error that never repeats the URL (its path may be a credential).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

import httpx

from ledger.config import ConfigError

__all__ = ["LEASE_MARGIN", "Webhook", "webhook_from_env"]

WEBHOOK_TIMEOUT = 10.0  # seconds: the total deadline of one delivery attempt
MAX_WEBHOOK_TIMEOUT = 300.0
LEASE_MARGIN = timedelta(seconds=60)  # a claim outlasts its attempt's deadline by this much


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where alerts are POSTed. ``secret`` signs the body; it never appears in a repr or a log.
    ``timeout`` is the total deadline of one attempt, in seconds (connect, send, answer: all of
    it). An invalid URL is refused here, at configuration, with a one-line error that never
    repeats the URL (its path may be a credential)."""

    url: str
    secret: str | None = field(default=None, repr=False)
    timeout: float = WEBHOOK_TIMEOUT

    def __post_init__(self) -> None:
        name = "LEDGER_ALERT_WEBHOOK_URL"
        url = self.url
        if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
            raise ConfigError(f"{name} is not a valid URL (it has spaces or control characters)")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
            parsed = httpx.URL(url)
        except (ValueError, httpx.InvalidURL):
            raise ConfigError(f"{name} is not a valid URL") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not parsed.host:
            raise ConfigError(f"{name} must be an http:// or https:// URL with a host")
        timeout = self.timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout <= MAX_WEBHOOK_TIMEOUT)
        ):
            raise ConfigError(
                f"LEDGER_ALERT_WEBHOOK_TIMEOUT must be more than 0 and at most "
                f"{MAX_WEBHOOK_TIMEOUT:g} seconds"
            )

    @property
    def label(self) -> str:
        """scheme://host[:port]: the only part of the URL ever shown (the rest may be a credential)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    @property
    def lease(self) -> timedelta:
        """How long a claimed alert is held: the attempt's whole deadline and a margin for the
        database round trips around it, so nobody else sends it while this attempt may still run."""
        return timedelta(seconds=self.timeout) + LEASE_MARGIN


def webhook_from_env(env: Mapping[str, str] | None = None) -> Webhook | None:
    """The webhook from ``LEDGER_ALERT_WEBHOOK_URL`` / ``LEDGER_ALERT_WEBHOOK_SECRET`` /
    ``LEDGER_ALERT_WEBHOOK_TIMEOUT`` (seconds, default 10), or None."""
    e = os.environ if env is None else env
    url = (e.get("LEDGER_ALERT_WEBHOOK_URL") or "").strip()
    if not url:
        return None
    raw = (e.get("LEDGER_ALERT_WEBHOOK_TIMEOUT") or "").strip()
    timeout = WEBHOOK_TIMEOUT
    if raw:
        try:
            timeout = float(Decimal(raw))
        except (InvalidOperation, ValueError, OverflowError):
            timeout = -1.0
        if not (0 < timeout <= MAX_WEBHOOK_TIMEOUT):  # nan, inf and out of range all land here
            raise ConfigError(
                f"LEDGER_ALERT_WEBHOOK_TIMEOUT must be a number of seconds, more than 0 and "
                f"at most {MAX_WEBHOOK_TIMEOUT:g}"
            )
    return Webhook(url, e.get("LEDGER_ALERT_WEBHOOK_SECRET") or None, timeout)
