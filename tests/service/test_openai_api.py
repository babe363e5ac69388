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

    chunks = list(oai.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "system", "content": "Be brief."},
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
    body = {"model": "smollm2-135m-instruct", "max_tokens": 2, "temperature": 0, "messages": [
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


MODEL = "smollm2-135m-instruct"


def _client(client, token):
    return openai.OpenAI(api_key=token, base_url="http://127.0.0.1:8000/v1", http_client=client, max_retries=0)


def test_models_policies_and_openai_error_objects(client):
    u = signup(client, "models")
    oai = _client(client, u["token"])
    assert [m.id for m in oai.models.list().data] == [MODEL, f"{MODEL}:global", f"{MODEL}:base"]
    r = oai.chat.completions.with_raw_response.create(model=f"{MODEL}:base", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert r.parse().choices[0].message.content is not None and r.http_response.json()["adapter_version"] is None
    assert oai.chat.completions.create(model=f"{MODEL}:global", messages=[{"role": "user", "content": "Hi"}], max_tokens=2).choices

    try:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError as exc:
        assert exc.code == "model_not_found" and exc.param == "model" and "gpt-4o" in exc.message
    refusals = {  # what the server does not do is refused by name, never ignored
        "tool_choice": dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}], tool_choice="required"),
        "response_format": dict(response_format={"type": "json_object"}),
        "logprobs": dict(logprobs=True, top_logprobs=2, stop=["."]),  # logprobs alone are served (below)
    }
    for param, kwargs in refusals.items():
        try:
            oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, **kwargs)
            raise AssertionError(f"{param} must be refused")
        except openai.BadRequestError as exc:
            assert exc.param == param and exc.body["type"] == "invalid_request_error", exc.body
    # tools offered with tool_choice auto or none (Open WebUI sends its built-in tools with every request): plain text
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object", "properties": {}}}}]
    for choice in ({}, {"tool_choice": "auto"}, {"tool_choice": "none"}):
        reply = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, tools=tools,
                                            **choice).choices[0]
        assert reply.message.content and not reply.message.tool_calls and reply.finish_reason in ("stop", "length")
    image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    try:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": image}], max_tokens=2)
        raise AssertionError("an image part must be refused")
    except openai.BadRequestError as exc:
        assert exc.code == "unsupported_content_type" and exc.param == "messages[0].content[1]"
    try:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=5)
        raise AssertionError("temperature 5 must be refused")
    except openai.BadRequestError as exc:
        assert exc.param == "temperature"
    assert oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                       frequency_penalty=0, presence_penalty=0, response_format={"type": "text"}).choices
    # penalties are honoured: a greedy list repeats its separator less under a frequency penalty
    count = [{"role": "user", "content": "List the numbers from 1 to 30, separated by commas."}]
    plain, penalised = (oai.chat.completions.create(model=MODEL, messages=count, max_tokens=24, temperature=0,
                                                    frequency_penalty=f).choices[0].message.content for f in (0, 2))
    assert penalised.count(",") < plain.count(","), (plain, penalised)

    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/chat/completions"), ("GET", "/v1/nothing")):
        r = client.request(method, path, headers=u["headers"])
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", (path, r.text)
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_content_parts_developer_role_stop_and_usage_chunk(client):
    u = signup(client, "params")
    oai = _client(client, u["token"])
    parts = [{"type": "text", "text": "Name three"}, {"type": "text", "text": "colours, separated by commas."}]
    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]
    full = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    conv = client.get(f"/api/conversations/{full.model_extra['conversation_id']}", headers=u["headers"]).json()
    assert [(m["role"], m["content"]) for m in conv["messages"][:2]] == [("system", "Be brief."), ("user", "Name three\ncolours, separated by commas.")]

    # stop: cut at the first stop string (not included), in the answer and in what is stored
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2][:3]
    cut = text[:text.find(stop)]
    stopped = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0, stop=[stop, "\u2603"])
    assert stopped.choices[0].message.content == cut and stopped.choices[0].finish_reason == "stop"
    stored = client.get(f"/api/conversations/{stopped.model_extra['conversation_id']}", headers=u["headers"]).json()["messages"][-1]
    assert stored["content"] == cut and stored["finish_reason"] == "stop"
    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
    assert all(c.usage is None for c in chunks)  # usage only when stream_options asks for it
    try:
        oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, stop=["a", "b", "c", "d", "e"])
        raise AssertionError("5 stop strings must be refused")
    except openai.BadRequestError as exc:
        assert exc.param == "stop"

    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_are_one_rankable_alternative_group(client):
    u = signup(client, "many")
    oai = _client(client, u["token"])
    r = oai.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}],
                                                      max_tokens=6, temperature=1.0, n=2)
    resp = r.parse()
    raw = r.http_response.json()
    assert [c.index for c in resp.choices] == [0, 1] and all(c.message.content is not None for c in resp.choices)
    ids = [c["message_id"] for c in raw["choices"]]
    assert resp.id == str(ids[0]) and resp.usage.completion_tokens >= 2
    ranked = client.post("/api/rankings", json={"message_ids": [ids[1], ids[0]]}, headers=u["headers"])
    assert ranked.status_code == 201, ranked.text

    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a tree."}],
                                              max_tokens=4, temperature=1.0, n=2, stream=True))
    by_index = {0: "", 1: ""}
    finished = set()
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1} and all(by_index.values()), by_index
    try:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, n=5)
        raise AssertionError("n over ASSISTANT_MAX_ALTERNATIVES must be refused")
    except openai.BadRequestError as exc:
        assert "ASSISTANT_MAX_ALTERNATIVES" in exc.message


def test_logprobs_streamed_and_not(client):
    """Issue 13: logprobs and top_logprobs as OpenAI returns them (the openai client parses them)."""
    u = signup(client, "logprober")
    oai = openai.OpenAI(api_key=u["token"], base_url="http://127.0.0.1:8000/v1", http_client=client)
    ask = dict(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6,
               temperature=0, logprobs=True, top_logprobs=3)
    resp = oai.chat.completions.create(**ask)
    content = resp.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == resp.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # greedy: the chosen token is the likeliest one
        assert t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5
    streamed = [c for c in oai.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].logprobs]
    tokens = [t for c in streamed for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in content]
    plain = oai.chat.completions.create(**{k: v for k, v in ask.items() if k not in ("logprobs", "top_logprobs")})
    assert plain.choices[0].logprobs is None
    r = client.post("/v1/chat/completions", json={**ask, "stop": ["\n"]}, headers=u["headers"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = client.post("/v1/chat/completions", json={**{k: v for k, v in ask.items() if k != "logprobs"}}, headers=u["headers"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
