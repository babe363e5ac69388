"""Alembic migrations on SQLite and PostgreSQL: models and revisions agree, upgrades keep data.

If ``test_models_match_migrations`` fails, service/models.py changed without a
revision: run ``python -m service.migrations new "what changed"``, review the
file it writes under service/migrations/versions/, and run these tests again.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session, SQLModel, create_engine

from service import db
from service.models import Feedback, Ranking, Rating, User

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def engine(db_url):
    e = create_engine(db_url)
    yield e
    e.dispose()


def _tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _schema(engine) -> dict:
    """Everything about each table that the database reports, in a comparable form."""
    insp = sa.inspect(engine)
    out = {}
    for t in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"])) for f in insp.get_foreign_keys(t)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            "uniques": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)),
        }
    return out


def test_models_match_migrations(engine):
    db.migrate(engine)
    diffs = db.schema_diff(engine)
    assert diffs == [], (
        "service/models.py differs from the schema the migrations build:\n  "
        + "\n  ".join(map(str, diffs))
        + '\nAdd a revision: python -m service.migrations new "what changed" (then review it and rerun the tests).'
    )


def test_migrations_build_what_create_all_builds(make_db_url):
    """Stricter than autogenerate: column defaults and sequences too (e.g. schedule.id has none)."""
    migrated, created = create_engine(make_db_url()), create_engine(make_db_url())
    try:
        db.migrate(migrated)
        SQLModel.metadata.create_all(created)
        assert _schema(migrated) == _schema(created)
    finally:
        migrated.dispose(), created.dispose()


def test_start_migrates_to_head_and_is_idempotent(engine):
    db.init_db(engine)
    db.init_db(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert set(SQLModel.metadata.tables) <= _tables(engine)


def _seed_at_baseline(conn) -> None:
    """Rows in every kind of column of revision 0001, written with Core so later models cannot change them."""
    t = {name: sa.table(name, *(sa.column(c) for c in cols)) for name, cols in {
        "user": ("id", "username", "password_hash", "role", "created_at"),
        "conversation": ("id", "user_id", "title", "created_at", "updated_at"),
        "message": ("id", "conversation_id", "user_id", "role", "content", "parent_id", "alternative_group",
                    "alternative_index", "adapter_version_id", "prompt_tokens", "completion_tokens", "created_at"),
        "feedback": ("id", "user_id", "message_id", "rating", "reasons", "comment", "source", "created_at", "updated_at"),
        "ranking": ("id", "user_id", "alternative_group", "message_ids", "created_at", "updated_at"),
        "adapterversion": ("id", "user_id", "version", "status", "path", "metrics", "created_at"),
        "schedule": ("id", "cron", "enabled", "updated_at"),
    }.items()}
    conn.execute(t["user"].insert(), [{"id": 1, "username": "alice", "password_hash": "h", "role": "user", "created_at": T0}])
    conn.execute(t["adapterversion"].insert(), [{"id": 1, "user_id": 1, "version": 1, "status": "promoted",
                                                 "path": "user-1/v1", "metrics": '{"reward": 0.5}', "created_at": T0}])
    conn.execute(t["conversation"].insert(), [{"id": 1, "user_id": 1, "title": "Capitals", "created_at": T0, "updated_at": T0}])
    base = {"conversation_id": 1, "user_id": 1, "prompt_tokens": 0, "completion_tokens": 0, "created_at": T0}
    conn.execute(t["message"].insert(), [
        {**base, "id": 1, "role": "user", "content": "Capital of France?", "parent_id": None, "alternative_group": None,
         "alternative_index": 0, "adapter_version_id": None},
        {**base, "id": 2, "role": "assistant", "content": "Paris.", "parent_id": 1, "alternative_group": 1,
         "alternative_index": 0, "adapter_version_id": 1},
        {**base, "id": 3, "role": "assistant", "content": "Lyon.", "parent_id": 1, "alternative_group": 1,
         "alternative_index": 1, "adapter_version_id": None},
    ])
    conn.execute(t["feedback"].insert(), [{"id": 1, "user_id": 1, "message_id": 3, "rating": "down",
                                           "reasons": '["inaccurate"]', "comment": "Paris, not Lyon",
                                           "source": "human", "created_at": T0, "updated_at": T0}])
    conn.execute(t["ranking"].insert(), [{"id": 1, "user_id": 1, "alternative_group": 1, "message_ids": "[2, 3]",
                                          "created_at": T0, "updated_at": T0}])
    conn.execute(t["schedule"].insert(), [{"id": 1, "cron": "0 3 * * *", "enabled": False, "updated_at": T0}])
    if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them, as a real history would
        for table in ("user", "adapterversion", "conversation", "message", "feedback", "ranking"):
            conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), (SELECT max(id) FROM \"{table}\"))"))


def _assert_seed_intact(engine) -> None:
    with Session(engine) as s:
        fb = s.get(Feedback, 1)
        assert (fb.rating, fb.reasons, fb.comment, fb.message_id) == (Rating.down, ["inaccurate"], "Paris, not Lyon", 3)
        assert fb.updated_at == T0
        assert s.get(Ranking, 1).message_ids == [2, 3]
        rows = s.execute(sa.text("SELECT id, content, adapter_version_id FROM message ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(1, "Capital of France?", None), (2, "Paris.", 1), (3, "Lyon.", None)]
        origins = s.execute(sa.text("SELECT origin FROM message ORDER BY id")).scalars().all()
        assert origins == ["client", "generated", "generated"]  # 0004: replies in a group were generated here
        assert s.execute(sa.text("SELECT cron, enabled FROM schedule")).one() == ("0 3 * * *", False)
        # new rows still get fresh ids after the upgrade
        s.add(Feedback(user_id=1, message_id=2, rating=Rating.up, reasons=["accurate"]))
        s.commit()


def test_upgrade_from_first_release_keeps_data(engine):
    db.migrate(engine, "0001")
    with engine.begin() as conn:
        _seed_at_baseline(conn)
    db.migrate(engine)
    assert db.current_revision(engine) == db.head_revision()
    _assert_seed_intact(engine)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("message")}
    assert "ix_message_adapter_version_id" in indexes  # revision 0002 ran


def test_upgraded_databases_never_hand_out_a_deleted_id_again(engine):
    """Revision 0009 (issue 28, H1): the deleted newest user's id stays gone, and foreign keys still hold after."""
    db.migrate(engine, "0008")
    with engine.begin() as conn:
        conn.execute(sa.text('INSERT INTO "user" (id, username, password_hash, role, created_at) VALUES '
                             "(1, 'alice', 'h', 'user', :t), (2, 'mallory', 'h', 'user', :t)"), {"t": T0})
        conn.execute(sa.text("INSERT INTO conversation (id, user_id, title, created_at, updated_at) VALUES (1, 1, 'c', :t, :t)"),
                     {"t": T0})
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('\"user\"', 'id'), 2)"))
    db.migrate(engine)
    with engine.begin() as conn:
        salts = conn.execute(sa.text('SELECT token_salt FROM "user" ORDER BY id')).scalars().all()
        assert len(set(salts)) == 2 and all(len(s) == 16 for s in salts)  # each existing account its own salt
        conn.execute(sa.text('DELETE FROM "user" WHERE id = 2'))
    with Session(engine) as s:
        newcomer = User(username="victim", password_hash="h")
        s.add(newcomer)
        s.commit()
        assert newcomer.id == 3
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # keys are enforced again after the rebuild
        conn.execute(sa.text("INSERT INTO conversation (user_id, title, created_at, updated_at) VALUES (99, 'c', :t, :t)"),
                     {"t": T0})


def test_database_from_before_migrations_is_adopted(engine):
    """`create_all` databases (no alembic_version) at the first release's schema are stamped, then upgraded."""
    db.migrate(engine, "0001")
    with engine.begin() as conn:
        _seed_at_baseline(conn)
        conn.execute(sa.text("DROP TABLE alembic_version"))
    db.init_db(engine)
    assert db.current_revision(engine) == db.head_revision()
    _assert_seed_intact(engine)


def test_unrecognised_unversioned_database_is_refused_untouched(engine):
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE "user" (id INTEGER PRIMARY KEY, name VARCHAR(10))'))
    with pytest.raises(db.MigrationError) as err:
        db.init_db(engine)
    msg = str(err.value)
    assert "user.username is missing" in msg and "user.name is unexpected" in msg and "table 'message' is missing" in msg
    assert "backup" in msg and "stamp" in msg
    assert _tables(engine) == {"user"}


def test_downgrade_to_base_and_back(engine):
    db.migrate(engine)
    with engine.begin() as conn:
        command.downgrade(db.alembic_config(conn), "base")
    assert _tables(engine) <= {"alembic_version"}
    if engine.dialect.name == "postgresql":  # the enum types go too, or the next upgrade would fail
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_type WHERE typname IN ('role', 'rating')")).scalar() == 0
    db.migrate(engine)
    assert db.schema_diff(engine) == []


def test_concurrent_starts_migrate_once(make_postgres_database):
    """The server and the worker start together in docker compose: both call migrate; neither may fail."""
    url = make_postgres_database()
    engines = [create_engine(url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(e):
        try:
            db.migrate(e)
        except BaseException as exc:  # collected and re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert db.current_revision(engines[0]) == db.head_revision()
    for e in engines:
        e.dispose()
