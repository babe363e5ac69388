"""Connection and rate limits (issue 12, finding 11). Before: 40 unauthenticated sockets in
0.28 s, no idle timeout, no per-user request rate, no storage quota."""

from __future__ import annotations

import time

import pytest
from starlette.websockets import WebSocketDisconnect

from service.settings import Settings
from tests.service.conftest import chat_turn, signup


def test_defaults_outside_dev_mode():
    s = Settings(secret_key="x" * 40)
    assert (s.handshake_limit, s.request_limit, s.ws_per_user) == (120, 60, 8)


def test_handshakes_per_address_are_limited(app_factory):
    client = app_factory(ws_handshakes_per_minute=3)
    for _ in range(3):
        with client.websocket_connect("/api/chat") as ws:
            ws.send_json({"type": "ping"})  # unauthenticated: told so, closed
            assert ws.receive_json()["code"] == "unauthorized"
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/api/chat") as ws:
            ws.receive_json()
    assert refused.value.code == 1008


def test_sockets_per_user_are_capped_and_idle_ones_closed(app_factory):
    client = app_factory(ws_per_user=2, ws_idle_timeout_s=1.0)
    u = signup(client, "tabs")
    with client.websocket_connect("/api/chat") as a, client.websocket_connect("/api/chat") as b:
        for ws in (a, b):
            ws.send_json({"type": "auth", "token": u["token"]})
            assert ws.receive_json()["type"] == "ready"
        with client.websocket_connect("/api/chat") as c:
            c.send_json({"type": "auth", "token": u["token"]})
            assert c.receive_json()["code"] == "too_many"
        started = time.monotonic()
        frame = a.receive_json()  # nothing sent: the server closes the idle socket
        assert frame["code"] == "idle" and time.monotonic() - started < 10
    with client.websocket_connect("/api/chat") as again:  # closed sockets free their places
        again.send_json({"type": "auth", "token": u["token"]})
        assert again.receive_json()["type"] == "ready"


def test_requests_per_minute_and_storage_quota(app_factory):
    client = app_factory(requests_per_minute=2)
    u = signup(client, "eager")
    body = {"model": "smollm2-135m-instruct", "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    assert [client.post("/v1/chat/completions", json=body, headers=u["headers"]).status_code for _ in range(2)] == [200, 200]
    assert client.post("/v1/chat/completions", json=body, headers=u["headers"]).status_code == 429
    assert chat_turn(client, u["token"], "hi", max_new_tokens=1)["error"]["code"] == "rate_limited"

    client = app_factory(max_messages_per_user=3)
    v = signup(client, "hoarder")
    assert client.post("/v1/chat/completions", json=body, headers=v["headers"]).status_code == 200  # 2 messages
    assert client.post("/v1/chat/completions", json=body, headers=v["headers"]).status_code == 200  # 4: over now
    r = client.post("/v1/chat/completions", json=body, headers=v["headers"])
    assert r.status_code == 413 and "limit is 3" in r.json()["error"]["message"]


def test_the_storage_quota_counts_characters_too(app_factory):
    """Issue 28, L3: the quota counted messages, so a user could store 100,000 messages of the longest
    size. A character quota beside it, counted at most once a minute per user."""
    client = app_factory(max_stored_chars_per_user=5000)
    u = signup(client, "writer")
    long = {"model": "smollm2-135m-instruct", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": "word " * 1100}]}  # 5,500 characters stored
    assert client.post("/v1/chat/completions", json=long, headers=u["headers"]).status_code == 200  # counted: 0 before it
    client.app.state.chat._chars.clear()  # a minute later (the count is cached for a minute)
    r = client.post("/v1/chat/completions", json=long, headers=u["headers"])
    assert r.status_code == 413 and "characters" in r.json()["error"]["message"] and "limit is 5000" in r.json()["error"]["message"]
    other = signup(client, "someone_else")
    assert client.post("/v1/chat/completions", json=long, headers=other["headers"]).status_code == 200  # per user
