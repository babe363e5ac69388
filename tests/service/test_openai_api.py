"""The official openai client against /v1, and the completion id as a feedback handle."""

from __future__ import annotations

import openai

from tests.service.conftest import signup


def test_openai_client_stream_and_not(client):
    u = signup(client, "oai")
    oai = openai.OpenAI(api_key=u["token"], base_url="http://127.0.0.1:8000/v1", http_client=client)
    models = oai.models.list()
    assert models.data and models.data[0].id
    resp = oai.chat.completions.create(model=models.data[0].id, messages=[{"role": "user", "content": "What is 2+2?"}],
                                       max_tokens=8, temperature=0)
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens >= 1 and resp.usage.prompt_tokens > 5
    assert resp.choices[0].finish_reason in ("stop", "length")
    r = client.post(f"/api/messages/{resp.id}/feedback", json={"rating": "up"}, headers=u["headers"])
    assert r.status_code == 200

    chunks = list(oai.chat.completions.create(model="x", messages=[{"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": "Say hello."}],
                                              max_tokens=6, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason in ("stop", "length")
    convs = client.get("/api/conversations", headers=u["headers"]).json()
    assert len(convs) == 2
    detail = client.get(f"/api/conversations/{convs[0]['id']}", headers=u["headers"]).json()
    assert [m["role"] for m in detail["messages"]] == ["system", "user", "assistant"]
    assert detail["messages"][-1]["content"] == text

    bad = openai.OpenAI(api_key="wrong", base_url="http://127.0.0.1:8000/v1", http_client=client)
    try:
        bad.models.list()
        raise AssertionError("a wrong key must be refused")
    except openai.AuthenticationError:
        pass
