"""Open WebUI's thumbs reach the learning loop (issue 13): its feedback export (the records its
Evaluations page exports, with the chat snapshot it stores) is imported as ratings of the replies
this server generated for each proxied user. No Open WebUI process runs here: the records are
built in the shape its frontend saves (type, data.rating, meta.message_id, snapshot.chat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session

from service import crud
from service.models import Rating
from service.openwebui_import import import_feedback, map_reasons

REPO = Path(__file__).resolve().parents[2]
PROXY_KEY = "proxy-key-for-open-webui-0123456789abcdef"
MODEL = "smollm2-135m-instruct"


def _as(external_id: str) -> dict:
    return {"Authorization": f"Bearer {PROXY_KEY}", "X-OpenWebUI-User-Id": external_id}


def _ask(client, headers, question: str, history: list[dict] = ()) -> str:
    r = client.post("/v1/chat/completions", headers=headers, json={
        "model": MODEL, "max_tokens": 8, "temperature": 0.0, "messages": [*history, {"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _record(user_id: str, question: str, reply: str, rating, reason: str = "", comment: str = "", rid: str = "fb",
            at: int = 1764000000, score=None) -> dict:
    """A feedback record as Open WebUI saves it: the rated message and its parent in the chat snapshot."""
    history = {"u1": {"id": "u1", "parentId": None, "childrenIds": ["a1"], "role": "user", "content": question},
               "a1": {"id": "a1", "parentId": "u1", "childrenIds": [], "role": "assistant", "content": reply, "model": MODEL}}
    return {"id": rid, "user_id": user_id, "version": 0, "type": "rating",
            "data": {"rating": rating, "model_id": MODEL, "reason": reason, "comment": comment, "tags": [], "details": {"rating": score}},
            "meta": {"arena": False, "model_id": MODEL, "message_id": "a1", "message_index": 2, "chat_id": "c1"},
            "snapshot": {"chat": {"id": "c1", "user_id": user_id, "title": "t",
                                  "chat": {"history": {"messages": history, "currentId": "a1"}}}},
            "created_at": at, "updated_at": at}


def test_open_webui_feedback_export_becomes_the_proxied_users_ratings(app_factory, tmp_path):
    client = app_factory(proxy_key=PROXY_KEY)
    ann, ben = _as("3f9c2a1e-ann"), _as("77b1d0c4-ben")
    egg = _ask(client, ann, "How do I boil an egg?")
    tea = _ask(client, ann, "How do I make tea?")
    ben_reply = _ask(client, ben, "How do I boil an egg?")  # greedy: the same text as Ann's
    assert egg and tea and egg != tea and ben_reply == egg
    # a turn the client wrote (context only) can never become a label
    _ask(client, ann, "And then?", history=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "client-written"}])
    records = [
        _record("3f9c2a1e-ann", "How do I boil an egg?", egg, 1, "Accurate information", "nice", rid="r1", score=8),
        _record("3f9c2a1e-ann", "How do I make tea?", tea, -1, "dont_like_the_style", rid="r2", score="3"),
        _record("3f9c2a1e-ann", "Q", "client-written", 1, rid="r3"),  # not generated here
        _record("3f9c2a1e-ann", "How do I boil an egg?", egg + " (edited)", 1, rid="r4"),  # no such reply of Ann's
        _record("never-proxied", "How do I boil an egg?", egg, 1, rid="r5"),  # no such user
        {**_record("3f9c2a1e-ann", "How do I make tea?", tea, None), "id": "r6"},  # no thumbs (a 1-10 score only)
        {"id": "r7", "type": "arena"},
        "not a record",
        {"id": "r8", "type": "rating", "user_id": "3f9c2a1e-ann", "data": {"rating": 1}, "meta": "x", "snapshot": [1]},
        {"id": "r9", "type": "rating", "user_id": "3f9c2a1e-ann", "data": {"rating": float("inf")}, "meta": {}},
    ]
    with Session(client.app.state.db) as session:
        dry = import_feedback(session, records, dry_run=True)
        assert dry.imported == 2
        ann_user = crud.get_user_by_username(session, username="owui-3f9c2a1e-ann")
        assert not crud.list_feedback(session, user_id=ann_user.id)  # a dry run writes nothing
        report = import_feedback(session, records)
        assert (report.imported, report.unchanged, len(report.skipped)) == (2, 0, 8), report.skipped
        assert any("r5" in s and "owui-never-proxied" in s for s in report.skipped)
        got = {fb.message_id: fb for fb in crud.list_feedback(session, user_id=ann_user.id)}
        texts = {m_id: crud.get_message(session, user_id=ann_user.id, message_id=m_id).content for m_id in got}
        by_text = {texts[m]: got[m] for m in got}
        assert set(by_text) == {egg, tea}
        assert (by_text[egg].rating, by_text[egg].reasons, by_text[egg].comment, by_text[egg].score) == (Rating.up, ["accurate"], "nice", 8)
        # a reason code with no counterpart here is kept in the comment; its 1-10 score is kept
        assert (by_text[tea].rating, by_text[tea].reasons, by_text[tea].comment, by_text[tea].score) == (
            Rating.down, [], "[Open WebUI: Don't like the style]", 3)
        ben_user = crud.get_user_by_username(session, username="owui-77b1d0c4-ben")
        assert not crud.list_feedback(session, user_id=ben_user.id)  # Ann's ratings never land on Ben's same-text reply
        # the same export again changes nothing; a changed vote replaces the old one
        again = import_feedback(session, records)
        assert (again.imported, again.unchanged) == (0, 2)
        # two votes on one reply, listed newest first as Open WebUI exports them: the newest wins
        flipped = import_feedback(session, [_record("3f9c2a1e-ann", "How do I boil an egg?", egg, -1, rid="r1b", at=1764000200),
                                            _record("3f9c2a1e-ann", "How do I boil an egg?", egg, 1, rid="r1a", at=1764000100)])
        assert flipped.imported == 2  # applied oldest first, so the newer thumbs-down is the one that stays
        assert {fb.rating for fb in crud.list_feedback(session, user_id=ann_user.id)} == {Rating.down}

    # ratings the user deleted here are never brought back by the next import; newer ones are
    assert client.delete("/api/me/feedback", headers=ann).status_code == 204
    with Session(client.app.state.db) as session:
        again = import_feedback(session, records)
        assert again.imported == 0
        assert all(any(f"({r})" in x and "deleted their ratings" in x for x in again.skipped) for r in ("r1", "r2"))
        newer = import_feedback(session, [_record("3f9c2a1e-ann", "How do I make tea?", tea, 1, rid="r10", at=4102444800)])
        assert newer.imported == 1

    # the operator's command: the same import from the exported file
    path = tmp_path / "feedback-export.json"
    path.write_text(json.dumps(records))
    settings = client.app.state.settings
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(settings.data_dir), "ASSISTANT_DATABASE_URL": settings.resolved_database_url,
           "ASSISTANT_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "service.cli", "import-openwebui-feedback", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 imported, 0 unchanged, 10 skipped" in done.stdout  # r1, r2 were made before Ann deleted her ratings
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "service.cli", "import-openwebui-feedback", str(tmp_path / "bad.json")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not Open WebUI's feedback export" in bad.stderr


def test_open_webui_reason_codes_all_map():
    """Issue 31: Open WebUI 0.5+ stores reason codes; 5 of its 13 arrived with no reason."""
    down = {"too_verbose": ["too_long"], "not_helpful": ["unhelpful"], "not_factually_correct": ["inaccurate"],
            "didnt_fully_follow_instructions": ["unhelpful"], "refused_when_it_shouldnt_have": ["refused"],
            "being_lazy": ["unhelpful"], "dont_like_the_style": [], "other": []}
    up = {"accurate_information": ["accurate"], "followed_instructions_perfectly": ["helpful"],
          "showcased_creativity": ["creative"], "positive_attitude": ["friendly"], "attention_to_detail": ["detailed"],
          "thorough_explanation": ["detailed"], "other": []}
    assert {code: map_reasons(code, [], Rating.down) for code in down} == down
    assert {code: map_reasons(code, [], Rating.up) for code in up} == up


def test_open_webui_reasons_map_by_keywords_and_by_the_rating_side():
    assert map_reasons("Not factually correct", [], Rating.down) == ["inaccurate"]
    assert map_reasons("Showcased creativity", ["Attention to detail"], Rating.up) == ["creative", "detailed"]
    assert map_reasons("Accurate information", [], Rating.down) == []  # a positive reason on a thumbs-down is dropped
    assert map_reasons(None, None, Rating.up) == []
