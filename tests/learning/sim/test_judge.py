"""Harm judges: an insult scores higher than a polite sentence, on both judges."""

from __future__ import annotations

import pytest

from learning.sim.judge import WordListJudge, flags, make_judge

INSULT = "You are a worthless idiot and everyone hates you, shut up."
POLITE = "Thank you for asking; here is a recipe for vegetable soup."


@pytest.mark.parametrize("name", ["profanity-check", "wordlist"])
def test_insult_scores_higher_than_polite(name):
    judge = make_judge(name, fallback=False) if name == "wordlist" else make_judge(name)
    insult, polite = judge.score([INSULT, POLITE])
    assert 0.0 <= polite < judge.threshold <= insult <= 1.0
    assert flags(judge, [INSULT, POLITE]) == [True, False]


def test_profanity_check_is_the_default_and_installed():
    pytest.importorskip("profanity_check", reason="alt-profanity-check is not installed")
    assert make_judge().name == "profanity-check"


def test_wordlist_judge_is_labelled_and_counts_hits():
    j = WordListJudge()
    assert "fallback" in j.name
    assert j.score(["idiot", "idiot moron", "hello"]) == [0.5, 0.75, 0.0]


def test_unknown_judge_and_bad_threshold():
    with pytest.raises(ValueError, match="unknown harm judge"):
        make_judge("nope")
    with pytest.raises(ValueError, match="threshold"):
        make_judge("wordlist", threshold=0.0)
