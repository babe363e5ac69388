"""More generations at once than the database pool has connections (issue 12, finding 4).

Measured before the fix: 16 users on /v1 at once made a request wait 30 s for a connection and
answer 500, because the sign-in dependency's session stayed checked out while the reply generated.
Here the pool has one connection and a one-second timeout, and six replies of 24 tokens run at
once over /v1 (plain and streaming) and the WebSocket, on SQLite and PostgreSQL: every one must
finish, and a request that still cannot get a connection is told 503, never 500.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import chat_turn, signup

TOKENS = 24


def _v1(client: TestClient, user: dict, stream: bool) -> tuple[int, str]:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Tell me about rivers."}],
            "max_tokens": TOKENS, "temperature": 0, "stream": stream}
    if not stream:
        r = client.post("/v1/chat/completions", json=body, headers=user["headers"])
        return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
    with client.stream("POST", "/v1/chat/completions", json=body, headers=user["headers"]) as r:
        text = "".join(r.iter_text())
        return r.status_code, text


def _ws(client: TestClient, user: dict) -> tuple[int, str]:
    out = chat_turn(client, user["token"], "Tell me about lakes.", max_new_tokens=TOKENS, temperature=0)
    return (200 if "error" not in out and out["ends"] else 500), str(out.get("error") or out["ends"])


def test_more_generations_than_connections(make_settings, shared_engine, db_url):
    settings = make_settings(database_url=db_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=1.0)
    with TestClient(create_app(settings, engine=shared_engine), base_url="http://127.0.0.1:8000") as client:
        users = [signup(client, f"pool{i}") for i in range(3)]
        calls = [lambda u=u: _v1(client, u, False) for u in users[:2]]
        calls += [lambda u=u: _v1(client, u, True) for u in users[1:]]
        calls += [lambda u=u: _ws(client, u) for u in (users[0], users[2])]
        with ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(lambda f: f(), calls))
        assert [status for status, _ in results] == [200] * len(calls), results
        assert all("[DONE]" in text for _, text in results[2:4]), results[2:4]
        assert client.get("/api/conversations", headers=users[0]["headers"]).status_code == 200
