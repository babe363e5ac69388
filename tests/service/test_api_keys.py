"""Per-user API keys (issue 13): create (shown once), use with the openai client and on /api and the
WebSocket, list without the key, revoke (401 from the next request), owner-scoped, hashed at rest."""

from __future__ import annotations

import openai
import pytest

from service.models import ApiKey
from tests.service.conftest import chat_turn, signup


def test_create_use_list_and_revoke_an_api_key(client):
    alice, bob = signup(client, "alice"), signup(client, "bob")
    r = client.post("/api/me/api-keys", json={"name": "laptop"}, headers=alice["headers"])
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("ak_") and len(key) > 40 and key.startswith(created["prefix"])

    # it signs in as alice on /api, /v1 (the official client) and the WebSocket
    as_key = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/me", headers=as_key).json()["username"] == "alice"
    oai = openai.OpenAI(api_key=key, base_url="http://127.0.0.1:8000/v1", http_client=client)
    reply = oai.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert reply.choices[0].message.content is not None
    assert chat_turn(client, key, "Hi", max_new_tokens=2)["starts"]

    listed = client.get("/api/me/api-keys", headers=alice["headers"]).json()
    assert [k["name"] for k in listed] == ["laptop"] and "key" not in listed[0] and listed[0]["last_used_at"] is not None
    with client.app.state.db.connect() as con:  # only a hash is stored
        stored = con.execute(ApiKey.__table__.select()).mappings().all()
    assert key not in {v for row in stored for v in row.values() if isinstance(v, str)}

    # bob can neither see nor revoke it
    assert client.get("/api/me/api-keys", headers=bob["headers"]).json() == []
    assert client.delete(f"/api/me/api-keys/{created['id']}", headers=bob["headers"]).status_code == 404

    assert client.delete(f"/api/me/api-keys/{created['id']}", headers=alice["headers"]).status_code == 204
    assert client.get("/api/me", headers=as_key).status_code == 401  # at once
    with pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert client.get("/api/me", headers={"Authorization": "Bearer ak_forged"}).status_code == 401


def test_api_key_names_are_validated_and_keys_capped(client, monkeypatch):
    alice = signup(client, "alice")
    assert client.post("/api/me/api-keys", json={"name": ""}, headers=alice["headers"]).status_code == 422
    assert client.post("/api/me/api-keys", json={"name": "x" * 101}, headers=alice["headers"]).status_code == 422
    assert client.post("/api/me/api-keys", json={"name": "a\nb"}, headers=alice["headers"]).status_code == 422
    assert client.post("/api/me/api-keys", json={"name": "k", "user_id": 2}, headers=alice["headers"]).status_code == 422
    monkeypatch.setattr("service.crud.MAX_API_KEYS", 2)
    for i in range(2):
        assert client.post("/api/me/api-keys", json={"name": f"k{i}"}, headers=alice["headers"]).status_code == 201
    over = client.post("/api/me/api-keys", json={"name": "k3"}, headers=alice["headers"])
    assert over.status_code == 409 and "revoke" in over.text
    assert client.post("/api/me/api-keys", json={"name": "k"}).status_code == 401
    assert client.delete("/api/me", headers=alice["headers"]).status_code == 204  # the account takes its keys along
    with client.app.state.db.connect() as con:
        assert con.execute(ApiKey.__table__.select()).all() == []


def test_a_leaked_key_cannot_mint_keys_export_delete_or_sign_out_and_open_sockets_end_with_the_session(client):
    """Audit 2026-12-05, M4: keys chat, rate and read; what outlives or destroys the account needs a session."""
    alice = signup(client, "alice")
    key = client.post("/api/me/api-keys", json={"name": "tool"}, headers=alice["headers"]).json()
    as_key = {"Authorization": f"Bearer {key['key']}"}
    for method, path in [("POST", "/api/me/api-keys"), ("DELETE", f"/api/me/api-keys/{key['id']}"), ("GET", "/api/me/export"),
                         ("GET", "/api/me/feedback/export"), ("DELETE", "/api/me/feedback"), ("DELETE", "/api/me"),
                         ("POST", "/api/auth/logout")]:
        r = client.request(method, path, headers=as_key, json={"name": "laptop"} if method == "POST" else None)
        assert r.status_code == 403 and "signed-in session" in r.json()["detail"], (method, path, r.text)
    assert client.get("/api/me", headers=as_key).status_code == 200  # still alice's key for what keys are for
    assert chat_turn(client, key["key"], "Hi", max_new_tokens=2)["starts"]

    # sockets signed in with the key and with the session token outlive neither
    with client.websocket_connect("/api/chat") as by_key, client.websocket_connect("/api/chat") as by_token:
        by_key.send_json({"type": "auth", "token": key["key"]})
        by_token.send_json({"type": "auth", "token": alice["token"]})
        assert by_key.receive_json()["type"] == "ready" and by_token.receive_json()["type"] == "ready"
        assert client.post("/api/auth/logout?revoke_keys=true", headers=alice["headers"]).status_code == 204
        for ws in (by_key, by_token):
            ws.send_json({"type": "chat", "content": "hello", "max_new_tokens": 2})
            frame = ws.receive_json()
            assert frame["type"] == "error" and frame["code"] == "unauthorized", frame
    assert client.get("/api/me", headers=as_key).status_code == 401  # revoked with the sign-out
    assert client.get("/api/me/api-keys", headers=alice["headers"]).status_code == 401
