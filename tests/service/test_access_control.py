"""A second user tries every id-taking route and frame on the first user's objects: 404, nothing changes."""

from __future__ import annotations

from sqlmodel import Session, select

from service.models import Conversation, Feedback, Message, Ranking
from tests.service.conftest import chat_turn, signup


def _snapshot(client):
    with Session(client.app.state.db) as s:
        return (
            [(c.id, c.title) for c in s.exec(select(Conversation)).all()],
            [(m.id, m.content, m.finish_reason) for m in s.exec(select(Message)).all()],
            [(f.id, f.user_id, f.rating, tuple(f.reasons)) for f in s.exec(select(Feedback)).all()],
            [(r.id, r.user_id, tuple(r.message_ids)) for r in s.exec(select(Ranking)).all()],
        )


def test_other_users_objects_are_invisible(client):
    owner = signup(client, "owner")
    out = chat_turn(client, owner["token"], "Hello", alternatives=2, max_new_tokens=3)
    conv_id = out["starts"][0]["conversation_id"]
    user_msg = out["starts"][0]["user_message_id"]
    a, b = (s["message_id"] for s in out["starts"])
    client.post(f"/api/messages/{a}/feedback", json={"rating": "up"}, headers=owner["headers"])
    before = _snapshot(client)

    intruder = signup(client, "intruder")
    h = intruder["headers"]
    assert client.get(f"/api/conversations/{conv_id}", headers=h).status_code == 404
    assert client.patch(f"/api/conversations/{conv_id}", json={"title": "pwned"}, headers=h).status_code == 404
    assert client.delete(f"/api/conversations/{conv_id}", headers=h).status_code == 404
    for mid in (a, b, user_msg, 999999):
        assert client.post(f"/api/messages/{mid}/feedback", json={"rating": "down"}, headers=h).status_code == 404
    assert client.post("/api/rankings", json={"message_ids": [a, b]}, headers=h).status_code == 404
    assert client.get("/api/conversations", headers=h).json() == []
    assert client.get("/api/me/feedback/export", headers=h).json()["feedback"] == []
    assert client.delete("/api/me/feedback", headers=h).status_code == 204
    # the user message itself is not ratable even by its owner
    assert client.post(f"/api/messages/{user_msg}/feedback", json={"rating": "up"}, headers=owner["headers"]).status_code == 404

    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": intruder["token"]})
        ws.receive_json()
        for frame in ({"type": "chat", "conversation_id": conv_id, "content": "hi"},
                      {"type": "chat", "content": "hi", "parent_id": a},
                      {"type": "regenerate", "message_id": a},
                      {"type": "cancel", "message_id": a}):
            ws.send_json(frame)
            f = ws.receive_json()
            assert f["type"] == "error" and f["code"] == "not_found", (frame, f)
    after = _snapshot(client)
    # the intruder's failed chat frames must not have created rows in the owner's conversation
    assert after[0][: len(before[0])] == before[0]
    assert [m for m in after[1] if m[0] in {x[0] for x in before[1]}] == before[1]
    assert after[2] == before[2] and after[3] == before[3]
    with Session(client.app.state.db) as s:
        assert s.exec(select(Message).where(Message.conversation_id == conv_id)).all().__len__() == len(before[1])
