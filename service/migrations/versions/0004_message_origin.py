"""message.origin: who wrote a message's content ("generated" by this server's model, or "client").

An OpenAI client sends earlier assistant turns as context; they were stored as assistant rows
that could be rated and trained on, so a client could choose what the shared reward and harm
models learn (issue 12, finding 2). Existing assistant rows in an alternative group or with a
serving policy were generated here (every planned reply has both; the OpenAI route stored a
client's turns with neither); every other row is marked "client".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message", sa.Column("origin", sa.String(length=16), server_default="client", nullable=False))
    op.execute("UPDATE message SET origin = 'generated' WHERE role = 'assistant' "
               "AND (alternative_group IS NOT NULL OR policy IS NOT NULL)")


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:  # SQLite: drop by copying the table
        batch_op.drop_column("origin")
