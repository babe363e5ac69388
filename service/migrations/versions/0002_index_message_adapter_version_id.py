"""Index message.adapter_version_id.

Which replies an adapter version produced is how the gate and the admin views
judge it, and PostgreSQL does not index a foreign key's referencing column on
its own. Adds an index only: no data changes, safe on a live database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:04:33.551344
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_message_adapter_version_id"), "message", ["adapter_version_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_message_adapter_version_id"), table_name="message")
