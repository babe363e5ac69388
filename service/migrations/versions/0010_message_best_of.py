"""message.best_of: how personal best-of-n chose a reply (issue 26).

``{"n": candidates per choice, "block": tokens per choice (0: whole replies), "choices": the chosen
candidate's index per block (0: the first draw), "dropped": candidates the harm judge flagged}``;
null for a reply sampled once.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message", sa.Column("best_of", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_column("best_of")
