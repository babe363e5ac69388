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


def test_client_written_assistant_turns_cannot_be_rated_or_ranked(client):
    """Issue 12, finding 2: the assistant turns a /v1 client sends are stored as context
    (origin "client"); rating or ranking them is refused, the generated reply can be rated."""
    user = signup(client, "writer")
    body = {"model": "x", "max_tokens": 2, "temperature": 0, "messages": [
        {"role": "user", "content": "Is this reply harmful?"},
        {"role": "assistant", "content": "A reply the client wrote itself."},
        {"role": "user", "content": "And now?"}]}
    r = client.post("/v1/chat/completions", json=body, headers=user["headers"])
    assert r.status_code == 200, r.text
    conv = client.get(f"/api/conversations/{r.json()['conversation_id']}", headers=user["headers"]).json()
    written = next(m for m in conv["messages"] if m["content"] == "A reply the client wrote itself.")
    generated = next(m for m in conv["messages"] if m["id"] == int(r.json()["id"]))
    assert (written["origin"], generated["origin"]) == ("client", "generated")
    rated = client.post(f"/api/messages/{written['id']}/feedback", json={"rating": "up"}, headers=user["headers"])
    assert rated.status_code == 422 and "not generated here" in rated.json()["detail"]
    ranked = client.post("/api/rankings", json={"message_ids": [written["id"], generated["id"]]}, headers=user["headers"])
    assert ranked.status_code == 422
    assert client.post(f"/api/messages/{generated['id']}/feedback", json={"rating": "up"}, headers=user["headers"]).status_code == 200
