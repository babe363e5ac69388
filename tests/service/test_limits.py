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
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]  # /v1 errors are OpenAI's error object
    r = client.post("/v1/chat/completions", json={"messages": []}, headers=u["headers"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
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


def test_too_many_messages_over_v1_is_413_and_stores_nothing(app_factory):
    client = app_factory(max_messages=8)
    u = signup(client, "manymessages")
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(9)]
    r = client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 2}, headers=u["headers"])
    assert r.status_code == 413 and "ASSISTANT_MAX_MESSAGES" in r.text
    with Session(client.app.state.db) as s:
        assert s.exec(select(Message)).all() == []


def test_prompt_truncation_renders_log_n_times_and_keeps_the_newest_turns(app_factory):
    client = app_factory(max_input_tokens=200)
    chat = client.app.state.chat
    tok = chat.engine.tokenizer
    calls = []
    original = tok.apply_chat_template

    def counting(messages, **kw):
        calls.append(len(messages))
        return original(messages, **kw)

    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"} for i in range(2001)]
    tok.apply_chat_template = counting
    try:
        ids = chat.render_prompt(turns)
    finally:
        tok.apply_chat_template = original
    # 2,001 turns: one full rendering, then bisection over the drop count (the old loop rendered ~2,000 times)
    assert len(calls) <= 14, len(calls)
    assert len(ids) <= 200
    text = tok.decode(ids)
    assert "message number 2000" in text and "message number 1990" in text and "message number 10\n" not in text
    # exactly the newest suffix that fits: one more turn would not
    def length(messages) -> int:
        ids = original(messages, add_generation_prompt=True, tokenize=True)
        return len(ids if isinstance(ids, list) else ids["input_ids"])

    kept = text.count("message number ")
    assert length(turns[-kept:]) <= 200 < length(turns[-(kept + 1):])


def test_prompt_preparation_has_its_own_bounded_pool(app_factory):
    """Issue 12, finding 1: rendering prompts runs in a pool of ``ASSISTANT_PROMPT_WORKERS`` threads,
    so a burst of slow renderings queues there while other routes keep answering."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    client = app_factory(prompt_workers=1)
    chat = client.app.state.chat
    users = [signup(client, f"burst{i}") for i in range(3)]
    running, most = [0], [0]
    lock = threading.Lock()
    render = chat.render_prompt

    def slow_render(messages):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(1.0)
        with lock:
            running[0] -= 1
        return render(messages)

    chat.render_prompt = slow_render
    body = {"model": "smollm2-135m-instruct", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(client.post, "/v1/chat/completions", json=body, headers=u["headers"]) for u in users]
        time.sleep(0.3)
        started = time.monotonic()
        assert client.get("/api/me", headers=users[0]["headers"]).status_code == 200
        other_route_s = time.monotonic() - started
        assert [f.result().status_code for f in futures] == [200, 200, 200]
    assert most[0] == 1 and other_route_s < 1.0, (most, other_route_s)
