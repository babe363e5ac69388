"""user.ratings_deleted_at: when the user last deleted their ratings (issue 13, the Open WebUI import).

An importer of ratings kept elsewhere (Open WebUI's feedback export) must not bring back what the
user deleted here: it skips ratings made before this time.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("user", sa.Column("ratings_deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("user", "ratings_deleted_at")
