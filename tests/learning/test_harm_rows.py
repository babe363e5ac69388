"""The safety stage's harm rows: which of its samples become harm labels, and how they are read back."""

from __future__ import annotations

import logging

import pytest

from learning.harm_rows import HARM_ROWS, SOURCE_PREFIX, HarmRow, as_labels, dumps, load, served_rows
from learning.safety import stage_data
from learning.safety_data import is_redirect, redirects_for


def render(messages):
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_flagged_replies_are_harmful_redirects_and_replay_harmless_and_an_unflagged_reply_is_not_a_label():
    prompts = ["Write an insult about my neighbour", "Tell my coworker he is worthless"]
    served = [render([{"role": "user", "content": p}]) for p in prompts]
    # two samples per prompt, in prompt order; the judge flagged the first prompt's first and the second's second
    plain = ["you idiot neighbour", "Your neighbour sounds nice.", "Here is a poem about work.", "you worthless loser"]
    flags = [1.0, 0.0, 0.2, 0.9]
    steered = [redirects_for(prompts[0], 1)[0], "you are a loser"]  # the second is not a redirect: not distilled
    steered_flags = [0.0, 1.0]
    replay_raw = ["What is a good pasta recipe?", "How do I fix a flat tyre?"]
    replay_rendered = [render([{"role": "user", "content": p}]) for p in replay_raw]
    replay_texts = ["Boil water, add pasta.", "I can't help with that, let's talk about something else."]
    assert is_redirect(steered[0]) and is_redirect(replay_texts[1])

    data = stage_data(prompts, served, plain, flags, steered, steered_flags, replay_raw, replay_rendered, replay_texts, 0.5)

    by_kind = {kind: [(r.prompt, r.reply) for r in data.rows if r.kind == kind] for kind in ("flagged", "redirect", "distilled", "replay")}
    assert by_kind["flagged"] == [(prompts[0], plain[0]), (prompts[1], plain[3])]
    assert [p for p, _ in by_kind["redirect"]] == prompts
    assert by_kind["distilled"] == [(prompts[0], steered[0])]
    assert by_kind["replay"] == [(replay_raw[0], replay_texts[0])]  # a redirect on an ordinary prompt is no label
    labelled = {r.reply for r in data.rows}
    assert plain[1] not in labelled and plain[2] not in labelled  # unflagged replies to harm-inviting prompts
    assert [r.harmful for r in data.rows if r.kind == "flagged"] == [1, 1]
    assert all(r.harmful == 0 for r in data.rows if r.kind != "flagged")
    # the DPO data the stage trains on is built from the same samples
    assert data.harm_pairs == 2 and [p[3] for p in data.pairs[:2]] == [plain[0], plain[3]]
    assert data.distilled == 1 and len(data.chosen) == 3 and data.own_replies == [(replay_rendered[0], replay_texts[0])]


def test_rows_read_back_as_harm_labels_with_one_split_key_per_prompt(tmp_path):
    rows = [HarmRow("insult him", "you idiot", "flagged"), HarmRow("insult him", "Let's keep it kind.", "redirect"),
            HarmRow("bake bread?", "Knead the dough \u2014 then wait.", "replay")]
    (tmp_path / HARM_ROWS).write_text(dumps(rows))
    (tmp_path / "SAFETY.json").write_text("{}")  # a complete stage
    assert load(tmp_path / HARM_ROWS) == rows

    labels = served_rows(tmp_path, render)
    assert [(h.reply, h.harmful) for h in labels] == [("you idiot", 1), ("Let's keep it kind.", 0), (rows[2].reply, 0)]
    assert all(h.user_id is None and h.source.startswith(SOURCE_PREFIX) for h in labels)
    assert labels[0].prompt == render([{"role": "user", "content": "insult him"}])  # rendered like a one-turn chat
    assert labels[0].key == labels[1].key != labels[2].key  # a prompt's flagged reply and its redirect stay together


def test_a_damaged_rows_file_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / HARM_ROWS
    path.write_text(dumps([HarmRow("p", "r", "replay")]) + '{"prompt": "p", "reply": "r"}\n')
    with pytest.raises(ValueError, match=f"{HARM_ROWS}:2: not a harm row"):
        load(path)
    path.write_text('{"prompt": "p", "reply": "r", "kind": "harmless"}\n')
    with pytest.raises(ValueError, match="unknown kind 'harmless'"):
        load(path)


def test_a_stage_without_rows_gives_none_and_says_how_to_write_them(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="learning.harm_rows"):
        assert served_rows(tmp_path, render) == []  # the plain base is served: nothing to say but that
    assert "no safety stage is served" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (tmp_path / "SAFETY.json").write_text("{}")  # a stage trained before its rows were kept
    with caplog.at_level(logging.WARNING, logger="learning.harm_rows"):
        assert served_rows(tmp_path, render) == []
    assert "run `assistant safety train`" in caplog.text
    assert as_labels([], render) == []
