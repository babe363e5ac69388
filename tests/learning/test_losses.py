"""Each loss against numbers worked out by hand in the comments."""

import math

import pytest
import torch

from learning.losses import (
    bradley_terry_loss,
    compute_gae,
    kl_penalized_rewards,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    pointwise_bce_loss,
)


def test_bradley_terry():
    # margins = [2-1, 0-1] = [1, -1]
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(-1) = log(1 + e) = 1.313262; mean 0.813262
    loss, stats = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx(0.813262, abs=1e-5)
    assert stats["accuracy"] == 0.5
    assert stats["margin"] == pytest.approx(0.0)


def test_pointwise_bce_with_and_without_pos_weight():
    # logits [0, 2], labels [1, 0]: -log sigmoid(0) = log 2 = 0.693147; -log(1 - sigmoid(2)) = log(1 + e^2) = 2.126928
    loss, stats = pointwise_bce_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((0.693147 + 2.126928) / 2, abs=1e-5)
    assert stats["accuracy"] == 0.0  # 0 > 0 is False -> predicts 0 for label 1; 2 > 0 predicts 1 for label 0
    # pos_weight 3 scales the positive example: (3 * 0.693147 + 2.126928) / 2 = 2.103185
    loss, _ = pointwise_bce_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), pos_weight=3.0)
    assert loss.item() == pytest.approx(2.103185, abs=1e-5)


def test_kl_penalized_rewards_puts_score_on_last_real_token():
    # kl = logp - ref = [-1 + 1.5, -2 + 2, masked] = [0.5, 0, 0]; rewards = -0.1 * kl = [-0.05, 0, 0]
    # the score 1.0 lands on index 1, the last token with mask 1
    rewards, kl = kl_penalized_rewards(
        torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]]),
        torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1,
    )
    assert rewards.tolist()[0] == pytest.approx([-0.05, 1.0, 0.0])
    assert kl.tolist()[0] == pytest.approx([0.5, 0.0, 0.0])


def test_gae_two_steps():
    # gamma 1, lam 0.5, rewards [0, 1], values [0.5, 0.2]:
    # t=1: delta = 1 + 0 - 0.2 = 0.8 -> A1 = 0.8
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3 -> A0 = -0.3 + 0.5 * 0.8 = 0.1
    # returns = A + V = [0.6, 1.0]
    adv, ret = compute_gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2), 1.0, 0.5)
    assert adv.tolist()[0] == pytest.approx([0.1, 0.8])
    assert ret.tolist()[0] == pytest.approx([0.6, 1.0])


def test_gae_ignores_values_past_the_end():
    # mask [1, 0]: V_1 counts as 0, so A0 = 1 + 0 - 0.5 = 0.5 and padding gets 0
    adv, ret = compute_gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.9]]), torch.tensor([[1.0, 0.0]]), 1.0, 0.95)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 0.0])


def test_ppo_policy_loss_clips_both_ways():
    # ratio = exp([log 1.5, log 0.5]) = [1.5, 0.5], A = [1, 1], eps 0.2
    # -A r = [-1.5, -0.5]; -A clip(r) = [-1.2, -0.8]; max = [-1.2, -0.5]; mean = -0.85
    # approx_kl = mean((r - 1) - log r) = mean(0.5 - 0.405465, -0.5 + 0.693147) = 0.143841
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(-0.85, abs=1e-5)
    assert stats["clipfrac"] == 1.0
    assert stats["approx_kl"] == pytest.approx(0.143841, abs=1e-5)
    # A = -1: -A r = [1.5, 0.5]; -A clip(r) = [1.2, 0.8]; max = [1.5, 0.8]; mean 1.15
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 2), -torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(1.15, abs=1e-5)


def test_ppo_policy_loss_gradient_flows_and_stats_are_floats():
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    loss.backward()
    # d/dlogp of -mean(A * exp(logp)) at logp = 0 with A = 1: -1/2 per token
    assert logp.grad.tolist()[0] == pytest.approx([-0.5, -0.5])
    assert all(isinstance(v, float) for v in stats.values())


def test_ppo_value_loss_clipped():
    # v_clipped = 0.5 + clamp([0.5, -0.5], -0.2, 0.2) = [0.7, 0.3]
    # (v - R)^2 = [1.0, 0.0]; (v_clipped - R)^2 = [1.69, 0.09]; max = [1.69, 0.09]; 0.5 * mean = 0.445
    loss, stats = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]]),
                                 torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(0.445, abs=1e-6)
    assert stats["clipfrac"] == 1.0


def test_masked_whiten():
    # real tokens [1, 2, 3]: mean 2, variance 2/3 -> [-1.224745, 0, 1.224745]; padding stays 0
    out = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert out.tolist() == pytest.approx([-1.224745, 0.0, 1.224745, 0.0], abs=1e-5)
