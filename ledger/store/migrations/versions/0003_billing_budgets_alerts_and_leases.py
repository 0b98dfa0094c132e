"""billing, budgets, alerts and leases

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 15:49:19.878276
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alerts")),
        sa.UniqueConstraint(
            "project", "rule", "period", "threshold", name=op.f("uq_alerts_project_rule_period_threshold")
        ),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_undelivered", ["delivered_at", "next_attempt_at"], unique=False)

    op.create_table(
        "billing_exports",
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("billed_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_billing_exports")),
    )
    op.create_table(
        "budgets",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("monthly_nanos", sa.BigInteger(), nullable=True),
        sa.Column("daily_nanos", sa.BigInteger(), nullable=True),
        sa.Column("thresholds", sa.String(length=100), nullable=False),
        sa.Column("free_only", sa.Boolean(), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", name=op.f("pk_budgets")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "billed_batches",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("billed_in", sa.String(length=7), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["ingest_batches.batch_id"], name=op.f("fk_billed_batches_batch_id_ingest_batches")
        ),
        sa.PrimaryKeyConstraint("batch_id", "month", name=op.f("pk_billed_batches")),
    )


def downgrade() -> None:
    op.drop_table("billed_batches")
    op.drop_table("leases")
    op.drop_table("budgets")
    op.drop_table("billing_exports")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_undelivered")

    op.drop_table("alerts")
