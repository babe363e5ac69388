"""The routes behind the daily-chat features (issue 15): custom instructions and reply defaults,
edit and resend, conversation search, and "what the assistant learned". Real model, real database."""

from __future__ import annotations

from sqlmodel import Session, select

from service.models import Message
from tests.service.conftest import chat_turn, signup


def _messages(client, conversation_id: int, headers: dict) -> list[dict]:
    r = client.get(f"/api/conversations/{conversation_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def test_preferences_are_validated_and_owner_scoped(app_factory):
    client = app_factory(max_instructions_chars=50, max_new_tokens_limit=64)
    alice, bob = signup(client, "alice"), signup(client, "bob")
    got = client.get("/api/me/preferences", headers=alice["headers"]).json()
    assert got["instructions"] == "" and got["theme"] == "system" and got["max_instructions_chars"] == 50

    too_long = client.put("/api/me/preferences", json={"instructions": "x" * 51}, headers=alice["headers"])
    assert too_long.status_code == 422 and "50" in too_long.text
    assert client.put("/api/me/preferences", json={"max_new_tokens": 65}, headers=alice["headers"]).status_code == 422
    assert client.put("/api/me/preferences", json={"temperature": 3}, headers=alice["headers"]).status_code == 422
    assert client.put("/api/me/preferences", json={"theme": "neon"}, headers=alice["headers"]).status_code == 422
    assert client.put("/api/me/preferences", json={"user_id": bob["id"]}, headers=alice["headers"]).status_code == 422
    # nothing of the refused requests was stored
    assert client.get("/api/me/preferences", headers=alice["headers"]).json()["instructions"] == ""

    ok = client.put("/api/me/preferences", json={"instructions": "Answer like a pirate.", "theme": "dark", "temperature": 0.0},
                    headers=alice["headers"])
    assert ok.status_code == 200 and ok.json()["instructions"] == "Answer like a pirate." and ok.json()["theme"] == "dark"
    part = client.put("/api/me/preferences", json={"max_new_tokens": 8}, headers=alice["headers"]).json()
    assert part["instructions"] == "Answer like a pirate." and part["max_new_tokens"] == 8 and part["temperature"] == 0.0
    assert client.get("/api/me/preferences", headers=bob["headers"]).json()["instructions"] == ""
    assert client.get("/api/me/preferences").status_code == 401


def test_instructions_become_the_system_message_of_new_conversations(client):
    alice = signup(client, "alice")
    plain = chat_turn(client, alice["token"], "Name a colour.", max_new_tokens=4)
    plain_start = plain["starts"][0]
    client.put("/api/me/preferences", json={"instructions": "Always answer in French, in one short sentence.", "max_new_tokens": 5},
               headers=alice["headers"])
    told = chat_turn(client, alice["token"], "Name a colour.")
    start = told["starts"][0]
    msgs = _messages(client, start["conversation_id"], alice["headers"])
    system = [m for m in msgs if m["role"] == "system"]
    assert [m["content"] for m in system] == ["Always answer in French, in one short sentence."]
    user_msg = next(m for m in msgs if m["role"] == "user")
    assert user_msg["parent_id"] == system[0]["id"]  # the thread (and so the prompt) starts with the instructions
    end = told["ends"][start["message_id"]]
    told_prompt = client.app.state.chat.render_prompt([{"role": "system", "content": system[0]["content"]},
                                                       {"role": "user", "content": "Name a colour."}])
    assert end["usage"]["prompt_tokens"] == len(told_prompt)  # what the model read began with the instructions
    assert end["usage"]["prompt_tokens"] != plain["ends"][plain_start["message_id"]]["usage"]["prompt_tokens"]
    assert end["usage"]["completion_tokens"] <= 5  # the saved reply length applies when the frame does not say
    # the conversation that began before keeps its prompt: no system message was added to it
    assert not [m for m in _messages(client, plain_start["conversation_id"], alice["headers"]) if m["role"] == "system"]

    # /v1 alike: the user's instructions first, then the client's own system prompt
    r = client.post("/v1/chat/completions", headers=alice["headers"], json={
        "model": "smollm2-135m-instruct", "max_tokens": 3, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    v1 = _messages(client, r.json()["conversation_id"], alice["headers"])
    assert v1[0]["role"] == "system" and v1[0]["content"] == "Always answer in French, in one short sentence.\n\nBe brief."


def test_edit_and_resend_stores_a_branch(client):
    alice = signup(client, "alice")
    first = chat_turn(client, alice["token"], "Tell me about cats.", max_new_tokens=3)
    conv = first["starts"][0]["conversation_id"]
    second = chat_turn(client, alice["token"], "And their food?", conversation_id=conv, max_new_tokens=3)
    old_user = second["starts"][0]["user_message_id"]
    edited = chat_turn(client, alice["token"], "And their toys?", conversation_id=conv, edit_of=old_user, max_new_tokens=3)
    new_user = edited["starts"][0]["user_message_id"]
    msgs = {m["id"]: m for m in _messages(client, conv, alice["headers"])}
    assert msgs[new_user]["content"] == "And their toys?" and msgs[old_user]["content"] == "And their food?"
    assert msgs[new_user]["parent_id"] == msgs[old_user]["parent_id"] == first["starts"][0]["message_id"]
    # editing the first turn branches from the root
    root = chat_turn(client, alice["token"], "Tell me about dogs.", conversation_id=conv, edit_of=first["starts"][0]["user_message_id"],
                     max_new_tokens=3)
    assert {m["id"]: m for m in _messages(client, conv, alice["headers"])}[root["starts"][0]["user_message_id"]]["parent_id"] is None

    bob = signup(client, "bob")
    theirs = chat_turn(client, bob["token"], "Hi", conversation_id=conv, edit_of=old_user, max_new_tokens=3)
    assert theirs["error"]["code"] == "not_found"
    bobs = chat_turn(client, bob["token"], "Hi", max_new_tokens=3)
    cross = chat_turn(client, bob["token"], "Hi", conversation_id=bobs["starts"][0]["conversation_id"], edit_of=old_user, max_new_tokens=3)
    assert cross["error"]["code"] == "not_found"
    reply_id = first["starts"][0]["message_id"]
    not_user = chat_turn(client, alice["token"], "Hi", conversation_id=conv, edit_of=reply_id, max_new_tokens=3)
    assert not_user["error"]["code"] == "not_found"
    both = chat_turn(client, alice["token"], "Hi", conversation_id=conv, edit_of=old_user, parent_id=reply_id, max_new_tokens=3)
    assert both["error"]["code"] == "bad_frame"
    # issue 28, L3: a refused frame without a conversation left an empty conversation behind
    before = len(client.get("/api/conversations", headers=bob["headers"]).json())
    for frame in ({"edit_of": old_user}, {"parent_id": reply_id}):
        refused = chat_turn(client, bob["token"], "Hi", conversation_id=None, max_new_tokens=3, **frame)
        assert refused["error"]["code"] == "not_found"
    assert len(client.get("/api/conversations", headers=bob["headers"]).json()) == before
    # without a conversation id, one's own parent message names its conversation
    again = chat_turn(client, alice["token"], "More?", conversation_id=None, parent_id=reply_id, max_new_tokens=3)
    assert again["starts"][0]["conversation_id"] == conv


def _search_case(client):
    alice, bob = signup(client, "alice"), signup(client, "bob")
    conv_a = chat_turn(client, alice["token"], "My zebra is called Marmalade.", max_new_tokens=3)["starts"][0]["conversation_id"]
    conv_tea = chat_turn(client, alice["token"], "Unrelated question about tea.", max_new_tokens=3)["starts"][0]["conversation_id"]
    conv_b = chat_turn(client, bob["token"], "Bob also owns a zebra.", max_new_tokens=3)["starts"][0]["conversation_id"]
    client.patch(f"/api/conversations/{conv_a}", json={"title": "Pets"}, headers=alice["headers"])

    hits = client.get("/api/conversations", params={"q": "marmalade"}, headers=alice["headers"]).json()
    assert [h["id"] for h in hits] == [conv_a] and "Marmalade" in hits[0]["snippet"]
    zebra = client.get("/api/conversations", params={"q": "zebra"}, headers=alice["headers"]).json()
    assert [h["id"] for h in zebra] == [conv_a]  # never bob's conversation
    assert [h["id"] for h in client.get("/api/conversations", params={"q": "zebra"}, headers=bob["headers"]).json()] == [conv_b]
    assert [h["id"] for h in client.get("/api/conversations", params={"q": "pets"}, headers=alice["headers"]).json()] == [conv_a]
    assert client.get("/api/conversations", params={"q": "%"}, headers=alice["headers"]).json() == []  # no wildcard
    page = client.get("/api/conversations", params={"limit": 1, "offset": 1}, headers=alice["headers"]).json()
    assert [p["id"] for p in page] == [conv_tea]  # most recently updated first: the renamed one, then tea
    assert client.get("/api/conversations", params={"limit": 0}, headers=alice["headers"]).status_code == 422
    assert client.get("/api/conversations", params={"q": "x" * 201}, headers=alice["headers"]).status_code == 422


def test_search_is_owner_scoped_on_sqlite(client):
    _search_case(client)


def test_search_is_owner_scoped_on_postgres(app_factory, make_postgres_database):
    _search_case(app_factory(database_url=make_postgres_database()))


def test_learned_counts_the_users_own_ratings(client):
    alice, bob = signup(client, "alice"), signup(client, "bob")
    out = chat_turn(client, alice["token"], "Say hi.", alternatives=2, max_new_tokens=3)
    a, b = (s["message_id"] for s in out["starts"])
    client.post(f"/api/messages/{a}/feedback", json={"rating": "up"}, headers=alice["headers"])
    client.post(f"/api/messages/{b}/feedback", json={"rating": "down"}, headers=alice["headers"])
    client.post("/api/rankings", json={"message_ids": [a, b]}, headers=alice["headers"])
    mine = client.get("/api/me/learned", headers=alice["headers"]).json()
    assert mine["totals"] == {"up": 1, "down": 1, "rankings": 1} and mine["policy"] == "base" and mine["traits"] == []
    assert mine["rounds"][-1]["version"] is None and mine["rounds"][-1]["new_labels"] == {"up": 1, "down": 1, "rankings": 1}
    assert client.get("/api/me/learned", headers=bob["headers"]).json()["totals"] == {"up": 0, "down": 0, "rankings": 0}
    with Session(client.app.state.db) as session:  # the account's deletion takes its preferences along
        assert session.exec(select(Message).where(Message.user_id == alice["id"])).first() is not None
    client.put("/api/me/preferences", json={"instructions": "Be kind."}, headers=alice["headers"])
    assert client.delete("/api/me", headers=alice["headers"]).status_code == 204
