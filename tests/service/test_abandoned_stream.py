"""Issue 12, finding 18: a /v1 stream abandoned before its first byte still ends its reply.

The request is sent straight to the ASGI app with a ``send`` that fails at the response start (the
client is gone before anything is written), so the streaming body is never iterated; the reply row
must still be stored with a finish reason (cancelled) instead of staying "generating"."""

from __future__ import annotations

import json
import time

from service.routes import openai_compat
from tests.service.conftest import signup


def test_a_stream_abandoned_before_its_first_byte_is_cancelled_and_stored(client, monkeypatch):
    monkeypatch.setattr(openai_compat, "UNREAD_STREAM_TIMEOUT_S", 0.5)
    u = signup(client, "vanisher")
    body = json.dumps({"model": "smollm2-135m-instruct", "stream": True, "max_tokens": 200,
                       "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {u['token']}".encode())],
    }
    sent: list[dict] = []

    async def call() -> None:
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.start" and message["status"] == 200:
                raise OSError("the client is gone")  # nothing reaches it: the body never starts

        try:
            await client.app(scope, receive, send)
        except Exception:  # the server's side of a vanished client; what matters is the stored reply
            pass

    client.portal.call(call)
    assert any(m["type"] == "http.response.start" and m["status"] == 200 for m in sent)
    assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)
    for _ in range(100):
        convs = client.get("/api/conversations", headers=u["headers"]).json()
        if convs:
            reply = client.get(f"/api/conversations/{convs[0]['id']}", headers=u["headers"]).json()["messages"][-1]
            if reply["finish_reason"]:
                break
        time.sleep(0.2)
    assert convs, "the turn was stored"
    assert reply["role"] == "assistant" and reply["finish_reason"] == "cancelled", reply
