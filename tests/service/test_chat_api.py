"""API tests: a whole chat turn on the real embedded model, over the WebSocket."""

from __future__ import annotations

from tests.service.conftest import NAME_THE_CAPITAL, chat_turn, signup


def test_turn_streams_and_stores_reply(client):
    alice = signup(client, "alice")
    # greedy: the server samples at 0.7 by default, and a sampled reply need not name Paris
    out = chat_turn(client, alice["token"], NAME_THE_CAPITAL, max_new_tokens=12, temperature=0.0)
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


def test_alternatives_rank_and_rate(client):
    bob = signup(client, "bob")
    h = bob["headers"]
    out = chat_turn(client, bob["token"], "Name a fruit.", alternatives=2, max_new_tokens=6, temperature=1.0)
    ids = [s["message_id"] for s in out["starts"]]
    assert len(ids) == 2 and {s["alternative"] for s in out["starts"]} == {0, 1}
    assert all(out["ends"][i]["finish_reason"] in ("stop", "length") for i in ids)

    r = client.post("/api/rankings", json={"message_ids": [ids[1], ids[0]]}, headers=h)
    assert r.status_code == 201, r.text
    # a later ranking of the same turn replaces the first
    r = client.post("/api/rankings", json={"message_ids": [ids[0], ids[1]]}, headers=h)
    assert r.status_code == 201
    export = client.get("/api/me/feedback/export", headers=h).json()
    assert [rk["message_ids"] for rk in export["rankings"]] == [[ids[0], ids[1]]]

    r = client.post(f"/api/messages/{ids[0]}/feedback", json={"rating": "down", "reasons": ["harmful", "too_long"], "comment": "no"}, headers=h)
    assert r.status_code == 200 and r.json()["reasons"] == ["harmful", "too_long"]
    r = client.post(f"/api/messages/{ids[0]}/feedback", json={"rating": "up", "reasons": ["helpful"]}, headers=h)
    assert r.status_code == 200
    export = client.get("/api/me/feedback/export", headers=h).json()
    assert len(export["feedback"]) == 1 and export["feedback"][0]["rating"] == "up"
    conv = client.get(f"/api/conversations/{out['starts'][0]['conversation_id']}", headers=h).json()
    rated = next(m for m in conv["messages"] if m["id"] == ids[0])
    assert rated["feedback"] == {"rating": "up", "reasons": ["helpful"], "comment": None, "score": None}
    # a 1-10 score beside the thumbs (issue 31); out of range is refused and changes nothing
    for bad in (0, 11, 2.5, "7"):
        assert client.post(f"/api/messages/{ids[0]}/feedback", json={"rating": "up", "score": bad}, headers=h).status_code == 422
    r = client.post(f"/api/messages/{ids[0]}/feedback", json={"rating": "up", "score": 9}, headers=h)
    assert r.status_code == 200 and r.json()["score"] == 9
    assert client.get("/api/me/feedback/export", headers=h).json()["feedback"][0]["score"] == 9


def test_ranking_must_be_one_turn(client):
    u = signup(client, "carol")
    a = chat_turn(client, u["token"], "One", max_new_tokens=3)
    b = chat_turn(client, u["token"], "Two", max_new_tokens=3)
    ids = [a["starts"][0]["message_id"], b["starts"][0]["message_id"]]
    r = client.post("/api/rankings", json={"message_ids": ids}, headers=u["headers"])
    assert r.status_code == 422
    r = client.post("/api/rankings", json={"message_ids": [ids[0], ids[0]]}, headers=u["headers"])
    assert r.status_code == 422


def test_follow_up_uses_history_and_regenerate_adds_sibling(client):
    u = signup(client, "dave")
    first = chat_turn(client, u["token"], "My name is Dave.", max_new_tokens=4)
    conv_id = first["starts"][0]["conversation_id"]
    second = chat_turn(client, u["token"], "What is my name?", conversation_id=conv_id, max_new_tokens=4)
    assert second["starts"][0]["conversation_id"] == conv_id
    mid = second["starts"][0]["message_id"]
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": u["token"]})
        ws.receive_json()
        ws.send_json({"type": "regenerate", "message_id": mid, "max_new_tokens": 3})
        start = ws.receive_json()
        assert start["type"] == "start" and start["alternative"] == 1
        while ws.receive_json()["type"] != "end":
            pass
    conv = client.get(f"/api/conversations/{conv_id}", headers=u["headers"]).json()
    msgs = conv["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "assistant"]
    assert msgs[2]["parent_id"] == msgs[1]["id"], "the follow-up continues the thread"
    assert msgs[4]["alternative_group"] == msgs[3]["alternative_group"] == msgs[2]["id"]


def test_cancel_stops_generation(client):
    u = signup(client, "erin")
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": u["token"]})
        ws.receive_json()
        ws.send_json({"type": "chat", "content": "Write a long story about a dragon.", "max_new_tokens": 200, "temperature": 0})
        start = ws.receive_json()
        assert start["type"] == "start"
        ws.receive_json()  # the first token
        ws.send_json({"type": "cancel", "message_id": start["message_id"]})
        n = 0
        while True:
            f = ws.receive_json()
            if f["type"] == "end":
                break
            n += 1
        assert f["finish_reason"] == "cancelled"
        assert n < 50
    conv = client.get(f"/api/conversations/{start['conversation_id']}", headers=u["headers"]).json()
    assert conv["messages"][-1]["finish_reason"] == "cancelled"


def test_bad_frames_keep_socket_usable(client):
    u = signup(client, "frank")
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": u["token"]})
        ws.receive_json()
        for bad in ("not json", '{"type":"chat"}', '{"type":"nope"}', '[1,2]', '{"type":"chat","content":"x","alternatives":9}',
                    '{"type":"chat","content":"x","max_new_tokens":100000}', '{"type":"cancel","message_id":"x"}'):
            ws.send_text(bad)
            f = ws.receive_json()
            assert f["type"] == "error" and f["code"] in ("bad_frame", "too_large"), (bad, f)
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_websocket_requires_auth_and_checks_origin(client):
    import pytest
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": "forged"})
        assert ws.receive_json()["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    u = signup(client, "gina")
    client.cookies.set("assistant_session", u["token"])
    with pytest.raises(WebSocketDisconnect) as info:
        with client.websocket_connect("/api/chat", headers={"origin": "http://evil.example"}) as ws:
            ws.receive_json()
    assert info.value.code == 1008
    with client.websocket_connect("/api/chat", headers={"origin": "http://127.0.0.1:8000"}) as ws:
        assert ws.receive_json()["type"] == "ready"
    client.cookies.clear()


def test_one_clients_disconnect_does_not_disturb_another(client):
    a, b = signup(client, "leaver"), signup(client, "stayer")
    expected = chat_turn(client, b["token"], "Count from one to five.", max_new_tokens=12, temperature=0)
    expected_text = next(iter(expected["text"].values()))
    with client.websocket_connect("/api/chat") as wb:
        wb.send_json({"type": "auth", "token": b["token"]})
        wb.receive_json()
        with client.websocket_connect("/api/chat") as wa:
            wa.send_json({"type": "auth", "token": a["token"]})
            wa.receive_json()
            wa.send_json({"type": "chat", "content": "Write a long poem about the sea.", "max_new_tokens": 200})
            a_start = wa.receive_json()
            wb.send_json({"type": "chat", "content": "Count from one to five.", "max_new_tokens": 12, "temperature": 0})
            wa.receive_json()  # a token arrives, then A leaves mid-stream
        text, frames = "", []
        while True:
            f = wb.receive_json()
            frames.append(f)
            if f["type"] == "token":
                text += f["text"]
            if f["type"] in ("end", "error"):
                break
    assert f["type"] == "end" and f["finish_reason"] in ("stop", "length"), frames
    assert text == expected_text, "the greedy reply is unchanged by the other client leaving"
    import time
    for _ in range(50):
        conv = client.get(f"/api/conversations/{a_start['conversation_id']}", headers=a["headers"]).json()
        left = conv["messages"][-1]
        if left["finish_reason"]:
            break
        time.sleep(0.2)
    assert left["finish_reason"] == "cancelled" and left["content"], "the partial reply of the leaver is stored"
