"""Every limit answers with a clear 413/422/429 or error frame, never a 500, and loses no row."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.app import create_app
from service.engine.naive import NaiveEngine
from service.model_loading import load_base_model, load_tokenizer
from service.models import Message
from tests.service.conftest import chat_turn, signup


def test_http_limits(app_factory):
    client = app_factory(max_body_bytes=4096, max_new_tokens_limit=64)
    u = signup(client, "limits")
    r = client.post("/api/auth/register", content=b'{"username":"' + b"x" * 8000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, headers=u["headers"])
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = client.post("/v1/chat/completions", json={"messages": []}, headers=u["headers"])
    assert r.status_code == 422
    r = client.post("/api/messages/1/feedback", json={"rating": "meh"}, headers=u["headers"])
    assert r.status_code == 422
    r = client.post("/api/messages/1/feedback", json={"rating": "up", "reasons": ["made_up_reason"]}, headers=u["headers"])
    assert r.status_code == 422 and "allowed" in r.text
    r = client.post("/api/messages/1/feedback", json={"rating": "up", "comment": "x" * 3000}, headers=u["headers"])
    assert r.status_code == 422


def test_socket_limits(app_factory):
    client = app_factory(max_message_chars=50, max_alternatives=2, max_new_tokens_limit=32)
    u = signup(client, "socketlimits")
    for frame, code in (({"content": "x" * 51}, "too_large"), ({"content": "hi", "alternatives": 3}, "bad_frame"),
                        ({"content": "hi", "max_new_tokens": 33}, "too_large"), ({"content": "   "}, "bad_frame")):
        out = chat_turn(client, u["token"], **frame)
        assert out["error"]["code"] == code, (frame, out["error"])
    with Session(client.app.state.db) as s:
        assert s.exec(select(Message)).all() == [], "rejected frames must not store rows"


def test_concurrent_generations_per_user(app_factory):
    client = app_factory(max_concurrent_per_user=1)
    u = signup(client, "busyuser")
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": u["token"]})
        ws.receive_json()
        ws.send_json({"type": "chat", "content": "Tell me a long story.", "max_new_tokens": 60})
        start = ws.receive_json()
        assert start["type"] == "start"
        ws.send_json({"type": "chat", "content": "And another one.", "max_new_tokens": 5})
        while True:
            f = ws.receive_json()
            if f["type"] == "error":
                assert f["code"] == "too_many"
                break
            assert f["type"] == "token"
        ws.send_json({"type": "cancel", "message_id": start["message_id"]})
        while ws.receive_json()["type"] != "end":
            pass
        # the slot is free again
        ws.send_json({"type": "chat", "content": "Short one.", "max_new_tokens": 2})
        assert ws.receive_json()["type"] == "start"
        while ws.receive_json()["type"] != "end":
            pass


def test_full_queue_gives_busy_and_no_empty_row(make_settings):
    settings = make_settings()
    # A real engine that is never started, with room for one waiting request: the second is refused.
    engine = NaiveEngine(load_base_model(settings), load_tokenizer(settings), max_queue=1)
    with TestClient(create_app(settings, engine=engine), base_url="http://127.0.0.1:8000") as client:
        u = signup(client, "queued")
        with client.websocket_connect("/api/chat") as ws:
            ws.send_json({"type": "auth", "token": u["token"]})
            ws.receive_json()
            ws.send_json({"type": "chat", "content": "first", "max_new_tokens": 2})
            assert ws.receive_json()["type"] == "start"
            ws.send_json({"type": "chat", "content": "second", "max_new_tokens": 2})
            f = ws.receive_json()
            assert f["type"] == "error" and f["code"] == "busy"
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "third"}]}, headers=u["headers"])
        assert r.status_code == 429
        with Session(client.app.state.db) as s:
            assistants = s.exec(select(Message).where(Message.role == "assistant")).all()
            users = s.exec(select(Message).where(Message.role == "user")).all()
        assert len(assistants) == 1, "refused replies leave no empty assistant rows"
        assert {m.content for m in users} == {"first", "second", "third"}, "the user's words are kept"
