"""The webhook outbox: delivering fired alerts reliably (signing, leases on the database's clock,
one total deadline per attempt, back-off, retries forever).

**Delivery.** The ``alerts`` table is also the outbox for the webhook
(``LEDGER_ALERT_WEBHOOK_URL``, optional ``LEDGER_ALERT_WEBHOOK_SECRET`` and
``LEDGER_ALERT_WEBHOOK_TIMEOUT``), see :func:`deliver`: an alert due for delivery is claimed in a
write transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) with
a lease, ``claimed_until`` = the *database's* time + the attempt's deadline + 60 s, compared on
the database's clock too (:func:`ledger.store.db_now`), so hosts with skewed clocks agree and no
other process sends it while the attempt may still run; it is POSTed; then ``delivered_at`` is
set. Each attempt has one **total deadline** (default 10 s, from connect to the last byte read),
however slowly the receiver answers; at most 64 KiB of the answer is read; no redirect is
followed (a 3xx is a failure: ``HTTP 307 (redirect not followed)``); the URL must be http(s)
with a host, refused at configuration otherwise (:mod:`ledger.budgets.webhook`). A failure
(non-2xx, network error, deadline) increments ``attempts``, stores a short ``last_error``
(status or error class, never the URL or secret) and sets ``next_attempt_at`` with exponential
back-off (30 s × 2^(n-1), at most one hour); a later run retries, forever, so an alert is never
lost. With no URL configured nothing is sent and alerts stay in the outbox (a URL configured
later gets them).

Remaining at-least-once window: a process that crashes after the receiver accepted the POST
but before its ``delivered_at`` commit, or an attempt cut off at its deadline (or by SIGTERM)
after the receiver took it, sends that alert again on a later run. Every POST carries the
headers ``Idempotency-Key`` and ``X-Ledger-Alert-Id``, both the alert id, stable across
retries, so receivers can drop the repeat. With a
secret, ``X-Ledger-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` lets them verify it.
The secret is never logged or stored; the URL (whose path may itself be a credential, as with
Slack) is only ever shown as scheme://host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, and_, or_, select, update

from ledger.budgets.budgets import utc_now
from ledger.budgets.webhook import Webhook
from ledger.calendar import iso_z
from ledger.store import db_now as store_db_now
from ledger.store import write_transaction
from ledger.store.schema import AlertRow

__all__ = [
    "DeliveryResult",
    "claim",
    "deliver",
    "payload",
    "sign",
]

log = logging.getLogger("ledger.alerts")

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer body, the most ever read
STOP_POLL = 0.1  # seconds between looks at the stop flag while an attempt is in flight


def sign(secret: str, body: bytes) -> str:
    """The ``X-Ledger-Signature`` header value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()


def _backoff(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failure: 30 s, 60 s, 120 s, ... at most one hour."""
    return min(BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 20)), BACKOFF_MAX)


def payload(row: Any) -> bytes:
    """The webhook body: a Slack-compatible ``text`` plus the alert's fields."""
    body = {
        "text": f":rotating_light: {row.message}",
        "alert_id": row.alert_id,
        "project": row.project,
        "rule": row.rule,
        "period": row.period,
        "threshold": int(row.threshold),
        "created_at": iso_z(row.created_at),
        "message": row.message,
        "evidence": json.loads(row.evidence),
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _due(now: datetime, db_now: datetime) -> Any:
    """Undelivered, due by the caller's clock (``now``: back-off), and not under a live lease by
    the database's clock (``db_now``: claims)."""
    a = AlertRow.__table__.c
    return and_(
        a.delivered_at.is_(None),
        a.next_attempt_at <= now,
        or_(a.claimed_until.is_(None), a.claimed_until <= db_now),
    )


def claim(engine: Engine, now: datetime, lease: timedelta) -> Any:
    """Claim one due alert in a write transaction: ``claimed_until`` = the database's time +
    ``lease``. Returns the row, or None."""
    a = AlertRow.__table__.c
    with write_transaction(engine) as conn:
        db_now = store_db_now(conn)
        query = (
            select(AlertRow.__table__)
            .where(_due(now, db_now))
            .order_by(a.next_attempt_at, a.alert_id)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = conn.execute(query).first()
        if row is None:
            return None
        claimed = conn.execute(
            update(AlertRow)
            .where(a.alert_id == row.alert_id, _due(now, db_now))
            .values(claimed_until=db_now + lease)
        )
        return row if claimed.rowcount == 1 else None


def _short_error(text: str, webhook: Webhook) -> str:
    """A one-line error with the URL and the secret cut out, at most 200 characters."""
    for secret in (webhook.secret, webhook.url, urlsplit(webhook.url).path, urlsplit(webhook.url).query):
        if secret and len(secret) > 1:
            text = text.replace(secret, "***")
    return " ".join(text.split())[:200]


async def _post(
    transport: httpx.AsyncBaseTransport,
    webhook: Webhook,
    body: bytes,
    headers: dict[str, str],
    answered: list[int],
) -> int:
    """POST through the transport itself: ``httpx.AsyncClient`` logs every request's full URL at
    INFO, and the URL may be a credential. Credentials in the URL become a Basic auth header.
    No redirect is followed (a transport never follows one), no proxy variable is used, and at
    most :data:`MAX_RESPONSE_BYTES` of the answer's body are read (h11 caps its headers). The
    status goes into ``answered`` as soon as it is in: the answer counts even if its body then
    never ends."""
    url = httpx.URL(webhook.url)
    if url.username or url.password:
        token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
        headers = {**headers, "Authorization": f"Basic {token}"}
        url = url.copy_with(username=None, password=None)
    request = httpx.Request(
        "POST",
        url,
        content=body,
        headers=headers,
        extensions={"timeout": httpx.Timeout(webhook.timeout).as_dict()},
    )
    response = await transport.handle_async_request(request)
    answered.append(response.status_code)
    try:
        got = 0
        async for chunk in response.aiter_raw():
            got += len(chunk)
            if got >= MAX_RESPONSE_BYTES:
                break
    finally:
        await response.aclose()
    return response.status_code


async def _attempt(
    transport: httpx.AsyncBaseTransport,
    webhook: Webhook,
    body: bytes,
    headers: dict[str, str],
    stop: threading.Event | None,
) -> str | None:
    """One attempt under one total deadline (``webhook.timeout``, on the monotonic clock, however
    slowly the receiver answers); cut short when ``stop`` is set. None on a 2xx, else the error."""
    loop = asyncio.get_running_loop()
    end = loop.time() + webhook.timeout
    answered: list[int] = []
    task = asyncio.ensure_future(_post(transport, webhook, body, headers, answered))
    error: str | None = None
    while not task.done():
        remaining = end - loop.time()
        if stop is not None and stop.is_set():
            error = "interrupted (shutting down)"
        elif remaining <= 0:
            error = f"deadline exceeded ({webhook.timeout:g} s)"
        if error is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)  # let the connection close; never wait long
            if not answered:
                return error
            break  # the status is in; only the body was slow
        await asyncio.wait({task}, timeout=min(remaining, STOP_POLL) if stop is not None else remaining)
    if answered:
        status = answered[0]
        if task.done() and not task.cancelled():
            task.exception()  # a body cut short after the status changes nothing
    else:
        try:
            status = task.result()
        except Exception as exc:  # noqa: BLE001 - httpx errors, and anything else: a failed attempt, retried
            return _short_error(f"{type(exc).__name__}: {exc}", webhook)
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status} (redirect not followed)"
    return f"HTTP {status}"


def deliver(
    engine: Engine,
    webhook: Webhook | None,
    *,
    now: datetime | None = None,
    clock: Callable[[], datetime] | None = None,
    lease: timedelta | None = None,
    limit: int = 100,
    transport: httpx.AsyncBaseTransport | None = None,
    stop: threading.Event | None = None,
) -> DeliveryResult:
    """POST due undelivered alerts to ``webhook``; nothing is sent when it is None.

    One alert at a time: claim (a lease on the database's clock, at least :attr:`Webhook.lease`
    long: ``lease`` may lengthen it, never shorten it), POST under the attempt's total deadline,
    then mark delivered or schedule a retry. ``now`` / ``clock`` fix the clock that decides
    which alerts are due and when a retry is (tests); otherwise the real time is read at each
    step. ``stop`` (set by the scheduler on SIGTERM) cuts the attempt in flight short (it is
    retried later, like a failure) and ends the run. Runs its own event loop: call it from
    synchronous code."""
    if webhook is None:
        return DeliveryResult()
    tick: Callable[[], datetime] = clock or (
        (lambda: utc_now(now)) if now is not None else (lambda: datetime.now(UTC))
    )
    held = max(lease or webhook.lease, webhook.lease)
    a = AlertRow.__table__.c
    delivered = failed = 0
    errors: list[str] = []
    loop = asyncio.new_event_loop()
    own = transport is None
    http = transport or httpx.AsyncHTTPTransport()
    try:
        for _ in range(limit):
            if stop is not None and stop.is_set():
                break
            row = claim(engine, tick(), held)
            if row is None:
                break
            body = payload(row)
            headers = {
                "Content-Type": "application/json",
                "X-Ledger-Alert-Id": row.alert_id,
                "Idempotency-Key": row.alert_id,
                "User-Agent": "cerebras-ledger-alerts",
            }
            if webhook.secret:
                headers["X-Ledger-Signature"] = sign(webhook.secret, body)
            error = loop.run_until_complete(_attempt(http, webhook, body, headers, stop))
            attempts = int(row.attempts) + 1
            done = tick()
            with write_transaction(engine) as conn:
                if error is None:
                    conn.execute(
                        update(AlertRow)
                        .where(a.alert_id == row.alert_id, a.delivered_at.is_(None))
                        .values(
                            delivered_at=done, claimed_until=None, attempts=a.attempts + 1, last_error=None
                        )
                    )
                else:
                    conn.execute(
                        update(AlertRow)
                        .where(a.alert_id == row.alert_id, a.delivered_at.is_(None))
                        .values(
                            attempts=a.attempts + 1,
                            claimed_until=None,
                            last_error=error,
                            next_attempt_at=done + _backoff(attempts),
                        )
                    )
            if error is None:
                delivered += 1
                log.info("alert %s delivered to %s (attempt %d)", row.alert_id, webhook.label, attempts)
            else:
                failed += 1
                errors.append(error)
                log.warning(
                    "alert %s: delivery to %s failed (attempt %d: %s); retrying after %s",
                    row.alert_id,
                    webhook.label,
                    attempts,
                    error,
                    iso_z(done + _backoff(attempts)),
                )
    finally:
        try:
            if own:
                loop.run_until_complete(asyncio.wait_for(http.aclose(), 5.0))
        except Exception:  # noqa: BLE001 - closing idle connections must not hide the result
            log.debug("webhook transport did not close cleanly", exc_info=True)
        finally:
            loop.close()  # never joins a resolver thread that is still stuck
    return DeliveryResult(delivered, failed, tuple(errors))
