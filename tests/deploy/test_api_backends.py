"""The storage and API flows on both database backends (SQLite and PostgreSQL).

Each test runs once per backend (the ``db_url`` fixture); on PostgreSQL each
gets a database of its own. The flows are those a user notices: sign up,
chat, rate, rank, export, delete, another user's objects answer 404, and
everything survives a restart.
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlmodel import Session, select

from service import crud, db
from service.models import Feedback, Rating
from tests.service.conftest import chat_turn, signup


def test_storage_units(db_url, make_settings):
    engine = db.make_engine(make_settings(database_url=db_url))
    db.init_db(engine)
    with Session(engine) as s:
        u = crud.create_user(s, username="u1", password="password1")
        try:
            crud.create_user(s, username="u1", password="password2")
            raise AssertionError("a taken username must raise Conflict")
        except crud.Conflict:
            pass
        conv = crud.create_conversation(s, user_id=u.id, title="t")
        q = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="user", content="q")
        a = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="assistant", content="a", parent_id=q.id, alternative_group=q.id)
        crud.upsert_feedback(s, user_id=u.id, message_id=a.id, rating=Rating.down, reasons=["harmful"], comment=None)
        crud.upsert_feedback(s, user_id=u.id, message_id=a.id, rating=Rating.up, reasons=[], comment="ok")
        rows = s.exec(select(Feedback)).all()
        assert [(f.rating, f.comment) for f in rows] == [(Rating.up, "ok")]
        assert rows[0].updated_at.tzinfo is not None
        assert [m.id for m in crud.thread(s, leaf=a)] == [q.id, a.id]
        crud.delete_conversation(s, conv=conv)
        assert s.exec(select(Feedback)).all() == []
    engine.dispose()


def test_concurrent_first_ratings_leave_one_row(db_url, make_settings):
    """Several tabs rate the same reply at once: the unique constraint holds and nobody gets an error."""
    engine = db.make_engine(make_settings(database_url=db_url))
    db.init_db(engine)
    with Session(engine) as s:
        u = crud.create_user(s, username="racer", password="password1")
        conv = crud.create_conversation(s, user_id=u.id, title="t")
        q = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="user", content="q")
        a = crud.add_message(s, conversation_id=conv.id, user_id=u.id, role="assistant", content="a", alternative_group=q.id)
        user_id, message_id = u.id, a.id
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def rate(rating: Rating) -> None:
        try:
            with Session(engine) as s:
                barrier.wait()
                crud.upsert_feedback(s, user_id=user_id, message_id=message_id, rating=rating, reasons=[], comment=None)
        except BaseException as exc:  # re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=(r,)) for r in (Rating.up, Rating.down, Rating.up, Rating.down)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Session(engine) as s:
        assert len(s.exec(select(Feedback)).all()) == 1
    engine.dispose()


def test_chat_rate_rank_export_and_isolation(app_factory, db_url):
    client = app_factory(database_url=db_url)
    assert db.current_revision(client.app.state.db) == db.head_revision(), "the app migrates at start"
    alice = signup(client, "alice")
    h = alice["headers"]
    assert client.post("/api/auth/register", json={"username": "alice", "password": "correct-horse-1"}).status_code == 409

    out = chat_turn(client, alice["token"], "Name a colour.", alternatives=2, max_new_tokens=3)
    assert "error" not in out, out
    conv_id = out["starts"][0]["conversation_id"]
    a, b = (s["message_id"] for s in out["starts"])

    # feedback: the second rating replaces the first
    r = client.post(f"/api/messages/{a}/feedback", json={"rating": "down", "reasons": ["inaccurate"], "comment": "no"}, headers=h)
    assert r.status_code == 200, r.text
    r = client.post(f"/api/messages/{a}/feedback", json={"rating": "up", "reasons": ["helpful"]}, headers=h)
    assert r.status_code == 200 and datetime.fromisoformat(r.json()["updated_at"]).tzinfo is not None
    # ranking: the second ranking of the turn replaces the first
    first = client.post("/api/rankings", json={"message_ids": [b, a]}, headers=h)
    second = client.post("/api/rankings", json={"message_ids": [a, b]}, headers=h)
    assert first.status_code == second.status_code == 201 and first.json()["id"] == second.json()["id"]
    export = client.get("/api/me/feedback/export", headers=h).json()
    assert [(f["message_id"], f["rating"], f["reasons"]) for f in export["feedback"]] == [(a, "up", ["helpful"])]
    assert [rk["message_ids"] for rk in export["rankings"]] == [[a, b]]

    # another user sees none of it
    mallory = signup(client, "mallory")
    hm = mallory["headers"]
    assert client.get(f"/api/conversations/{conv_id}", headers=hm).status_code == 404
    assert client.post(f"/api/messages/{a}/feedback", json={"rating": "down"}, headers=hm).status_code == 404
    assert client.post("/api/rankings", json={"message_ids": [a, b]}, headers=hm).status_code == 404
    assert client.get("/api/conversations", headers=hm).json() == []

    # the OpenAI-compatible route stores its completion too
    r = client.post("/v1/chat/completions", headers=h, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    completion_id = int(r.json()["id"])
    assert client.post(f"/api/messages/{completion_id}/feedback", json={"rating": "up"}, headers=h).status_code == 200

    # a restart on the same database keeps accounts and data (and migrating again is a no-op)
    again = app_factory(database_url=db_url)
    token = again.post("/api/auth/token", data={"username": "alice", "password": "correct-horse-1"}).json()["access_token"]
    h2 = {"Authorization": f"Bearer {token}"}
    detail = again.get(f"/api/conversations/{conv_id}", headers=h2).json()
    rated = next(m for m in detail["messages"] if m["id"] == a)
    assert rated["feedback"] == {"rating": "up", "reasons": ["helpful"], "comment": None, "score": None}
    assert len(again.get("/api/conversations", headers=h2).json()) == 2

    # deleting the conversation takes its feedback and rankings with it
    assert again.delete(f"/api/conversations/{conv_id}", headers=h2).status_code == 204
    export = again.get("/api/me/feedback/export", headers=h2).json()
    assert [f["message_id"] for f in export["feedback"]] == [completion_id] and export["rankings"] == []
    assert again.delete("/api/me/feedback", headers=h2).status_code == 204
    assert again.get("/api/me/feedback/export", headers=h2).json()["feedback"] == []


def test_hostile_ids_and_text_answer_4xx_not_5xx(make_settings, shared_engine, db_url):
    """Found by fuzzing on PostgreSQL: ids past SQL INTEGER and NUL characters used to reach the database (500)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(make_settings(database_url=db_url), engine=shared_engine),
                    base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
        u = signup(client, "hostile")
        h = u["headers"]
        out = chat_turn(client, u["token"], "Hi", max_new_tokens=2)
        conv_id, mid = out["starts"][0]["conversation_id"], out["starts"][0]["message_id"]
        big = 2**40
        requests = [
            ("GET", f"/api/conversations/{big}", {}),
            ("PATCH", f"/api/conversations/{big}", {"json": {"title": "x"}}),
            ("DELETE", f"/api/conversations/{-big}", {}),
            ("POST", f"/api/messages/{big}/feedback", {"json": {"rating": "up"}}),
            ("POST", "/api/rankings", {"json": {"message_ids": [big, big + 1]}}),
            ("POST", "/api/auth/token", {"data": {"username": "ho\x00stile", "password": "correct-horse-1"}}),
            ("PATCH", f"/api/conversations/{conv_id}", {"json": {"title": "a\x00b"}}),
            ("POST", f"/api/messages/{mid}/feedback", {"json": {"rating": "up", "comment": "a\x00b"}}),
            ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "a\x00b"}], "max_tokens": 2}}),
            ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "ab"}], "max_tokens": 2, "seed": 2**70}}),
        ]
        answers = {(m, p, repr(kw)): client.request(m, p, headers=h, **kw).status_code for m, p, kw in requests}
        assert {k: v for k, v in answers.items() if not 400 <= v < 500} == {}
        with client.websocket_connect("/api/chat") as ws:
            ws.send_json({"type": "auth", "token": u["token"]})
            ws.receive_json()
            for frame in ({"type": "chat", "content": "hi", "conversation_id": big}, {"type": "chat", "content": "hi", "parent_id": big},
                          {"type": "regenerate", "message_id": big}, {"type": "cancel", "message_id": big},
                          {"type": "chat", "content": "a\x00b"}):
                ws.send_json(frame)
                assert ws.receive_json()["code"] == "bad_frame", frame
            ws.send_json({"type": "ping"})
            assert ws.receive_json() == {"type": "pong"}, "the socket survives"
        assert client.get(f"/api/conversations/{conv_id}", headers=h).json()["title"] != "a\x00b"
