"""The warm start: best-of-n distillation of the user's reward, before PPO.

PPO from an adapter that is still the base model needs many rollouts before its updates point
anywhere (TRL's own PPO smoke test uses 10^4 episodes; a user job here affords a few hundred).
The labels and the reward model already say which replies the user prefers, so the adapter starts
closer to them (RAFT, Dong et al. 2023; best-of-n distillation as in BOND, Sessa et al. 2024):

    1. sample ``warm_start_samples`` replies to each of ``warm_start_prompts`` prompts from the
       adapter PPO will start from (one batch, through the rollout engine when there is one);
    2. score them as PPO does (the reward's lower bound - lambda P(harm) - no end-of-turn penalty);
    3. keep each prompt's best reply when it beats the mean of its siblings;
    4. add the replies the user themself preferred (ranked first, or thumbs up), at most
       ``warm_start_own_labels``;
    5. ``warm_start_epochs`` passes of supervised fine-tuning (next-token NLL on the reply tokens,
       end-of-turn included) on the LoRA weights only.

PPO then trains the adapter from there; the gate judges the result against the base and the
current adapter, so a warm start that hurts is never served.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from learning.config import Budgets
from learning.losses import masked_mean
from learning.policy import Sampler, Scorer, encode_replies, forward_logprobs, sample, score_samples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartResult:
    sampled: int  # replies sampled
    distilled: int  # best-of-n replies kept
    own: int  # the user's own preferred replies used
    loss_first: float  # mean NLL of the first and the last pass
    loss_last: float
    wall_s: float

    def as_metrics(self) -> dict[str, float]:
        return {f"warm_start/{k}": float(v) for k, v in self.__dict__.items()}


def sft_loss(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], budgets: Budgets) -> torch.Tensor:
    """Mean next-token NLL of ``replies`` (each ended with end-of-turn) given ``prompts``."""
    batch = encode_replies(tokenizer, prompts, replies, budgets)
    logprobs, _, _ = forward_logprobs(model, batch, 1.0)  # (B, T)
    return -masked_mean(logprobs.cpu(), batch.response_mask)


def warm_start(model, tokenizer, scorer: Scorer, prompts: Sequence[str], own: Sequence[tuple[str, str]], budgets: Budgets,
               *, harm_lambda: float | None = None, seed: int = 0, sampler: Sampler = sample) -> WarmStartResult:
    """Fine-tune the adapter loaded in ``model`` on best-of-n replies and the user's own preferred ones."""
    started = time.monotonic()
    picker = random.Random(seed)
    harm_lambda = budgets.ppo_harm_lambda if harm_lambda is None else harm_lambda
    n = budgets.warm_start_samples
    chosen: list[tuple[str, str]] = []
    sampled = 0
    pool = list(dict.fromkeys(prompts))
    if budgets.warm_start_prompts and pool and n > 1:
        picks = picker.sample(pool, min(len(pool), budgets.warm_start_prompts))
        # 1-2. sample and score, as PPO would
        samples = sampler(model, tokenizer, picks, budgets, seed, per_prompt=n)
        _, rewards, harm = score_samples(model, samples, scorer, budgets)
        scores = (rewards - harm_lambda * harm - budgets.ppo_no_eos_penalty * (~samples.finished).float()).view(-1, n)  # (G, n)
        sampled = scores.numel()
        # 3. each prompt's best, when it stands out from its siblings
        best = scores.argmax(1)  # (G,)
        for g, i in enumerate(best.tolist()):
            if scores[g, i] > scores[g].mean() and samples.texts[g * n + i].strip():
                chosen.append((picks[g], samples.texts[g * n + i]))
    n_distilled = len(chosen)
    # 4. the user's own preferred replies
    own = list(own)[-budgets.warm_start_own_labels:] if budgets.warm_start_own_labels else []
    data = chosen + [(p, r) for p, r in own if r.strip()]
    if not data:
        return WarmStartResult(sampled, 0, 0, 0.0, 0.0, time.monotonic() - started)
    # 5. supervised fine-tuning on the LoRA weights
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=budgets.warm_start_lr, weight_decay=0.0)
    mb = budgets.ppo_minibatch_size
    losses: list[list[float]] = []
    for _epoch in range(budgets.warm_start_epochs):
        picker.shuffle(data)
        epoch = []
        for start in range(0, len(data), mb):
            chunk = data[start:start + mb]
            loss = sft_loss(model, tokenizer, [p for p, _ in chunk], [r for _, r in chunk], budgets)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, budgets.ppo_max_grad_norm)
            optimizer.step()
            epoch.append(float(loss.detach()))
        losses.append(epoch)
    result = WarmStartResult(sampled, n_distilled, len(data) - n_distilled, sum(losses[0]) / len(losses[0]),
                             sum(losses[-1]) / len(losses[-1]), time.monotonic() - started)
    logger.info("warm start: %d best-of-%d and %d own replies, NLL %.3f -> %.3f (%.1fs)", result.distilled, n, result.own,
                result.loss_first, result.loss_last, result.wall_s)
    return result
