"""Ids are never reused, and a session token is bound to its account row (issue 28, H1).

SQLite gives a new row ``max(rowid) + 1``, so deleting the newest account freed its id for the
next one and the deleted account's token signed in as the newcomer. On SQLite the tables whose
ids are named by tokens, keys or provenance (``user``, ``apikey``, ``conversation``, ``message``,
``adapterversion``) are rebuilt with AUTOINCREMENT, which never hands out an id again;
PostgreSQL's sequences never did. Every account also gets a random ``token_salt`` that its
tokens carry: a token names one row, not one id. Existing accounts get salts of their own, so
tokens issued before this revision end (their holders sign in again).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 05:40:00
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Parents before children: a rebuilt child's foreign keys name the rebuilt parent.
NEVER_REUSED = ("user", "adapterversion", "apikey", "conversation", "message")


def upgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("token_salt", sa.String(length=32), nullable=False, server_default=""))
    bind = op.get_bind()
    ids = [r[0] for r in bind.execute(sa.text('SELECT id FROM "user"'))]
    for user_id in ids:
        bind.execute(sa.text('UPDATE "user" SET token_salt = :s WHERE id = :i'), {"s": secrets.token_hex(8), "i": user_id})
    if bind.dialect.name == "sqlite":  # service.db.migrate runs SQLite's revisions with foreign keys off
        for table in NEVER_REUSED:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass


def downgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.drop_column("token_salt")
