"""API tests: a whole chat turn on the real embedded model, over the WebSocket."""

from __future__ import annotations

from tests.service.conftest import chat_turn, signup


def test_turn_streams_and_stores_reply(client):
    alice = signup(client, "alice")
    out = chat_turn(client, alice["token"], "What is the capital of France?", max_new_tokens=12)
    assert "error" not in out, out
    (start,) = out["starts"]
    mid = start["message_id"]
    end = out["ends"][mid]
    assert end["finish_reason"] in ("stop", "length")
    assert end["adapter_version"] is None  # no adapter yet: the base model answered
    tokens = [f for f in out["frames"] if f["type"] == "token"]
    assert len(tokens) >= 2, "the reply must stream in several chunks"
    assert "Paris" in out["text"][mid]

    conv = client.get(f"/api/conversations/{start['conversation_id']}", headers=alice["headers"]).json()
    roles = [m["role"] for m in conv["messages"]]
    assert roles == ["user", "assistant"]
    stored = conv["messages"][1]
    assert stored["id"] == mid and stored["content"] == out["text"][mid]
    assert stored["parent_id"] == start["user_message_id"] and stored["finish_reason"] == end["finish_reason"]
