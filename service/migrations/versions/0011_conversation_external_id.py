"""conversation.external_id: the client's own id of a chat (issue 31).

A front end that keeps its own chats (Open WebUI sends ``X-OpenWebUI-Chat-Id``) has each of its
chats stored as one conversation here, its turns and regenerations on one tree, so a regenerated
reply rated against the original makes a preference pair. Scoped by user: two users' equal ids
never meet.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversation", sa.Column("external_id", sa.String(length=128), nullable=True))
    op.create_index("ix_conversation_external_id", "conversation", ["external_id"])


def downgrade() -> None:
    op.drop_index("ix_conversation_external_id", table_name="conversation")
    with op.batch_alter_table("conversation") as batch:
        batch.drop_column("external_id")
