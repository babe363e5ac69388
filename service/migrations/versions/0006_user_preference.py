"""userpreference: custom instructions, reply defaults and theme per user (issue 15).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:01:47.091036
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('userpreference',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('instructions', sa.Text(), server_default='', nullable=False),
    sa.Column('temperature', sa.Float(), nullable=True),
    sa.Column('max_new_tokens', sa.Integer(), nullable=True),
    sa.Column('theme', sa.String(length=16), server_default='system', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('user_id')
    )


def downgrade() -> None:
    op.drop_table('userpreference')
