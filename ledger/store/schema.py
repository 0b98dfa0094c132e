"""Schema: the ledger's tables as SQLAlchemy 2 typed models.

One module owns the shape of the database (so it is longer than 400 lines: every table in one
place, read side by side with the migrations); Alembic migrations (``migrations/``) build exactly
this on SQLite and PostgreSQL, and a test runs ``alembic check`` against it.

* ``events`` is append-only. Money is ``cost_nanos`` (BIGINT nano-dollars, see
  :mod:`ledger.money`); a correction is a new row (``kind='correction'``) that points at the
  event it corrects and carries a cost *delta*.
* ``prices`` holds every dated price point, built-in or added; events keep the ``price_id``
  they were priced with, so a later point never rewrites history.
* ``ingest_batches`` has one row per write transaction into ``events`` (the spool writer, an
  import, a re-pricing); every event names its batch. Rollups consume whole batches, so "what
  arrived since the last run" is a small index lookup, and exactly-once is a flag flipped in the
  same transaction as the rollup upsert.
* A correction's ``correction_seq`` is its place among the corrections of its event (a
  re-pricing's reversal ``2g-1`` and restatement ``2g`` for its generation ``g``; usage rows 0),
  unique per event: a second correction set of one generation cannot be stored.
* ``usage_rollup`` and ``tag_rollup`` hold sums per quarter hour (UTC). Every time zone in use
  today is offset from UTC by a whole number of quarter hours, so daily and monthly totals are
  exact in any IANA zone, :30 and :45 offsets and DST changes included.
* ``api_tokens`` and ``service_sessions`` hold the service's credentials as SHA-256 hashes only
  (:mod:`ledger.service.auth`); a token or session secret is never stored.
* Timestamps are :class:`UTCDateTime`: aware UTC in Python; ``timestamptz`` on PostgreSQL and
  a naive UTC ISO string on SQLite (which sorts and compares correctly).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ROLLUP_KEY",
    "ROLLUP_MEASURES",
    "SCHEMA_REVISION",
    "Base",
    "AlertRow",
    "ApiTokenRow",
    "BilledBatchRow",
    "BillingExportRow",
    "BudgetRow",
    "BudgetStopRow",
    "EventRow",
    "EventTagRow",
    "LeaseRow",
    "IngestBatchRow",
    "PriceRow",
    "ServiceSessionRow",
    "TagRollupRow",
    "UTCDateTime",
    "UsageRollupRow",
    "metadata",
]

# The Alembic head this code writes to; tests check it equals the migrations' head.
SCHEMA_REVISION = "0007"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if when.tzinfo is None:
            return when.replace(tzinfo=UTC)
        return when.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = metadata


class PriceRow(Base):
    """A dated price point (see :class:`ledger.pricing.PricePoint`)."""

    __tablename__ = "prices"
    __table_args__ = (
        UniqueConstraint("book", "model", "effective_from"),
        CheckConstraint("input_nanos >= 0 AND output_nanos >= 0", name="rates_not_negative"),
    )

    price_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    book: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime())
    input_nanos: Mapped[int] = mapped_column(BigInteger)
    cached_nanos: Mapped[int | None] = mapped_column(BigInteger)
    output_nanos: Mapped[int] = mapped_column(BigInteger)
    free: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventRow(Base):
    """One attempt (``kind='usage'``) or one correction of an earlier attempt."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'error', 'incomplete')", name="status_known"),
        CheckConstraint("kind IN ('usage', 'correction')", name="kind_known"),
        Index("ix_events_occurred_at", "occurred_at"),
        Index("ix_events_project_occurred_at", "project", "occurred_at"),
        # Only correction rows are indexed (usage rows have no corrects_event_id), so the
        # writer's hot path pays nothing for it.
        Index(
            "uq_events_correction_seq",
            "corrects_event_id",
            "correction_seq",
            unique=True,
            sqlite_where=text("corrects_event_id IS NOT NULL"),
            postgresql_where=text("corrects_event_id IS NOT NULL"),
        ),
    )

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    corrects_event_id: Mapped[str | None] = mapped_column(ForeignKey("events.event_id"))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    project: Mapped[str] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(16))
    book: Mapped[str] = mapped_column(String(32))
    requested_model: Mapped[str | None] = mapped_column(String(200))
    served_model: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_code: Mapped[str | None] = mapped_column(String(100))
    stream: Mapped[bool] = mapped_column(Boolean)
    usage_known: Mapped[bool] = mapped_column(Boolean)
    prompt_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cached_tokens: Mapped[int | None] = mapped_column(BigInteger)
    completion_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInteger)
    total_tokens: Mapped[int | None] = mapped_column(BigInteger)
    latency_us: Mapped[int | None] = mapped_column(BigInteger)
    ttft_us: Mapped[int | None] = mapped_column(BigInteger)
    queue_us: Mapped[int | None] = mapped_column(BigInteger)
    prompt_us: Mapped[int | None] = mapped_column(BigInteger)
    completion_us: Mapped[int | None] = mapped_column(BigInteger)
    total_us: Mapped[int | None] = mapped_column(BigInteger)
    upstream_id: Mapped[str | None] = mapped_column(String(200))
    lava_request_id: Mapped[str | None] = mapped_column(String(200))
    price_id: Mapped[str | None] = mapped_column(String(300))
    cost_nanos: Mapped[int | None] = mapped_column(BigInteger)
    free: Mapped[bool] = mapped_column(Boolean)
    priced: Mapped[bool] = mapped_column(Boolean)
    tags: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(String(200))
    # What the usage costs at the cerebras book's rates ("free usage at list price", FOCUS ListCost).
    list_cost_nanos: Mapped[int | None] = mapped_column(BigInteger)
    # What else the wire said (migration 0006): the endpoint, the requested service tier, the
    # first choice's finish reason, predicted-output and image tokens (parts of the completion
    # and prompt tokens, never priced apart), and the rate-limit headroom the answer reported.
    endpoint: Mapped[str] = mapped_column(String(32), server_default="chat.completions")
    service_tier: Mapped[str | None] = mapped_column(String(32))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    accepted_prediction_tokens: Mapped[int | None] = mapped_column(BigInteger)
    rejected_prediction_tokens: Mapped[int | None] = mapped_column(BigInteger)
    image_tokens: Mapped[int | None] = mapped_column(BigInteger)
    rl_remaining_tokens_minute: Mapped[int | None] = mapped_column(BigInteger)
    rl_remaining_requests_day: Mapped[int | None] = mapped_column(BigInteger)
    # A correction's place among its event's corrections (unique per event, see above); 0 on usage rows.
    correction_seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("ingest_batches.batch_id"), index=True)


class EventTagRow(Base):
    """One tag of one event, so rollups group by tag without parsing JSON in SQL. Keys are cut
    to 100 characters and values to 200 here; the event's ``tags`` keeps them whole."""

    __tablename__ = "event_tags"

    event_id: Mapped[str] = mapped_column(ForeignKey("events.event_id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class IngestBatchRow(Base):
    """One write transaction into ``events``; ``rolled_up`` flips once its events are in the rollups."""

    __tablename__ = "ingest_batches"
    __table_args__ = (Index("ix_ingest_batches_pending", "rolled_up", "created_at"),)

    batch_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(16))
    rolled_up: Mapped[bool] = mapped_column(Boolean, default=False)


# The grain of usage_rollup: everything a report, the FOCUS export or an alert groups by.
ROLLUP_KEY = ("bucket", "project", "route", "book", "model", "price_id", "status", "kind", "free", "priced")
ROLLUP_MEASURES = (
    "events",
    "usage_known",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_nanos",
    "list_cost_nanos",
)


class UsageRollupRow(Base):
    """Sums of events per quarter hour (UTC) and grain. ``''`` stands for "no model / no price".

    Key columns are short enough for a PostgreSQL index entry even in four-byte characters;
    a longer model name or price id is cut to fit (no real one comes close)."""

    __tablename__ = "usage_rollup"

    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    project: Mapped[str] = mapped_column(String(200), primary_key=True)
    route: Mapped[str] = mapped_column(String(16), primary_key=True)
    book: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    price_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    free: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    priced: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    usage_known: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    list_cost_nanos: Mapped[int] = mapped_column(BigInteger)


class TagRollupRow(Base):
    """Sums of events per quarter hour (UTC), project and tag."""

    __tablename__ = "tag_rollup"

    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    project: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)


class BillingExportRow(Base):
    """A month whose FOCUS billing export has been issued; a closed month is never rewritten."""

    __tablename__ = "billing_exports"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM (UTC)
    exported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rows: Mapped[int] = mapped_column(Integer)
    billed_nanos: Mapped[int] = mapped_column(BigInteger)


class BilledBatchRow(Base):
    """Events of ``batch_id`` that occurred in ``month`` were billed in the export of ``billed_in``
    (the same month for regular rows; a later month for late usage, as Correction rows)."""

    __tablename__ = "billed_batches"

    batch_id: Mapped[str] = mapped_column(ForeignKey("ingest_batches.batch_id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    billed_in: Mapped[str] = mapped_column(String(7))


class BudgetRow(Base):
    """A project's paid-spend budget (nano-dollars) and alert settings."""

    __tablename__ = "budgets"

    project: Mapped[str] = mapped_column(String(200), primary_key=True)
    monthly_nanos: Mapped[int | None] = mapped_column(BigInteger)
    daily_nanos: Mapped[int | None] = mapped_column(BigInteger)
    thresholds: Mapped[str] = mapped_column(String(100))  # percentages, e.g. "50,80,100"
    free_only: Mapped[bool] = mapped_column(Boolean)
    hard: Mapped[bool] = mapped_column(Boolean)  # refuse paid calls once the monthly budget is spent
    timezone: Mapped[str] = mapped_column(String(64))  # where "day" and "month" are counted
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BudgetStopRow(Base):
    """A project whose hard monthly budget is spent (kept by the alerts check; read by the
    writer for the call path, see :mod:`ledger.call.stops`): paid calls refused until ``until``."""

    __tablename__ = "budget_stops"

    project: Mapped[str] = mapped_column(String(200), primary_key=True)
    period: Mapped[str] = mapped_column(String(7))  # the budget's local month, e.g. "2026-11"
    until: Mapped[datetime] = mapped_column(UTCDateTime())  # that month's end
    budget_nanos: Mapped[int] = mapped_column(BigInteger)
    spent_nanos: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AlertRow(Base):
    """One alert, fired once per (project, rule, period, threshold), with its evidence.

    The table is also the delivery outbox: ``delivered_at`` is set once a delivery succeeded;
    ``claimed_until`` is a lease so two processes never send the same alert at once."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("project", "rule", "period", "threshold"),
        Index("ix_alerts_undelivered", "delivered_at", "next_attempt_at"),
    )

    alert_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    message: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text)  # JSON: figures and window
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(200))


class LeaseRow(Base):
    """A named lease (e.g. the scheduler's), held by one process until it expires."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiTokenRow(Base):
    """A service token: its public id, the SHA-256 of its secret, a role and its projects.

    ``projects`` is a JSON list of project names; empty means every project (admins, and
    viewers made without ``--project``). A revoked or expired token never authenticates."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role_known"),)

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    projects: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ServiceSessionRow(Base):
    """A browser session opened by logging in with a token; it dies with its token."""

    __tablename__ = "service_sessions"

    session_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.token_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
