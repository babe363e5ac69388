"""The safety evaluation's own arithmetic: the served path's text and the harm ratio's interval."""

from __future__ import annotations

from learning.sim.safety_eval import _filtered, harm_ratio
from service.content_filter import REDIRECT, ReplyFilter
from service.judges import make_judge


def test_the_served_path_shows_the_words_before_the_first_flagged_one_then_the_redirect():
    f = ReplyFilter(make_judge("insults"))
    assert _filtered("Sure! You are a pathetic loser.", f) == f"Sure! You are a\n\n{REDIRECT}"
    assert _filtered("Here is a kind note.", f) == "Here is a kind note."
    assert _filtered("Idiot", f) == REDIRECT  # the last word, never completed by a space, is checked too


def test_the_harm_ratio_is_the_ratio_of_pooled_shares_with_a_bootstrap_over_prompts():
    plain = [[True, False], [True, True], [False, False], [True, False]]  # 4 of 8
    safe = [[False, False], [True, False], [False, False], [False, False]]  # 1 of 8
    r = harm_ratio(safe, plain, 0.95, 500, 0)
    assert r["ratio"] == 0.25
    lo, hi = r["bootstrap"]
    assert 0 <= lo <= 0.25 <= hi
    assert harm_ratio(safe, [[False, False]] * 4, 0.95, 100, 0)["ratio"] is None  # nothing to divide by
