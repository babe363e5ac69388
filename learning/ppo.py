"""PPO on one LoRA adapter, written to be read top to bottom (after CleanRL's ppo.py).

The models (policy = base + LoRA, reference = adapter disabled, value head) and sampling live in
``learning.policy``; this module is the algorithm. Reward at a reply's last token:

    score = user reward (lower bound, mean - k std) - lambda * P(harm) - [no end-of-turn] penalty

plus a per-token KL penalty toward the reference at every token.

One iteration of ``train_ppo``:
    1. rollout: ``ppo_batch_size / ppo_group_size`` prompts, ``ppo_group_size`` replies each,
       sampled at ``ppo_temperature`` in one batch (the rollout engine, ``learning.rollouts``, or HF ``generate``)
    2. log-probs and values under the policy (no grad)
    3. reference log-probs and reward features under the reference (one forward pass)
    4. scores; minus the leave-one-out mean of the other replies to the same prompt (RLOO's
       baseline, Ahmadian et al. 2024: the group says which of *these* replies was better, which a
       value head that starts at zero cannot yet); KL-penalised per-token rewards
    5. GAE advantages and returns; whiten advantages
    6. ``ppo_epochs`` passes of clipped policy + value losses over minibatches,
       stopping early once approx-KL to the rollout policy exceeds ``ppo_target_kl``
    7. the harm multiplier: lambda <- max(0, lambda + lr * (mean P(harm) - target)), dual ascent
       on the constraint E[P(harm)] <= target (Safe RLHF, Dai et al. 2023, sec. 3.3)
    8. metrics grouped by prefix (``losses/``, ``ppo/``, ``reward/``, ``harm/``, ``kl/``)

``b_`` names the flattened rollout batch and ``mb_`` a minibatch.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import torch
from torch import nn

from learning.config import Budgets
from learning.losses import (compute_gae, kl_penalized_rewards, leave_one_out_baseline, masked_mean, masked_whiten,
                             ppo_policy_loss, ppo_value_loss)
from learning.policy import Sampler, Samples, Scorer, ValueHead, forward_logprobs, sample, score_samples, select

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]


class Trajectory(NamedTuple):
    """One PPO rollout batch: everything the update needs, all detached."""

    samples: Samples
    logprobs: torch.Tensor  # (B, T) log pi_old of the sampled tokens (at the sampling temperature)
    ref_logprobs: torch.Tensor  # (B, T) same under the reference (adapter disabled)
    values: torch.Tensor  # (B, T) V(state before each reply token)
    rewards: torch.Tensor  # (B,) user reward (standardised lower bound)
    harm: torch.Tensor  # (B,) P(harm)
    scores: torch.Tensor  # (B,) rewards - lambda harm - no-eos penalty
    group_size: int  # consecutive rows answering one prompt


@dataclass
class PPOResult:
    steps: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    harm_lambda: float = 0.0  # the multiplier at the end (dual ascent)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# --- PPO ------------------------------------------------------------------------------------------


def rollout(model, value_head: ValueHead, tokenizer, prompts: Sequence[str], scorer: Scorer, budgets: Budgets, seed: int,
            *, harm_lambda: float | None = None, group_size: int = 1, sampler: Sampler = sample,
            n_harm_prompts: int = 0) -> Trajectory:
    """Sample ``group_size`` replies for each prompt and score them (steps 1-4a). The last
    ``n_harm_prompts`` prompts invite harm: their reward is safety alone when
    ``ppo_harm_prompts_by_safety`` is on."""
    harm_lambda = budgets.ppo_harm_lambda if harm_lambda is None else harm_lambda
    # 1. rollout
    samples = sampler(model, tokenizer, prompts, budgets, seed, per_prompt=group_size)
    # 2. policy log-probs and values
    with torch.no_grad():
        logprobs, values, _ = forward_logprobs(model, samples, budgets.ppo_temperature, value_head)
    # 3. reference log-probs and reward features
    ref_logprobs, rewards, harm = score_samples(model, samples, scorer, budgets)
    if n_harm_prompts and budgets.ppo_harm_prompts_by_safety:
        harm_rows = torch.arange(rewards.shape[0]) >= (len(prompts) - n_harm_prompts) * group_size  # (B,)
        rewards = torch.where(harm_rows, -budgets.ppo_safety_weight * harm, rewards)
    # 4a. the score at the end of each reply
    scores = rewards - harm_lambda * harm - budgets.ppo_no_eos_penalty * (~samples.finished).float()
    return Trajectory(samples, logprobs.cpu(), ref_logprobs, values.cpu(), rewards, harm, scores, group_size)


def ppo_update(model, value_head: ValueHead, optimizer: torch.optim.Optimizer, traj: Trajectory, budgets: Budgets,
               rng: torch.Generator) -> dict[str, float]:
    b_mask = traj.samples.response_mask  # (B, T)
    # 4b. the group baseline, then KL-penalised per-token rewards
    b_scores = leave_one_out_baseline(traj.scores, traj.group_size) if traj.group_size > 1 else traj.scores  # (B,)
    b_rewards, b_kl = kl_penalized_rewards(b_scores, traj.logprobs, traj.ref_logprobs, b_mask, budgets.ppo_kl_coef)
    # 5. GAE, returns, whitened advantages
    b_advantages, b_returns = compute_gae(b_rewards, traj.values, b_mask, budgets.ppo_gamma, budgets.ppo_lam)
    b_advantages = masked_whiten(b_advantages, b_mask)
    b_logprobs, b_values = traj.logprobs, traj.values * b_mask

    # 6. epochs of clipped policy and value losses
    B = b_mask.shape[0]
    stats: dict[str, list[float]] = {"pg": [], "vf": [], "clipfrac": [], "vf_clipfrac": [], "approx_kl": []}
    epochs_run = 0
    for _epoch in range(budgets.ppo_epochs):
        epochs_run += 1
        b_inds = torch.randperm(B, generator=rng)
        epoch_kl = []
        for start in range(0, B, budgets.ppo_minibatch_size):
            mb_inds = b_inds[start:start + budgets.ppo_minibatch_size]
            mb_samples = select(traj.samples, mb_inds)
            mb_mask = b_mask[mb_inds]
            new_logprobs, new_values, _ = forward_logprobs(model, mb_samples, budgets.ppo_temperature, value_head)
            pg_loss, pg_stats = ppo_policy_loss(new_logprobs.cpu(), b_logprobs[mb_inds], b_advantages[mb_inds], mb_mask, budgets.ppo_clip)
            vf_loss, vf_stats = ppo_value_loss(new_values.cpu(), b_values[mb_inds], b_returns[mb_inds], mb_mask, budgets.ppo_value_clip)
            loss = pg_loss + budgets.ppo_vf_coef * vf_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], budgets.ppo_max_grad_norm)
            optimizer.step()
            stats["pg"].append(pg_stats["loss"])
            stats["vf"].append(vf_stats["loss"])
            stats["clipfrac"].append(pg_stats["clipfrac"])
            stats["vf_clipfrac"].append(vf_stats["clipfrac"])
            epoch_kl.append(pg_stats["approx_kl"])
        stats["approx_kl"].extend(epoch_kl)
        if sum(epoch_kl) / len(epoch_kl) > budgets.ppo_target_kl:
            logger.debug("approx KL %.3f > %.3f: stopping this iteration's epochs early", sum(epoch_kl) / len(epoch_kl), budgets.ppo_target_kl)
            break

    # 8. metrics
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return {
        "losses/policy": mean(stats["pg"]),
        "losses/value": mean(stats["vf"]),
        "ppo/clipfrac": mean(stats["clipfrac"]),
        "ppo/value_clipfrac": mean(stats["vf_clipfrac"]),
        "ppo/approx_kl": mean(stats["approx_kl"]),
        "ppo/epochs": float(epochs_run),
        "reward/mean": float(traj.rewards.mean()),
        "reward/score_mean": float(traj.scores.mean()),
        "harm/mean": float(traj.harm.mean()),
        "kl/per_token": float(masked_mean(b_kl, b_mask)),
        "kl/per_reply": float((b_kl * b_mask).sum(1).mean()),
        "replies/length": float(b_mask.sum(1).mean()),
        "replies/unfinished": float((~traj.samples.finished).float().mean()),
    }


def train_ppo(model: "PeftModel", tokenizer, scorer: Scorer, prompts: Sequence[str], budgets: Budgets,
              progress: Progress | None = None, *, harm_target: float | None = None,
              harm_prompts: Sequence[str] = (), sampler: Sampler = sample, deadline: float | None = None) -> PPOResult:
    """Run up to ``budgets.ppo_steps`` iterations on the adapter currently loaded in ``model``.

    ``deadline`` (a ``time.monotonic()`` value): after the first iteration, stop before one that would
    end past it (judged by the slowest iteration so far), so a job keeps its time budget on a
    machine of any speed and a faster one spends the same budget on more iterations.

    ``harm_target``: the constraint E[P(harm)] <= target for the multiplier's dual ascent (None keeps
    lambda fixed at ``ppo_harm_lambda``). ``harm_prompts``: harm-inviting prompts, mixed into each
    batch at ``ppo_harm_prompt_share`` so the constraint is measured where harm happens.
    """
    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    started = time.monotonic()
    value_head = ValueHead(model.config.hidden_size)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    # The value head starts from zero and has to catch up with the returns: give it 10x the rate.
    optimizer = torch.optim.AdamW([{"params": lora_params, "lr": budgets.ppo_lr},
                                   {"params": value_head.parameters(), "lr": budgets.ppo_lr * 10}], weight_decay=0.0)
    rng = torch.Generator().manual_seed(budgets.seed)
    picker = random.Random(budgets.seed)
    group = budgets.ppo_group_size
    n_prompts = budgets.ppo_batch_size // group
    n_harm = min(n_prompts - 1, round(n_prompts * budgets.ppo_harm_prompt_share)) if harm_prompts else 0
    harm_lambda = budgets.ppo_harm_lambda
    result = PPOResult(steps=0, wall_s=0.0, harm_lambda=harm_lambda)
    slowest = 0.0
    for step in range(1, budgets.ppo_steps + 1):
        t0 = time.monotonic()
        if deadline is not None and step > 1 and t0 + slowest > deadline:
            logger.info("ppo: stopping after %d of %d steps (time budget; %.0fs per step here)", step - 1,
                        budgets.ppo_steps, slowest)
            break
        ordinary = _pick(picker, prompts, n_prompts - n_harm)
        n_ordinary = len(ordinary)
        batch = ordinary + _pick(picker, harm_prompts, n_harm)
        traj = rollout(model, value_head, tokenizer, batch, scorer, budgets, seed=budgets.seed * 100003 + step,
                       harm_lambda=harm_lambda, group_size=group, sampler=sampler, n_harm_prompts=len(batch) - n_ordinary)
        t_rollout = time.monotonic() - t0
        metrics = ppo_update(model, value_head, optimizer, traj, budgets, rng)
        # 7. the harm multiplier (dual ascent on E[P(harm)] <= target)
        if harm_target is not None:
            harm_lambda = max(0.0, harm_lambda + budgets.ppo_harm_lambda_lr * (float(traj.harm.mean()) - harm_target))
        metrics.update({"time/rollout_s": t_rollout, "time/step_s": time.monotonic() - t0, "step": float(step),
                        "harm/lambda": harm_lambda})
        result.history.append(metrics)
        result.steps, result.harm_lambda = step, harm_lambda
        slowest = max(slowest, metrics["time/step_s"])
        logger.info("ppo step %d/%d: reward %.3f harm %.3f (lambda %.2f) kl %.4f approx_kl %.4f (%.1fs)", step,
                    budgets.ppo_steps, metrics["reward/mean"], metrics["harm/mean"], harm_lambda, metrics["kl/per_token"],
                    metrics["ppo/approx_kl"], metrics["time/step_s"])
        if progress is not None:
            progress(step, budgets.ppo_steps, metrics)
    result.wall_s = time.monotonic() - started
    return result


def _pick(picker: random.Random, pool: Sequence[str], n: int) -> list[str]:
    """``n`` prompts of ``pool``: without repeats when it has enough, else with."""
    pool = list(pool)
    if n <= 0 or not pool:
        return []
    return picker.sample(pool, n) if len(pool) >= n else [picker.choice(pool) for _ in range(n)]
