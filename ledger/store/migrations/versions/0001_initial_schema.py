"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 15:00:26.856567
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("corrects_event_id", sa.String(length=36), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("book", sa.String(length=32), nullable=False),
        sa.Column("requested_model", sa.String(length=200), nullable=True),
        sa.Column("served_model", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_type", sa.String(length=100), nullable=True),
        sa.Column("error_code", sa.String(length=100), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("usage_known", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=True),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=True),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True),
        sa.Column("total_tokens", sa.BigInteger(), nullable=True),
        sa.Column("latency_us", sa.BigInteger(), nullable=True),
        sa.Column("ttft_us", sa.BigInteger(), nullable=True),
        sa.Column("queue_us", sa.BigInteger(), nullable=True),
        sa.Column("prompt_us", sa.BigInteger(), nullable=True),
        sa.Column("completion_us", sa.BigInteger(), nullable=True),
        sa.Column("total_us", sa.BigInteger(), nullable=True),
        sa.Column("upstream_id", sa.String(length=200), nullable=True),
        sa.Column("lava_request_id", sa.String(length=200), nullable=True),
        sa.Column("price_id", sa.String(length=300), nullable=True),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.Column("priced", sa.Boolean(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.CheckConstraint("kind IN ('usage', 'correction')", name=op.f("ck_events_kind_known")),
        sa.CheckConstraint("status IN ('ok', 'error', 'incomplete')", name=op.f("ck_events_status_known")),
        sa.ForeignKeyConstraint(
            ["corrects_event_id"], ["events.event_id"], name=op.f("fk_events_corrects_event_id_events")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_occurred_at", ["occurred_at"], unique=False)
        batch_op.create_index("ix_events_project_occurred_at", ["project", "occurred_at"], unique=False)

    op.create_table(
        "prices",
        sa.Column("price_id", sa.String(length=300), nullable=False),
        sa.Column("book", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cached_nanos", sa.BigInteger(), nullable=True),
        sa.Column("output_nanos", sa.BigInteger(), nullable=False),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "input_nanos >= 0 AND output_nanos >= 0", name=op.f("ck_prices_rates_not_negative")
        ),
        sa.PrimaryKeyConstraint("price_id", name=op.f("pk_prices")),
        sa.UniqueConstraint(
            "book", "model", "effective_from", name=op.f("uq_prices_book_model_effective_from")
        ),
    )


def downgrade() -> None:
    op.drop_table("prices")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_project_occurred_at")
        batch_op.drop_index("ix_events_occurred_at")

    op.drop_table("events")
