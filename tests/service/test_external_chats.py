"""Issue 31: each Open WebUI chat is one conversation here (``X-OpenWebUI-Chat-Id``). Before, every
request became a conversation of its own: a three-turn chat was three conversations, and a
regenerated reply rated against the original made no preference pair."""

from __future__ import annotations

from sqlmodel import Session

from learning.config import Budgets
from learning.data import build_dataset
from tests.service.test_proxy import MODEL, _as


def _render(messages):
    return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def _ask(client, headers: dict, chat_id: str | None, messages: list[dict], **params) -> dict:
    extra = {"X-OpenWebUI-Chat-Id": chat_id} if chat_id else {}
    r = client.post("/v1/chat/completions", headers={**headers, **extra},
                    json={"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 1.0, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_an_open_webui_chat_is_one_conversation_and_its_regenerations_make_pairs(app_factory):
    from tests.service.test_proxy import PROXY_KEY

    client = app_factory(proxy_key=PROXY_KEY, exploration_share=0.0, best_of_n=1)
    ann, ben = _as("ann-1", "Ann"), _as("ben-2", "Ben")
    q1 = {"role": "user", "content": "Name a colour."}
    first = _ask(client, ann, "chat-a", [q1])
    a1 = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    q2 = {"role": "user", "content": "And a fruit?"}
    # Open WebUI's regenerate sends the same history again. Two sampled 4-token replies can be the same
    # text, and identical texts make no pair: the regeneration is the greedy reply's longer version
    second = _ask(client, ann, "chat-a", [q1, a1, q2], temperature=0.0)
    again = _ask(client, ann, "chat-a", [q1, a1, q2], temperature=0.0, max_tokens=12)
    assert again["choices"][0]["message"]["content"] != second["choices"][0]["message"]["content"]
    convs = client.get("/api/conversations", headers=ann).json()
    assert len(convs) == 1 and convs[0]["id"] == first["conversation_id"] == second["conversation_id"] == again["conversation_id"]
    detail = client.get(f"/api/conversations/{convs[0]['id']}", headers=ann).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant", "assistant"]
    r2, r3 = (next(m for m in detail["messages"] if m["id"] == int(x["id"])) for x in (second, again))
    assert r2["parent_id"] == r3["parent_id"] and r2["alternative_index"] == 0 and r3["alternative_index"] == 1

    # a thumbs-up on one and a thumbs-down on the other: one preference pair for Ann
    for x, rating in ((second, "up"), (again, "down")):
        assert client.post(f"/api/messages/{x['id']}/feedback", json={"rating": rating}, headers=ann).status_code in (200, 201)
    with Session(client.app.state.db) as s:
        pairs = build_dataset(s, _render, Budgets()).pairs
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [(int(second["id"]), int(again["id"]))]
    assert "<user>Name a colour." in pairs[0].prompt and "<user>And a fruit?" in pairs[0].prompt

    # a reply Ann stopped (Open WebUI keeps fewer characters than were stored) still continues the chat
    cut = {"role": "assistant", "content": a1["content"][:-1] or a1["content"]}
    _ask(client, ann, "chat-a", [q1, cut, {"role": "user", "content": "Thanks."}])
    assert len(client.get("/api/conversations", headers=ann).json()) == 1
    # an edited earlier turn branches within the chat; another chat id is another conversation
    _ask(client, ann, "chat-a", [{"role": "user", "content": "Name a shape."}])
    _ask(client, ann, "chat-b", [q1])
    assert len(client.get("/api/conversations", headers=ann).json()) == 2
    # Ben's chat with the same id is Ben's own; no chat id: a conversation per request, as before
    _ask(client, ben, "chat-a", [q1])
    assert len(client.get("/api/conversations", headers=ben).json()) == 1
    _ask(client, ben, None, [q1])
    _ask(client, ben, None, [q1])
    assert len(client.get("/api/conversations", headers=ben).json()) == 3


def test_background_calls_with_a_chat_id_never_touch_the_chat_and_bad_ids_are_refused(app_factory):
    from tests.service.test_proxy import PROXY_KEY

    client = app_factory(proxy_key=PROXY_KEY)
    ann = _as("ann-1", "Ann")
    _ask(client, ann, "chat-a", [{"role": "user", "content": "Hello there."}])
    # Open WebUI's title call carries the chat id; it is served and forgotten, the chat stays whole
    _ask(client, ann, "chat-a", [{"role": "user", "content": "### Task:\nGenerate a title for the chat."}])
    [conv] = client.get("/api/conversations", headers=ann).json()
    assert len(client.get(f"/api/conversations/{conv['id']}", headers=ann).json()["messages"]) == 2
    for bad in ("x" * 129, "tab\there"):
        r = client.post("/v1/chat/completions", headers={**ann, "X-OpenWebUI-Chat-Id": bad},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "X-OpenWebUI-Chat-Id"


def test_continue_goes_on_from_a_partial_reply_and_only_a_reply_generated_here_stays_rateable(app_factory):
    """Open WebUI's Continue sends the reply so far as the last (assistant) message; it got a 400."""
    from tests.service.test_proxy import PROXY_KEY

    client = app_factory(proxy_key=PROXY_KEY, exploration_share=0.0, best_of_n=1)
    ann = _as("ann-1", "Ann")
    q = {"role": "user", "content": "Tell me about the sea."}
    first = _ask(client, ann, "chat-c", [q])
    so_far = first["choices"][0]["message"]["content"]  # cut at max_tokens: what Continue is for
    more = _ask(client, ann, "chat-c", [q, {"role": "assistant", "content": so_far}])
    new_text = more["choices"][0]["message"]["content"]
    assert more["usage"]["completion_tokens"] >= 1
    detail = client.get(f"/api/conversations/{first['conversation_id']}", headers=ann).json()
    stored = next(m for m in detail["messages"] if m["id"] == int(more["id"]))
    assert stored["content"] == so_far + new_text  # the whole reply, beside the one it continues
    assert stored["parent_id"] == next(m for m in detail["messages"] if m["id"] == int(first["id"]))["parent_id"]
    assert client.post(f"/api/messages/{more['id']}/feedback", json={"rating": "up"}, headers=ann).status_code in (200, 201)

    # a start the client wrote (or edited) is not this server's reply: served, stored, never rateable
    edited = _ask(client, ann, "chat-c", [q, {"role": "assistant", "content": "Waves, I wrote this myself,"}])
    assert client.post(f"/api/messages/{edited['id']}/feedback", json={"rating": "up"}, headers=ann).status_code == 422
    # an assistant message with no user turn before it answers nothing
    r = client.post("/v1/chat/completions", headers=ann,
                    json={"model": MODEL, "messages": [{"role": "assistant", "content": "Hello"}], "max_tokens": 2})
    assert r.status_code == 400 and "continue" in r.json()["error"]["message"]
