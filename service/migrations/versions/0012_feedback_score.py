"""feedback.score: a 1-10 rating beside the thumbs (issue 31).

Open WebUI asks for a 1-10 score after the thumbs; the feedback route accepts one too. Between two
replies to one turn, the higher score is the preferred one (``learning.data``), so two thumbs-up
with different scores still make a preference pair. Null when the user gave none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 15:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("score", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("score")
