"""The serving filter on the real model: a flagged reply is cut before the flagged words, ends with the
redirect, is stored as streamed with the finish reason content_filter, and is counted."""

from __future__ import annotations

import re

import openai

from service.content_filter import REDIRECT, ReplyFilter
from service.judges import KeywordJudge, register_judge
from tests.service.conftest import NAME_THE_CAPITAL, chat_turn, signup

# a judge that flags a word almost every English reply holds, so the real model trips it for sure
register_judge("test-flags-the", lambda: KeywordJudge(keywords=("the",), name="test-flags-the"))


def test_word_boundaries_hold_back_the_word_being_written():
    assert ReplyFilter.complete("You are a fo") == len("You are a ")
    assert ReplyFilter.complete("Done.") == 5 and ReplyFilter.complete("abc") == 0


def test_a_flagged_reply_is_cut_before_the_flagged_word_and_ends_with_the_redirect(app_factory):
    client = app_factory(serving_filter="test-flags-the")
    alice = signup(client, "alice")
    out = chat_turn(client, alice["token"], "Describe the sea and the sky in two sentences.", max_new_tokens=48,
                    temperature=0.0)
    (start,) = out["starts"]
    mid = start["message_id"]
    text = out["text"][mid]
    assert out["ends"][mid]["finish_reason"] == "content_filter", text
    assert text.endswith(REDIRECT) and not re.search(r"\bthe\b", text[: -len(REDIRECT)], re.IGNORECASE)
    conv = client.get(f"/api/conversations/{start['conversation_id']}", headers=alice["headers"]).json()
    stored = conv["messages"][1]
    assert stored["content"] == text and stored["finish_reason"] == "content_filter"  # what was shown is what is kept
    assert "assistant_filtered_replies_total 1.0" in client.get("/metrics").text

    key = client.post("/api/me/api-keys", json={"name": "k"}, headers=alice["headers"]).json()["key"]
    oai = openai.OpenAI(api_key=key, base_url="http://127.0.0.1:8000/v1", http_client=client)
    reply = oai.chat.completions.create(model="smollm2-135m-instruct", max_tokens=48, temperature=0.0,
                                        messages=[{"role": "user", "content": "Describe the sea and the sky."}])
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content.endswith(REDIRECT)


def test_the_insults_filter_leaves_an_ordinary_reply_alone_and_is_off_by_default(app_factory):
    assert app_factory().app.state.chat.reply_filter is None  # ASSISTANT_SERVING_FILTER=none by default
    client = app_factory(serving_filter="insults")
    alice = signup(client, "alice")
    out = chat_turn(client, alice["token"], NAME_THE_CAPITAL, max_new_tokens=12, temperature=0.0)
    (start,) = out["starts"]
    assert out["ends"][start["message_id"]]["finish_reason"] in ("stop", "length")
    assert "Paris" in out["text"][start["message_id"]]
