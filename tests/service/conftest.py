from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app


@pytest.fixture
def app_factory(make_settings, shared_engine):
    """Build an app on a fresh database with the shared engine; yields TestClients."""
    clients = []

    def make(**overrides) -> TestClient:
        settings = make_settings(**overrides)
        client = TestClient(create_app(settings, engine=shared_engine), base_url="http://127.0.0.1:8000")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(app_factory) -> TestClient:
    return app_factory()


def signup(client: TestClient, username: str, password: str = "correct-horse-1") -> dict:
    """Register and sign in; returns {"id","username","token","headers"}."""
    r = client.post("/api/auth/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    r2 = client.post("/api/auth/token", data={"username": username, "password": password})
    assert r2.status_code == 200, r2.text
    token = r2.json()["access_token"]
    client.cookies.clear()  # tests choose bearer or cookie explicitly
    return {**r.json(), "token": token, "headers": {"Authorization": f"Bearer {token}"}}


# A question whose greedy reply names Paris with every token's top-2 log-probability gap >= 1.4 nats
# (SmolLM2-135M, float32). "What is the capital of France?" starts with a 0.08-nat tie ("The" vs "L'"),
# which the kernels of another CPU, a different thread count or a reused prefix can flip.
NAME_THE_CAPITAL = "Name the capital of France."


def chat_turn(client: TestClient, token: str, content: str = "Say hi.", **frame) -> dict:
    """One chat turn over the WebSocket; returns start/end frames, the text per message."""
    out = {"starts": [], "ends": {}, "text": {}, "frames": []}
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": token})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "chat", "content": content, **frame})
        n = frame.get("alternatives", 1)
        while len(out["ends"]) < n:
            f = ws.receive_json()
            out["frames"].append(f)
            if f["type"] == "error":
                out["error"] = f
                return out
            if f["type"] == "start":
                out["starts"].append(f)
                out["text"][f["message_id"]] = ""
            elif f["type"] == "token":
                out["text"][f["message_id"]] += f["text"]
            elif f["type"] == "end":
                out["ends"][f["message_id"]] = f
    return out
