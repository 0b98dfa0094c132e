"""Health: what ``/readyz`` checks and ``/metrics`` reports about the ledger itself.

* **spool backlog**: bytes in the spool folder not yet in the database, and the *writer lag*,
  how long the writer has not moved on while bytes waited (:func:`ledger.journal.spool.backlog`);
* **rollup lag**: the age of the oldest ingest batch not yet rolled up (0 when none waits), so
  "how stale are the dashboard's figures" is one number;
* **undelivered alerts**: alerts the webhook outbox has not delivered yet.

The server is *ready* when the database answers and both lags are under their limits
(:class:`ledger.service.app.Settings`); readiness never needs a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select

from ledger.journal.spool import backlog
from ledger.store.schema import AlertRow, IngestBatchRow

__all__ = ["Health", "health_on", "read_health"]


@dataclass(frozen=True, slots=True)
class Health:
    """The ledger's own health figures (see the module docstring)."""

    spool_segments: int
    spool_backlog_bytes: int
    writer_lag_seconds: float
    rollup_pending_batches: int
    rollup_lag_seconds: float
    undelivered_alerts: int


def read_health(engine: Engine, spool: Path | None, now: datetime | None = None) -> Health:
    """Read every figure; the database must answer (an error propagates: not ready)."""
    with engine.connect() as conn:
        return health_on(conn, spool, now)


def health_on(conn: Connection, spool: Path | None, now: datetime | None = None) -> Health:
    """:func:`read_health` on an open connection (``/metrics`` reads it in its one snapshot)."""
    now = now or datetime.now(UTC)
    waiting = backlog(spool, now.timestamp()) if spool is not None else None
    b = IngestBatchRow.__table__.c
    a = AlertRow.__table__.c
    pending, oldest = conn.execute(
        select(func.count(), func.min(b.created_at)).where(b.rolled_up.is_(False))
    ).one()
    undelivered = conn.execute(select(func.count()).where(a.delivered_at.is_(None))).scalar_one()
    if isinstance(oldest, str):  # min() over a SQLite column comes back as its stored text
        oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
    lag = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    return Health(
        spool_segments=0 if waiting is None else waiting.segments,
        spool_backlog_bytes=0 if waiting is None else waiting.waiting_bytes,
        writer_lag_seconds=0.0 if waiting is None else waiting.lag_seconds,
        rollup_pending_batches=int(pending),
        rollup_lag_seconds=lag,
        undelivered_alerts=int(undelivered),
    )
