"""Accounts, tokens, the explicit auth allowlist, and the admin bootstrap."""

from __future__ import annotations

import pytest

from service.app import PUBLIC_ROUTES
from service.settings import Settings, SettingsError
from tests.service.conftest import signup


def test_register_login_me(client):
    r = client.post("/api/auth/register", json={"username": "alice", "password": "s3cret-passphrase"})
    assert r.status_code == 201 and r.json()["role"] == "user" and set(r.json()) == {"id", "username", "role", "approved"}
    assert client.post("/api/auth/register", json={"username": "alice", "password": "another-passphrase"}).status_code == 409
    for bad in ({"username": "a", "password": "s3cret-passphrase"}, {"username": "alice2", "password": "short"},
                {"username": "bad name!", "password": "s3cret-passphrase"}, {"username": "x" * 100, "password": "s3cret-passphrase"}, {}):
        assert client.post("/api/auth/register", json=bad).status_code == 422, bad
    assert client.post("/api/auth/token", data={"username": "alice", "password": "wrong-pass"}).status_code == 401
    assert client.post("/api/auth/token", data={"username": "nobody", "password": "wrong-pass"}).status_code == 401
    r = client.post("/api/auth/token", data={"username": "alice", "password": "s3cret-passphrase"})
    assert r.status_code == 200 and r.json()["token_type"] == "bearer"
    cookie = r.headers["set-cookie"]
    assert "assistant_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    me = client.get("/api/me")  # via the cookie
    assert me.status_code == 200 and me.json()["username"] == "alice"
    client.cookies.clear()
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).status_code == 200
    assert client.get("/api/me", headers={"Authorization": "Bearer forged.token.value"}).status_code == 401


def test_passwords_are_hashed_and_never_logged(client, caplog):
    import logging

    from sqlmodel import Session, select

    from service.models import User

    caplog.set_level(logging.DEBUG)
    signup(client, "henry", "very-secret-pw")
    with Session(client.app.state.db) as s:
        user = s.exec(select(User).where(User.username == "henry")).one()
    assert user.password_hash.startswith("$argon2") and "very-secret-pw" not in user.password_hash
    assert "very-secret-pw" not in caplog.text


def test_every_route_but_the_allowlist_requires_auth(client):
    checked = 0
    for path, ops in client.app.openapi()["paths"].items():
        for method in ops:
            method = method.upper()
            if (method, path) in PUBLIC_ROUTES:
                continue
            concrete = "/".join("1" if seg.startswith("{") else seg for seg in path.split("/"))
            r = client.request(method, concrete, json={})
            assert r.status_code == 401, (method, path, r.status_code)
            checked += 1
    assert checked >= 10


def test_admin_account_from_settings(app_factory):
    client = app_factory(admin_password="operator-pw-1")
    r = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pw-1"})
    assert r.status_code == 200
    me = client.get("/api/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).json()
    assert me["role"] == "operator"
    assert client.post("/api/auth/register", json={"username": "admin", "password": "whatever-passw0rd"}).status_code == 409


def test_default_secret_refused_outside_dev_mode(tmp_path):
    with pytest.raises(SettingsError, match="ASSISTANT_SECRET_KEY"):
        Settings(data_dir=tmp_path, dev_mode=False)
    Settings(data_dir=tmp_path, dev_mode=False, secret_key="x" * 40)


def test_health_and_metrics(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] and r.json()["model"]
    m = client.get("/metrics")
    assert m.status_code == 200
    for name in ("assistant_http_requests_total", "assistant_tokens_generated_total", "assistant_generation_seconds",
                 "assistant_feedback_total"):
        assert name in m.text


def test_new_passwords_and_usernames(client):
    """Issue 12, finding 16: 12+ characters, no common password, not the username; usernames
    unique case-insensitively (and signing in ignores case); the operator password is checked."""
    for pw, why in (("short-pass1", "12"), ("Password1234", "guesser"), ("aaaaaaaaaaaaaaa", "guesser"),
                    ("my-name-is-dora!", "username")):
        r = client.post("/api/auth/register", json={"username": "dora", "password": pw})
        assert r.status_code == 422 and why in str(r.json()["detail"]), (pw, r.text)
    assert client.post("/api/auth/register", json={"username": "Dora", "password": "tall-tree-shade-7"}).status_code == 201
    assert client.post("/api/auth/register", json={"username": "dora", "password": "tall-tree-shade-7"}).status_code == 409
    assert client.post("/api/auth/token", data={"username": "DORA", "password": "tall-tree-shade-7"}).status_code == 200
    with pytest.raises(SettingsError, match="ASSISTANT_ADMIN_PASSWORD"):
        Settings(secret_key="x" * 40, admin_password="admin1")
