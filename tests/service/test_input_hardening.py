"""Low-severity findings of issue 12: inputs that became 500s, a frame that killed the socket,
unbounded ids, security headers, the docs outside dev mode, and the cookie's Secure flag."""

from __future__ import annotations

import jwt
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import signup

SECRET_PASSWORD = "hunter2-hunter2"


def test_nan_infinity_and_lone_surrogates_are_4xx_without_echo(client):
    cases = ['{"username":"abc","password":NaN}', '{"username":"abc","password":Infinity}',
             '{"username":"ab\\ud800c","password":"%s"}' % SECRET_PASSWORD,
             '{"username":"abcd","password":"%s\\udfff"}' % SECRET_PASSWORD]
    for body in cases:
        r = client.post("/api/auth/register", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert SECRET_PASSWORD not in r.text and "input" not in r.json()["detail"][0]
    u = signup(client, "valid")
    r = client.post("/v1/chat/completions", content='{"model":"x","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}',
                    headers={**u["headers"], "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's answer to a bad parameter
    assert "NaN" not in r.json()["error"]["message"]


def test_a_deep_or_invalid_frame_answers_bad_frame_and_keeps_the_socket(client):
    u = signup(client, "framer")
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": u["token"]})
        assert ws.receive_json()["type"] == "ready"
        for raw in ("[" * 20000 + "]" * 20000, '{"type":"chat","content":"\\ud800"}'):
            ws.send_text(raw)
            frame = ws.receive_json()
            assert frame["type"] == "error" and frame["code"] == "bad_frame", frame
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"


def test_unbounded_ids_are_refused_before_the_database(app_factory):
    client = app_factory(admin_password="operator-pass-1")
    tok = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    client.cookies.clear()
    op = {"Authorization": f"Bearer {tok}"}
    for path in ("/api/admin/training-runs/99999999999999999999", "/api/admin/training-runs/0"):
        assert client.get(path, headers=op).status_code == 422
    assert client.post("/api/admin/users/99999999999999999999/adapter/rollback", headers=op).status_code == 422
    settings = client.app.state.settings
    forged = jwt.encode({"sub": str(2**70), "exp": 2**33}, settings.secret_key, algorithm="HS256")
    assert client.get("/api/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_security_headers_docs_and_secure_cookie_outside_dev_mode(make_settings, shared_engine):
    settings = make_settings(dev_mode=False, secret_key="s" * 40, registration="open")
    with TestClient(create_app(settings, engine=shared_engine), base_url="http://127.0.0.1:8000") as client:
        r = client.get("/healthz")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"
        assert "max-age" in r.headers["strict-transport-security"]
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404, path
        client.post("/api/auth/register", json={"username": "sec", "password": "correct-horse-1"})
        r = client.post("/api/auth/token", data={"username": "sec", "password": "correct-horse-1"})
        assert "secure" in r.headers["set-cookie"].lower()
    dev = make_settings()
    with TestClient(create_app(dev, engine=shared_engine), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/openapi.json").status_code == 200
        assert "strict-transport-security" not in client.get("/healthz").headers


def test_dev_mode_signs_with_its_own_secret_and_stays_local(make_settings, shared_engine):
    """Finding 8: dev mode signed with a published key and any Host was answered (DNS rebinding)."""
    import pytest

    from service.settings import DEFAULT_SECRET, Settings, SettingsError

    with pytest.raises(SettingsError, match="local use only"):
        Settings(dev_mode=True, host="0.0.0.0")
    settings = make_settings()
    with TestClient(create_app(settings, engine=shared_engine), base_url="http://127.0.0.1:8000") as client:
        key = settings.data_dir / "dev-secret-key"
        assert settings.secret_key != DEFAULT_SECRET and key.read_text().strip() == settings.secret_key
        assert key.stat().st_mode & 0o077 == 0
        published = jwt.encode({"sub": "1", "exp": 2**33}, DEFAULT_SECRET, algorithm="HS256")
        assert client.get("/api/me", headers={"Authorization": f"Bearer {published}"}).status_code == 401
        assert client.get("/healthz", headers={"Host": "rebound.attacker.example"}).status_code == 400
        assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    again = make_settings(data_dir=settings.data_dir)
    create_app(again, engine=shared_engine)
    assert again.secret_key == settings.secret_key  # the same data dir keeps its key (sessions survive a restart)


def test_a_metrics_token_keeps_metrics_and_health_details_to_the_monitor(app_factory):
    """Issue 28, L6: /metrics (every counter, training results) and /healthz (engine, base model)
    were public with no way to close them."""
    client = app_factory(metrics_token="monitor-token-0123456789")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer monitor-token-0123456789"})
    assert r.status_code == 200 and "assistant_tokens_generated" in r.text
    assert client.get("/healthz").json() == {"status": "ok"}  # a load balancer still sees up/down
    detail = client.get("/healthz", headers={"Authorization": "Bearer monitor-token-0123456789"}).json()
    assert detail["status"] == "ok" and "engine" in detail
    assert "engine" in app_factory().get("/healthz").json()  # unset: public, as before
