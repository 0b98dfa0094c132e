"""wire facts: endpoint, service tier, finish reason, prediction and image tokens, rate-limit headroom

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (
    ("service_tier", sa.String(length=32)),
    ("finish_reason", sa.String(length=32)),
    ("accepted_prediction_tokens", sa.BigInteger()),
    ("rejected_prediction_tokens", sa.BigInteger()),
    ("image_tokens", sa.BigInteger()),
    ("rl_remaining_tokens_minute", sa.BigInteger()),
    ("rl_remaining_requests_day", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        # every event before this revision was a chat completion
        batch_op.add_column(
            sa.Column("endpoint", sa.String(length=32), server_default="chat.completions", nullable=False)
        )
        for name, kind in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
        batch_op.drop_column("endpoint")
