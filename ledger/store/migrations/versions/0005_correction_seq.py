"""correction sets: each correction's place among its event's corrections, unique per event

Adds ``events.correction_seq`` (0 on usage rows) and a unique index on (corrects_event_id,
correction_seq) over correction rows, so two re-pricing runs can never both store a correction
set of one generation. Corrections already in the ledger are numbered in the order they were
written (their UUIDv7 ids): a reversal and its restatement get 2g-1 and 2g. A ledger that already
holds a doubled set keeps it, numbered after the first; ``verify`` reports it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 03:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN ... NOT NULL DEFAULT 0: no table rebuild on SQLite, no rewrite on PostgreSQL 11+.
    op.add_column(
        "events", sa.Column("correction_seq", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT event_id, corrects_event_id FROM events WHERE corrects_event_id IS NOT NULL "
            "ORDER BY corrects_event_id, event_id"
        )
    ).all()
    seqs: list[dict[str, object]] = []
    last, n = None, 0
    for event_id, target in rows:
        n = n + 1 if target == last else 1
        last = target
        seqs.append({"eid": event_id, "seq": n})
    if seqs:
        conn.execute(sa.text("UPDATE events SET correction_seq = :seq WHERE event_id = :eid"), seqs)
    op.create_index(
        "uq_events_correction_seq",
        "events",
        ["corrects_event_id", "correction_seq"],
        unique=True,
        sqlite_where=sa.text("corrects_event_id IS NOT NULL"),
        postgresql_where=sa.text("corrects_event_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_events_correction_seq", table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("correction_seq")
