"""user.shared_pool_excluded: an operator keeps a user's labels and prompts out of the shared models
(issue 28, M8). The user keeps chatting and their own adapter still learns from their ratings; the
global adapter, the shared reward's population weights and the harm head no longer see them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 15:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("user", sa.Column("shared_pool_excluded", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.drop_column("shared_pool_excluded")
