"""Training jobs: trainingresult gets worker_id, progress, started_at, heartbeat_at.

A run's per-user results double as its jobs in the database queue, so several
workers can train one run's users side by side (learning/worker.py). Adds
nullable columns, a defaulted progress column and an index on status: no data
changes, safe on a live database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:45:50.546577
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trainingresult", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("progress", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_trainingresult_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trainingresult", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trainingresult_status"))
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("started_at")
        batch_op.drop_column("progress")
        batch_op.drop_column("worker_id")
