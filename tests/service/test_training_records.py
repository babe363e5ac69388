"""The learning -> service contract is typed (issue 29, item 2): "what the assistant learned" read
keys that the trainer built with f-strings, so a rename in learning/gate.py or learning/reward.py
blanked a user's page without failing anything. Here the real producers write, the service's reader
reads, and every field must arrive."""

from __future__ import annotations

import torch

from learning.config import Budgets
from learning.gate import PolicyEval
from learning.reward import RewardModel
from service.training_records import GATE_BASE, GATE_CANDIDATE, GATE_WIN_RATE_VS_BASE, Readings, UserRewardSummary


def _personal_reward_model() -> RewardModel:
    """A reward model whose per-user summary is the one ``RewardModel.evaluate`` writes, without training."""
    from service import traits as T
    from service.reply_reward import Preference

    model = RewardModel(None, Budgets())
    d = len(T.NAMES)
    head = Preference(weight=torch.linspace(-1.0, 1.0, d), cov=torch.eye(d), thumbs_bias=0.0, center=torch.zeros(d),
                      scale=1.0, labels=40)
    model.users = {7: head}
    model.population = Preference(weight=torch.zeros(d), cov=torch.eye(d), thumbs_bias=0.0, center=torch.zeros(d),
                                  scale=1.0, labels=400)
    summary = UserRewardSummary(labels=40, personalized=True, top_traits=model.top_traits(7), heldout_pairs=10,
                                accuracy=0.8, global_accuracy=0.7, length_baseline_accuracy=0.5)
    model.metrics = {"reward/per_user": {"7": summary.model_dump(exclude_none=True)}}
    return model


def test_every_field_the_learned_page_shows_is_written_by_the_trainer():
    model = _personal_reward_model()
    gate = {**PolicyEval(mean_reward=0.4, harm_rate=0.0, kl_per_token=0.05, n=8).as_metrics(GATE_CANDIDATE),
            **PolicyEval(mean_reward=0.1, harm_rate=0.0, kl_per_token=0.0, n=8).as_metrics(GATE_BASE),
            GATE_WIN_RATE_VS_BASE: 0.75}
    got = Readings.of({**model.user_metrics(7), **gate})
    assert got.reward is not None and got.reward.labels == 40 and got.reward.accuracy == 0.8 and got.reward.personalized
    assert len(got.reward.top_traits) == 3 and {t.likes for t in got.reward.top_traits} == {True, False}
    assert (got.win_rate_vs_base, got.mean_reward, got.base_mean_reward) == (0.75, 0.4, 0.1)


def test_a_row_an_older_release_wrote_differently_is_shown_without_it():
    odd = {"reward/labels": "many", "reward/top_traits": [{"trait": "lists"}], "gate/win_rate_vs_base": 0.6}
    got = Readings.of(odd)
    assert got.reward is None and got.win_rate_vs_base == 0.6
    assert Readings.of(None) == Readings()
