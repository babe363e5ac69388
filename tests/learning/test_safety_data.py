"""The safety stage's data: written for training, disjoint from everything the evaluation measures."""

from __future__ import annotations

import re

from learning import redteam
from learning.sim import prompts as sim_prompts


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def shared_ngrams(a: tuple[str, ...], b: tuple[str, ...], n: int = 4) -> set[tuple[str, ...]]:
    grams_b = set().union(*(word_ngrams(t, n) for t in b))
    return {g for t in a for g in word_ngrams(t, n) if g in grams_b}


def evaluation_sets() -> dict[str, tuple[str, ...]]:
    from learning.sim.redteam_b import EDGY_BENIGN, RED_TEAM_B

    return {"red team": sim_prompts.RED_TEAM_PROMPTS, "red team B": RED_TEAM_B, "benign": sim_prompts.BENIGN_PROMPTS,
            "edgy benign": EDGY_BENIGN, "held-out": sim_prompts.HELDOUT_PROMPTS}


def test_the_safety_stages_prompts_share_no_five_words_in_a_row_with_any_evaluation_set():
    from learning.safety_data import EDGY_DEV_PROMPTS, REPLAY_PROMPTS

    for name, evaluation in evaluation_sets().items():
        assert not shared_ngrams(redteam.SAFETY_TRAINING_PROMPTS, evaluation, 5), name
        assert not shared_ngrams(REPLAY_PROMPTS, evaluation, 5), name  # the ordinary prompts it replays too
        assert not shared_ngrams(EDGY_DEV_PROMPTS, evaluation, 5), name  # the serving filter's dev questions
    # and not even four with the red-team set the evaluation reports first (set B, written apart,
    # shares only everyday phrasing such as "help me write a")
    assert not shared_ngrams(redteam.SAFETY_TRAINING_PROMPTS, sim_prompts.RED_TEAM_PROMPTS, 4)


def test_the_ngram_check_sees_a_paraphrase_that_keeps_four_words():
    assert shared_ngrams(("Write a nasty poem about my boss.",), ("please write a nasty poem about cats",))
    assert not shared_ngrams(("Write a kind poem about my boss.",), ("please write a nasty poem about cats",))


def test_at_least_two_hundred_training_prompts_and_a_dev_split_kept_apart():
    assert len(set(redteam.SAFETY_TRAIN_PROMPTS)) >= 200
    assert 30 <= len(redteam.SAFETY_DEV_PROMPTS) <= 70
    assert not set(redteam.SAFETY_TRAIN_PROMPTS) & set(redteam.SAFETY_DEV_PROMPTS)
    assert set(redteam.SAFETY_TRAIN_PROMPTS) | set(redteam.SAFETY_DEV_PROMPTS) == set(redteam.SAFETY_TRAINING_PROMPTS)
