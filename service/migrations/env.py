"""Alembic environment: always online, on the connection ``service.db.migrate`` hands over.

Offline SQL generation is not supported: run migrations against a database
(``python -m service.migrations upgrade``).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql import sqltypes

from service import models  # noqa: F401  (registers the tables on SQLModel.metadata)


def _render_item(type_, obj, autogen_context):
    """Autogenerate writes SQLModel's column types as the plain SQLAlchemy types they store as,
    so revisions need no sqlmodel import and do not change if sqlmodel renames its types."""
    if type_ == "type" and isinstance(obj, sqltypes.AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    utc = getattr(sqltypes, "UTCDateTime", None)  # sqlmodel >= 0.0.50: aware datetimes, TIMESTAMPTZ
    if type_ == "type" and utc is not None and isinstance(obj, utc):
        return "sa.DateTime(timezone=True)"
    return False


config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("service/migrations runs only through service.db.migrate(...) or `python -m service.migrations`")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    compare_type=True,
    render_item=_render_item,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
