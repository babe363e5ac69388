"""Who may create an account (issue 12, finding 3): ASSISTANT_REGISTRATION open | approval | closed,
operator approval and account creation, and a per-address registration limit.

Before: accounts were free and counted at once, so the per-user cap on the shared pool was per
account and anyone could register as many voters as they liked.
"""

from __future__ import annotations

from service.settings import Settings
from tests.service.conftest import signup


def _operator(client) -> dict:
    r = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"})
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_default_is_approval_outside_dev_mode():
    assert Settings(secret_key="x" * 40).registration_mode == "approval"
    assert Settings(dev_mode=True).registration_mode == "open"
    assert Settings(secret_key="x" * 40).registration_limit == 10


def test_approval_mode_waits_for_an_operator(app_factory):
    client = app_factory(registration="approval", admin_password="operator-pass-1")
    eve = signup(client, "eve")
    assert eve["approved"] is False
    assert client.get("/api/me", headers=eve["headers"]).json()["approved"] is False  # she can sign in

    body = {"model": "smollm2-135m-instruct", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body, headers=eve["headers"])
    assert r.status_code == 403 and "approval" in r.json()["error"]["message"]
    assert client.post("/api/messages/1/feedback", json={"rating": "up"}, headers=eve["headers"]).status_code == 403
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": eve["token"]})
        assert ws.receive_json()["user"]["approved"] is False
        ws.send_json({"type": "chat", "content": "hi", "max_new_tokens": 1})
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["code"] == "not_approved"
    assert client.get("/api/conversations", headers=eve["headers"]).json() == []  # nothing stored

    op = _operator(client)
    assert client.get("/api/admin/users", headers=eve["headers"]).status_code == 403
    listed = client.get("/api/admin/users", headers=op).json()
    assert listed[0]["username"] == "eve" and listed[0]["approved"] is False  # the queue comes first
    assert client.post(f"/api/admin/users/{eve['id']}/approve", headers=eve["headers"]).status_code == 403
    assert client.post(f"/api/admin/users/{eve['id']}/approve", headers=op).json()["approved"] is True
    assert client.post("/api/admin/users/999/approve", headers=op).status_code == 404
    assert client.post("/v1/chat/completions", json=body, headers=eve["headers"]).status_code == 200


def test_closed_mode_refuses_registration_and_operators_create_accounts(app_factory):
    client = app_factory(registration="closed", admin_password="operator-pass-1")
    r = client.post("/api/auth/register", json={"username": "mallory", "password": "correct-horse-1"})
    assert r.status_code == 403 and "closed" in r.json()["detail"]
    op = _operator(client)
    made = client.post("/api/admin/users", json={"username": "carol", "password": "correct-horse-1"}, headers=op)
    assert made.status_code == 201 and made.json()["approved"] is True
    assert client.post("/api/admin/users", json={"username": "carol", "password": "correct-horse-1"}, headers=op).status_code == 409
    assert client.post("/api/admin/users", json={"username": "x", "password": "correct-horse-1"}, headers=op).status_code == 422
    assert client.post("/api/auth/token", data={"username": "carol", "password": "correct-horse-1"}).status_code == 200


def test_registrations_per_address_are_limited(app_factory):
    client = app_factory(registration="open", registrations_per_hour=2)
    for name in ("one", "two"):
        assert client.post("/api/auth/register", json={"username": name, "password": "correct-horse-1"}).status_code == 201
    r = client.post("/api/auth/register", json={"username": "three", "password": "correct-horse-1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_operators_can_suspend_and_delete_an_account_at_once(app_factory):
    """Audit 2026-12-05, M8: an operator who sees a poisoner acts before the next run, without SQL."""
    client = app_factory(admin_password="operator-pass-1")
    mallory, bob = signup(client, "mallory"), signup(client, "bob")
    key = client.post("/api/me/api-keys", json={"name": "k"}, headers=mallory["headers"]).json()["key"]
    op = _operator(client)
    assert client.post(f"/api/admin/users/{bob['id']}/suspend", headers=mallory["headers"]).status_code == 403
    r = client.post(f"/api/admin/users/{mallory['id']}/suspend", headers=op)
    assert r.status_code == 200 and r.json()["approved"] is False
    assert client.get("/api/me", headers=mallory["headers"]).status_code == 401  # every session ended
    assert client.get("/api/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401  # every key revoked
    signed_in = client.post("/api/auth/token", data={"username": "mallory", "password": "correct-horse-1"}).json()
    client.cookies.clear()
    body = {"model": "smollm2-135m-instruct", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    again = {"Authorization": f"Bearer {signed_in['access_token']}"}
    assert client.post("/v1/chat/completions", json=body, headers=again).status_code == 403  # waits for approval again
    admin_id = next(u["id"] for u in client.get("/api/admin/users", headers=op).json() if u["username"] == "admin")
    assert client.post(f"/api/admin/users/{admin_id}/suspend", headers=op).status_code == 403
    assert client.delete(f"/api/admin/users/{mallory['id']}", headers=op).status_code == 204
    assert client.get("/api/me", headers=again).status_code == 401
    assert "mallory" not in {u["username"] for u in client.get("/api/admin/users", headers=op).json()}
    assert client.delete("/api/admin/users/9999", headers=op).status_code == 404
    assert client.get("/api/me", headers=bob["headers"]).status_code == 200  # nobody else touched


def test_operators_keep_a_user_out_of_the_shared_pool_without_suspending_them(app_factory):
    """Audit 2026-12-05, M8: the dashboard showed who favours flagged replies; nothing but a suspension
    could keep their labels out of the shared models."""
    client = app_factory(admin_password="operator-pass-1")
    mallory, bob = signup(client, "mallory"), signup(client, "bob")
    op = _operator(client)
    url = f"/api/admin/users/{mallory['id']}/shared-pool"
    assert client.post(url, json={"excluded": True}, headers=bob["headers"]).status_code == 403
    for bad in ({}, {"excluded": "yes"}, {"excluded": True, "extra": 1}):
        assert client.post(url, json=bad, headers=op).status_code == 422
    r = client.post(url, json={"excluded": True}, headers=op)
    assert r.status_code == 200 and r.json()["shared_pool_excluded"] is True and r.json()["approved"] is True
    assert client.get("/api/me", headers=mallory["headers"]).status_code == 200  # still signed in, still chatting
    listed = {u["username"]: u["shared_pool_excluded"] for u in client.get("/api/admin/users", headers=op).json()}
    assert listed["mallory"] is True and listed["bob"] is False
    assert client.post(url, json={"excluded": False}, headers=op).json()["shared_pool_excluded"] is False
    admin_id = next(u["id"] for u in client.get("/api/admin/users", headers=op).json() if u["username"] == "admin")
    assert client.post(f"/api/admin/users/{admin_id}/shared-pool", json={"excluded": True}, headers=op).status_code == 403
    assert client.post("/api/admin/users/9999/shared-pool", json={"excluded": True}, headers=op).status_code == 404
