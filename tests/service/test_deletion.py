"""Deletion reaches the model (issue 12, finding 9).

Before: after ``DELETE /api/me/feedback`` the adapters trained on it kept serving, "reset" left
the weights on disk, and there was no way to delete an account.
"""

from __future__ import annotations

from sqlmodel import Session, select

from service import adapter_store, crud
from service.models import AdapterStatus, AdapterVersion, Conversation, Feedback, Message, Rating, User
from tests.service.conftest import signup


def _publish(client, user_id: int, tmp_path, n: int):
    src = tmp_path / f"adapter{n}"
    src.mkdir()
    for name in adapter_store.REQUIRED_FILES:
        (src / name).write_text("{}")
    settings = client.app.state.settings
    with Session(client.app.state.db) as s:
        row = adapter_store.publish(settings, s, user_id=user_id, src_dir=src, metadata={}, status=AdapterStatus.promoted)
        adapter_store.activate(s, user_id=user_id, version_id=row.id)
        return settings.adapters_dir / row.path


def _rated_reply(client, user_id: int) -> int:
    with Session(client.app.state.db) as s:
        conv = crud.create_conversation(s, user_id=user_id, title="t")
        q = crud.add_message(s, conversation_id=conv.id, user_id=user_id, role="user", content="q")
        a = crud.add_message(s, conversation_id=conv.id, user_id=user_id, role="assistant", content="a", parent_id=q.id,
                             alternative_group=q.id, origin="generated", policy="base")
        crud.upsert_feedback(s, user_id=user_id, message_id=a.id, rating=Rating.up, reasons=[], comment=None)
        return a.id


def test_deleting_ratings_or_resetting_deletes_the_personal_adapter(client, tmp_path):
    alice = signup(client, "alice")
    _rated_reply(client, alice["id"])
    weights = _publish(client, alice["id"], tmp_path, 1)
    assert client.get("/api/me/adapter", headers=alice["headers"]).json()["policy"] == "user"

    assert client.delete("/api/me/feedback", headers=alice["headers"]).status_code == 204
    me = client.get("/api/me/adapter", headers=alice["headers"]).json()
    assert me["policy"] != "user" and not weights.exists()
    assert me["versions"][0]["status"] == "retired" and "deleted their ratings" in me["versions"][0]["reason"]

    weights = _publish(client, alice["id"], tmp_path, 2)
    assert client.delete("/api/me/adapter", headers=alice["headers"]).status_code == 200
    assert not weights.exists() and client.get("/api/me/adapter", headers=alice["headers"]).json()["policy"] != "user"


def test_deleting_a_rated_conversation_stops_the_adapter_trained_on_it(client, tmp_path):
    """Audit 2026-12-05, M3(b)."""
    alice = signup(client, "alice")
    reply = _rated_reply(client, alice["id"])
    weights = _publish(client, alice["id"], tmp_path, 1)
    with Session(client.app.state.db) as s:
        conv_id = s.get(Message, reply).conversation_id
        unrated = crud.create_conversation(s, user_id=alice["id"], title="no ratings").id
    assert client.delete(f"/api/conversations/{unrated}", headers=alice["headers"]).status_code == 204
    assert client.get("/api/me/adapter", headers=alice["headers"]).json()["policy"] == "user"  # nothing rated went
    assert client.delete(f"/api/conversations/{conv_id}", headers=alice["headers"]).status_code == 204
    me = client.get("/api/me/adapter", headers=alice["headers"]).json()
    assert me["policy"] != "user" and not weights.exists() and "deleted a conversation" in me["versions"][0]["reason"]


def test_deleting_the_account_removes_everything_of_the_user_only(app_factory, tmp_path):
    client = app_factory(admin_password="operator-pass-1")
    alice, bob = signup(client, "alice"), signup(client, "bob")
    for u in (alice, bob):
        _rated_reply(client, u["id"])
    alice_weights, bob_weights = _publish(client, alice["id"], tmp_path, 1), _publish(client, bob["id"], tmp_path, 2)

    assert client.delete("/api/me", headers=alice["headers"]).status_code == 204
    assert client.get("/api/me", headers=alice["headers"]).status_code == 401
    assert client.post("/api/auth/token", data={"username": "alice", "password": "correct-horse-1"}).status_code == 401
    with Session(client.app.state.db) as s:
        for model in (Conversation, Message, Feedback, AdapterVersion):
            owners = {r.user_id for r in s.exec(select(model)).all()}
            assert alice["id"] not in owners and bob["id"] in owners, model
        assert s.get(User, alice["id"]) is None
    assert not alice_weights.exists() and bob_weights.exists()
    assert client.get("/api/me/adapter", headers=bob["headers"]).json()["policy"] == "user"

    op = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    client.cookies.clear()
    assert client.delete("/api/me", headers={"Authorization": f"Bearer {op}"}).status_code == 403
