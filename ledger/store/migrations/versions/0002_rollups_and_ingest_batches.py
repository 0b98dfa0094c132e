"""rollups and ingest batches

Adds ingest batches (every event names the write transaction that brought it), per-event tags,
list cost, and the quarter-hour rollup tables. Events already in the ledger are put in one
back-fill batch, not yet rolled up, and their tags are copied out of the JSON column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:41:58.361426
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_batches",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("rolled_up", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_ingest_batches")),
    )
    with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
        batch_op.create_index("ix_ingest_batches_pending", ["rolled_up", "created_at"], unique=False)

    op.create_table(
        "tag_rollup",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "project", "key", "value", name=op.f("pk_tag_rollup")),
    )
    op.create_table(
        "usage_rollup",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("book", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("price_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.Column("priced", sa.Boolean(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("usage_known", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("list_cost_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "bucket",
            "project",
            "route",
            "book",
            "model",
            "price_id",
            "status",
            "kind",
            "free",
            "priced",
            name=op.f("pk_usage_rollup"),
        ),
    )
    op.create_table(
        "event_tags",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.event_id"], name=op.f("fk_event_tags_event_id_events")
        ),
        sa.PrimaryKeyConstraint("event_id", "key", name=op.f("pk_event_tags")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("list_cost_nanos", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_events_batch_id"), ["batch_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_events_batch_id_ingest_batches"), "ingest_batches", ["batch_id"], ["batch_id"]
        )

    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT event_id, tags FROM events")).all()
    if not rows:
        return
    batch = "00000000-0000-0000-0000-000000000002"
    conn.execute(
        sa.text(
            "INSERT INTO ingest_batches (batch_id, created_at, source, rolled_up) "
            "VALUES (:b, :t, 'migration', :f)"
        ),
        {
            "b": batch,
            "t": datetime.now(UTC).replace(tzinfo=None)
            if conn.dialect.name == "sqlite"
            else datetime.now(UTC),
            "f": False,
        },
    )
    conn.execute(sa.text("UPDATE events SET batch_id = :b"), {"b": batch})
    tags = []
    for event_id, raw in rows:
        try:
            parsed = json.loads(raw or "{}")
        except ValueError:
            continue
        if isinstance(parsed, dict):
            tags.extend({"e": event_id, "k": str(k)[:100], "v": str(v)[:200]} for k, v in parsed.items())
    if tags:
        conn.execute(sa.text("INSERT INTO event_tags (event_id, key, value) VALUES (:e, :k, :v)"), tags)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_events_batch_id_ingest_batches"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_events_batch_id"))
        batch_op.drop_column("batch_id")
        batch_op.drop_column("list_cost_nanos")

    op.drop_table("event_tags")
    op.drop_table("usage_rollup")
    op.drop_table("tag_rollup")
    with op.batch_alter_table("ingest_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_ingest_batches_pending")

    op.drop_table("ingest_batches")
