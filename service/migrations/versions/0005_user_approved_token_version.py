"""user.approved and user.token_version (issue 12, findings 3 and 6).

approved: accounts are free, so the per-user share of the shared pool was per account. Accounts
that exist already keep working (approved); new ones registered while approval is on
(ASSISTANT_REGISTRATION=approval) wait for an operator.
token_version: carried in session tokens; signing out or a new password bumps it, so a token
stops working at once instead of living out its 7 days.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite supports it with a constant default): a batch "move and copy" would
    # DROP the user table, which every other table references.
    op.add_column("user", sa.Column("approved", sa.Boolean(create_constraint=False), server_default=sa.true(), nullable=False))
    op.add_column("user", sa.Column("token_version", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("user", "token_version")
    op.drop_column("user", "approved")
