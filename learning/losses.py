"""Losses and estimators for the reward model and PPO. Small, cited, hand-tested.

Every loss returns ``(loss, stats)``: ``loss`` carries the gradient, ``stats`` is
a dict of detached floats for logging. Tensors named ``mask`` are 1.0 on real
reply tokens and 0.0 on padding; all means are over real tokens only.

Tests: ``tests/learning/test_losses.py`` checks each against numbers worked out by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens (CleanRL's advantage normalisation)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs.

    Bradley & Terry (1952), "Rank analysis of incomplete block designs"; as the reward-model
    loss in Ouyang et al. (2022), "Training language models to follow instructions", eq. 1.
    ``r_*``: (N,) scalar rewards of the preferred and the other reply.
    """
    margin = r_chosen - r_rejected  # (N,)
    loss = -F.logsigmoid(margin).mean()
    stats = {"loss": loss.item(), "accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
    return loss, stats


def pointwise_bce_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary cross-entropy on thumbs (1 = up / harmful, 0 = down / harmless).

    Standard logistic regression; ``pos_weight`` rescales the positive class as in
    ``torch.nn.BCEWithLogitsLoss`` (used for the rare harm labels).
    """
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)
    stats = {"loss": loss.item(), "accuracy": ((logits > 0).float() == labels).float().mean().item()}
    return loss, stats


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) at every token, plus the score at the last real token.

    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", eq. 2;
    Ouyang et al. (2022) eq. 2. ``scores``: (B,); the rest (B, T). Returns (rewards (B, T), kl (B, T)).
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, T) the k1 estimator per sampled token
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over reply tokens; values past the end count as 0.

    Schulman et al. (2016), "High-Dimensional Continuous Control Using GAE", eq. 16:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}. Returns = A + V.
    All inputs and both outputs (B, T).
    """
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae * (mask[:, t + 1] if t + 1 < T else 0.0)
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate objective, negated: max(-A r, -A clip(r, 1-eps, 1+eps)), r = pi/pi_old.

    Schulman et al. (2017), "Proximal Policy Optimization Algorithms", eq. 7; same form as
    CleanRL's ppo.py and torchtune's PPOLoss. ``approx_kl`` is the low-variance
    estimator mean((r - 1) - log r) (Schulman, "Approximating KL divergence", 2020).
    """
    log_ratio = (logprobs - old_logprobs) * mask  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "clipfrac": masked_mean((torch.abs(ratio - 1.0) > clip).float(), mask).item(),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2), averaged over real tokens.

    The clipped value loss of OpenAI baselines' PPO2 / CleanRL's ppo.py (``clip_vloss``).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "clipfrac": masked_mean(((values - returns) ** 2 < (v_clipped - returns) ** 2).float(), mask).item(),
        }
    return loss, stats


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean of the other scores of its group: s_i - (sum_j s_j - s_i) / (k - 1).

    RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
    2024, "Back to Basics", eq. 4). ``scores``: (B,) with B = G * k, each run of ``group_size`` = k
    consecutive rows answering one prompt. Returns (B,); unbiased, and zero when a group's replies
    all score the same.
    """
    k = group_size
    if k < 2 or scores.shape[0] % k:
        raise ValueError(f"leave-one-out needs groups of at least 2 that tile the batch (B={scores.shape[0]}, k={k})")
    g = scores.view(-1, k)  # (G, k)
    others = (g.sum(1, keepdim=True) - g) / (k - 1)  # (G, k)
    return (g - others).reshape(-1)
