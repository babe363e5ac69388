"""Storage units on a real SQLite database: one feedback per user and message, deletes, threads."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session, select

from service import crud
from service.db import init_db, make_engine
from service.models import Feedback, Message, Rating


def _db(make_settings):
    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)
    return engine


def test_sqlite_runs_in_wal_mode(make_settings):
    engine = _db(make_settings)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_feedback_upsert_and_conversation_delete(make_settings):
    engine = _db(make_settings)
    with Session(engine) as s:
        u = crud.create_user(s, username="u1", password="password1")
        conv = crud.create_conversation(s, user_id=u.id, title="t")
        q = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="user", content="q")
        a = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="assistant", content="a", parent_id=q.id, alternative_group=q.id)
        crud.upsert_feedback(s, user_id=u.id, message_id=a.id, rating=Rating.down, reasons=["harmful"], comment=None)
        crud.upsert_feedback(s, user_id=u.id, message_id=a.id, rating=Rating.up, reasons=[], comment="ok")
        rows = s.exec(select(Feedback)).all()
        assert len(rows) == 1 and rows[0].rating == Rating.up and rows[0].comment == "ok"
        assert [m.id for m in crud.thread(s, leaf=a)] == [q.id, a.id]
        assert crud.default_parent(s, conversation_id=conv.id).id == a.id
        crud.delete_conversation(s, conv=conv)
        assert s.exec(select(Message)).all() == [] and s.exec(select(Feedback)).all() == []


def test_username_taken(make_settings):
    import pytest

    engine = _db(make_settings)
    with Session(engine) as s:
        crud.create_user(s, username="same", password="password1")
        with pytest.raises(crud.Conflict):
            crud.create_user(s, username="same", password="password2")


def test_same_label_in_two_stores_gets_two_engine_keys(make_settings, tmp_path):
    """A label like ``u2-v1`` repeats across stores (a reset, a reused user id); the engine's cache key
    must not, or a shared engine would serve the first store's weights for the second's adapter."""
    from service import adapter_store

    src = tmp_path / "src"
    src.mkdir()
    for name in adapter_store.REQUIRED_FILES:
        (src / name).write_text("{}")
    refs = []
    for _ in range(2):
        settings = make_settings()
        engine = make_engine(settings)
        init_db(engine)
        with Session(engine) as s:
            u = crud.create_user(s, username="same", password="password1")
            row = adapter_store.publish(settings, s, user_id=u.id, src_dir=src, metadata={})
            refs.append((adapter_store.label_of(row), adapter_store.ref_for(settings, row)))
            assert adapter_store.ref_for(settings, row).key == refs[-1][1].key  # stable for one version
    (label_a, ref_a), (label_b, ref_b) = refs
    assert label_a == label_b and ref_a.key != ref_b.key and ref_a.key.startswith(label_a)


def test_publishing_by_move_renames_the_trainers_directory_into_the_store(make_settings, tmp_path):
    """The trainer's scratch directory becomes the version (no second copy of the weights); a copy from
    elsewhere leaves its source alone. Either way the version holds only the files the store keeps."""
    import json

    from service import adapter_store

    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)

    def scratch(where):
        where.mkdir(parents=True)
        (where / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/somewhere/local"}))
        (where / "adapter_model.safetensors").write_bytes(b"weights")
        (where / "README.md").write_text("PEFT's model card")
        return where

    with Session(engine) as s:
        u = crud.create_user(s, username="mover", password="password1")
        moved = scratch(settings.adapters_dir / ".tmp" / "run-1-user-1")
        inode = (moved / "adapter_model.safetensors").stat().st_ino
        row = adapter_store.publish(settings, s, user_id=u.id, src_dir=moved, metadata={}, move=True)
        final = settings.adapters_dir / row.path
        assert not moved.exists()
        assert (final / "adapter_model.safetensors").stat().st_ino == inode  # renamed, not copied
        assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "metadata.json"]
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] != "/somewhere/local"
        copied = scratch(tmp_path / "elsewhere")
        row = adapter_store.publish(settings, s, user_id=u.id, src_dir=copied, metadata={})
        assert copied.exists() and (settings.adapters_dir / row.path / "adapter_model.safetensors").read_bytes() == b"weights"
