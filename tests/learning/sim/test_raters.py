"""The synthetic rater library (issue 26, item 2): drawn by a program over the text indicators,
reproducible, and scored by hand."""

from __future__ import annotations

import pytest

from learning.sim.raters import SyntheticRater, draw
from service.text_features import tokens


def test_a_rater_scores_the_indicators_a_reply_shows():
    rater = SyntheticRater("r", (("w:colour", 1.5), ("l:short", -0.5), ("p:!", 1.0)))
    assert rater.score("any prompt", "A colour.\nIn short: red") == pytest.approx(1.5 - 0.5)
    assert rater.score("any prompt", "Red!") == pytest.approx(1.0)
    assert rater.score("any prompt", "") == 0.0


def test_raters_are_drawn_reproducibly_over_indicators_a_share_of_replies_show():
    replies = [f"Reply {i} about tea." if i % 2 else f"Reply {i} about coffee!" for i in range(20)]
    a, b = draw(replies, 30, seed=3), draw(replies, 30, seed=3)
    assert a == b and draw(replies, 30, seed=4) != a
    for rater in a:
        assert 1 <= len(rater.likes) <= 3 and all(0.5 <= abs(w) <= 1.5 for _, w in rater.likes)
        for indicator, _ in rater.likes:
            shown = sum(indicator in set(tokens(r)) for r in replies)
            assert 0.1 <= shown / len(replies) <= 0.6, indicator  # "w:reply", in every reply, is never drawn
    with pytest.raises(ValueError, match="stored replies"):
        draw([], 3)
