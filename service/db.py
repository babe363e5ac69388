"""Database engine, sessions and migrations. SQLite (WAL, busy timeout) by default; PostgreSQL by URL.

The schema is owned by the Alembic revisions in ``service/migrations/versions``:
``init_db`` (called by the service at start) upgrades the database to the
newest revision. A change to ``service/models.py`` needs a new revision
(``python -m service.migrations new "what changed"``); a test fails until it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from service import models  # noqa: F401  (registers the tables)
from service.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The revision that matches the schema `SQLModel.metadata.create_all` made before migrations
# existed; such a database is adopted at this revision (see _adopt_unversioned).
BASELINE_REVISION = "0001"
# Any constant: serializes concurrent `migrate` calls (server and worker starting together) on PostgreSQL.
_PG_MIGRATION_LOCK = 0x61737369  # "assi"


class MigrationError(RuntimeError):
    """The database cannot be migrated as it is; the message says what to do."""


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **_pool(settings))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **_pool(settings))


def _pool(settings: Settings) -> dict:
    return {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout}


def alembic_config(connection: Connection | None = None):
    """Alembic's configuration, built here so the installed package needs no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest), in one transaction where the backend allows.

    A database made by ``create_all`` before migrations existed (tables, no
    ``alembic_version``) is adopted at the baseline revision first, if its
    tables match it; otherwise this raises MigrationError and changes nothing.
    """
    engine = create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        if engine.dialect.name == "sqlite":
            _migrate_sqlite(engine, revision)
        else:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                _upgrade(conn, revision, adopt=True)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


def _migrate_sqlite(engine: Engine, revision: str) -> None:
    """SQLite's own procedure for changing a table (https://sqlite.org/lang_altertable.html): foreign
    keys off (only possible outside a transaction), rebuild in one transaction, check every foreign
    key before committing, keys on again. Dropping a parent table with keys on would fail, or delete."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            with conn.begin():
                _upgrade(conn, revision, adopt=True)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise MigrationError(f"the migration would leave rows pointing at missing ones: {broken[:5]}; "
                                         "nothing was changed")
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def _upgrade(conn: Connection, revision: str, *, adopt: bool) -> None:
    from alembic import command

    cfg = alembic_config(conn)
    if adopt and _adopt_unversioned(conn):
        command.stamp(cfg, BASELINE_REVISION)
    command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError(f"no revisions under {MIGRATIONS_DIR / 'versions'}; the package is incomplete")
    return head


def schema_diff(engine: Engine) -> list:
    """What Alembic's autogenerate sees between ``service/models.py`` and the database (empty = in sync)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(mc, SQLModel.metadata)


def _adopt_unversioned(conn: Connection) -> bool:
    """True if ``conn`` holds a pre-migrations database to stamp at the baseline revision."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables or not tables & set(SQLModel.metadata.tables):
        return False  # versioned, or empty (or someone else's tables only): migrate from scratch
    baseline = _baseline_schema()
    ours = tables & baseline.keys()
    problems = [f"table {t!r} is missing" for t in sorted(baseline.keys() - tables)]
    for table in sorted(ours):
        have = {c["name"] for c in inspect(conn).get_columns(table)}
        problems += [f"{table}.{c} is missing" for c in sorted(baseline[table] - have)]
        problems += [f"{table}.{c} is unexpected" for c in sorted(have - baseline[table])]
    if problems:
        raise MigrationError(
            f"the database at {conn.engine.url.render_as_string(hide_password=True)} has the service's tables but no "
            f"alembic_version table, and they do not match revision {BASELINE_REVISION} (the schema before migrations): "
            + "; ".join(problems)
            + ". Restore it from a backup, or, if you know which revision it matches, record that with "
            "`python -m service.migrations stamp <revision>` and start again."
        )
    logger.warning("database has no alembic_version table; adopting it at revision %s (it matches)", BASELINE_REVISION)
    return True


def _baseline_schema() -> dict[str, set[str]]:
    """Table -> column names at the baseline revision, built by running it on an in-memory SQLite."""
    scratch = create_engine("sqlite://", poolclass=StaticPool)
    try:
        with scratch.begin() as conn:
            _upgrade(conn, BASELINE_REVISION, adopt=False)
            insp = inspect(conn)
            return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names() if t != "alembic_version"}
    finally:
        scratch.dispose()


def init_db(engine: Engine) -> None:
    """Bring the database to the newest schema (runs the migrations; the service calls this at start)."""
    migrate(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session

