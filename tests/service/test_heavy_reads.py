"""Issue 28, M7: searches and exports are heavy reads: a per-user rate, threads of their own, and a
search that runs past its deadline is stopped by the database (503), not left holding a thread and
a connection while other users wait. The export streams one conversation at a time."""

from __future__ import annotations

import json

from sqlmodel import Session

from service import crud
from service.models import Message
from tests.service.conftest import signup

WORST_CASE = "a" * 199 + "b"  # SQLite: LIKE '%aaa…ab%' over text of a's compares O(n·m) characters
# PostgreSQL searches with full-text search, where one 8000-character word is cheap (to_tsvector skips a
# word that long: ~75 ms for 600 of them on a fast machine, near the deadline) and many short words are
# not (~0.5-0.65 s for 600 messages of 5400 words each)
MANY_WORDS = "ab " * 2700


def _store(client, user_id: int, conversations: int, messages: int, text: str) -> None:
    with Session(client.app.state.db) as s:
        for c in range(conversations):
            conv = crud.create_conversation(s, user_id=user_id, title=f"chat {c}")
            s.add_all(Message(conversation_id=conv.id, user_id=user_id, role="user", content=text) for _ in range(messages))
        s.commit()


def _deadline_case(client, text: str = "a" * 8000) -> None:
    mallory, alice = signup(client, "mallory"), signup(client, "alice")
    _store(client, mallory["id"], conversations=4, messages=150, text=text)
    r = client.get("/api/conversations", params={"q": WORST_CASE}, headers=mallory["headers"])
    assert r.status_code == 503 and "took longer than 0.05 s" in r.json()["detail"]
    assert r.headers["Retry-After"] == "1"
    _store(client, alice["id"], conversations=1, messages=1, text="marmalade on toast")
    hits = client.get("/api/conversations", params={"q": "marmalade"}, headers=alice["headers"])
    assert hits.status_code == 200 and len(hits.json()) == 1  # the connection was left usable


def test_a_crafted_search_stops_at_its_deadline_and_others_still_search(app_factory):
    _deadline_case(app_factory(search_timeout_s=0.05))
    # without a deadline the same search answers (slowly), with nothing found
    patient = app_factory(search_timeout_s=0)
    m2 = signup(patient, "mallory")
    _store(patient, m2["id"], conversations=1, messages=3, text="a" * 8000)
    assert patient.get("/api/conversations", params={"q": WORST_CASE}, headers=m2["headers"]).json() == []


def test_a_search_stops_at_its_deadline_on_postgres(app_factory, make_postgres_database):
    _deadline_case(app_factory(search_timeout_s=0.05, database_url=make_postgres_database()), text=MANY_WORDS)


def test_searches_and_exports_count_against_a_per_user_rate(app_factory):
    client = app_factory(heavy_reads_per_minute=3)
    alice, bob = signup(client, "alice"), signup(client, "bob")
    assert client.get("/api/conversations", params={"q": "x"}, headers=alice["headers"]).status_code == 200
    assert client.get("/api/me/export", headers=alice["headers"]).status_code == 200
    assert client.get("/api/me/feedback/export", headers=alice["headers"]).status_code == 200
    over = client.get("/api/conversations", params={"q": "x"}, headers=alice["headers"])
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert client.get("/api/me/export", headers=alice["headers"]).status_code == 429
    assert client.get("/api/conversations", headers=alice["headers"]).status_code == 200  # listing is not a heavy read
    assert client.get("/api/conversations", params={"q": "x"}, headers=bob["headers"]).status_code == 200  # per user


def test_the_export_streams_every_conversation_as_one_document(app_factory):
    client = app_factory()
    alice, bob = signup(client, "alice"), signup(client, "bob")
    _store(client, alice["id"], conversations=3, messages=2, text="ünïcode \"quoted\" text")
    _store(client, bob["id"], conversations=1, messages=1, text="bob's secret")
    with client.stream("GET", "/api/me/export", headers=alice["headers"]) as r:
        assert r.status_code == 200 and "my-conversations.json" in r.headers["Content-Disposition"]
        chunks = list(r.iter_raw())
    doc = json.loads(b"".join(chunks))
    assert doc["user"] == {"id": alice["id"], "username": "alice"}
    assert sorted(c["title"] for c in doc["conversations"]) == ["chat 0", "chat 1", "chat 2"]
    assert all(m["content"] == "ünïcode \"quoted\" text" for c in doc["conversations"] for m in c["messages"])
    assert "bob's secret" not in b"".join(chunks).decode()
    empty = signup(client, "carol")
    assert client.get("/api/me/export", headers=empty["headers"]).json() == {"user": {"id": empty["id"], "username": "carol"},
                                                                             "conversations": []}
