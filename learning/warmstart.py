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
       end-of-turn included) on the LoRA weights only, plus, on the user's own ranked pairs (at most
       ``warm_start_dpo_pairs``), DPO's loss against the base (Rafailov et al. 2023; RS-DPO,
       Khaki et al. 2024): -log sigmoid(beta * (log-ratio of the chosen - log-ratio of the rejected)),
       so the adapter learns the contrast the user drew, not only what they liked; optionally
       (``warm_start_rso_pairs``) also each prompt's best sample over its worst from step 3 (RSO).

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
from learning.policy import (Sampler, Scorer, encode_replies, forward_logprobs, reference_mode, reply_logprob_sums, sample,
                             score_samples)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartResult:
    sampled: int  # replies sampled
    distilled: int  # best-of-n replies kept
    own: int  # the user's own preferred replies used
    loss_first: float  # mean NLL of the first and the last pass
    loss_last: float
    wall_s: float
    dpo_pairs: int = 0  # the user's ranked pairs in the DPO term
    dpo_loss_first: float = 0.0  # mean DPO loss of the first and the last pass (log 2 = no preference yet)
    dpo_loss_last: float = 0.0
    rso_pairs: int = 0  # of the DPO pairs, those sampled from the adapter and ordered by the reward (RSO)

    def as_metrics(self) -> dict[str, float]:
        return {f"warm_start/{k}": float(v) for k, v in self.__dict__.items()}


def sft_loss(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], budgets: Budgets) -> torch.Tensor:
    """Mean next-token NLL of ``replies`` (each ended with end-of-turn) given ``prompts``."""
    batch = encode_replies(tokenizer, prompts, replies, budgets)
    logprobs, _, _ = forward_logprobs(model, batch, 1.0)  # (B, T)
    return -masked_mean(logprobs.cpu(), batch.response_mask)


def pair_logprob_sums(model, tokenizer, pairs: Sequence[tuple[str, str, str, str]], budgets: Budgets,
               batch_size: int | None = None) -> torch.Tensor:
    """(k, 2) summed log-probs of each pair's chosen and rejected reply."""
    prompts = [pc for pc, _, _, _ in pairs] + [pr for _, _, pr, _ in pairs]
    replies = [c for _, c, _, _ in pairs] + [r for _, _, _, r in pairs]
    return reply_logprob_sums(model, tokenizer, prompts, replies, budgets, batch_size=batch_size).view(2, -1).T


def dpo_loss(policy_sums: torch.Tensor, reference_sums: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss for (k, 2) [chosen, rejected] summed log-probs of the policy and the reference."""
    ratios = policy_sums - reference_sums  # (k, 2)
    return -torch.nn.functional.logsigmoid(beta * (ratios[:, 0] - ratios[:, 1])).mean()


def sft_dpo_step(model, tokenizer, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 chunk: Sequence[tuple[str, str]], pairs: Sequence[tuple[str, str, str, str]], ref_sums: torch.Tensor | None,
                 beta: float, budgets: Budgets) -> tuple[float | None, float | None]:
    """One optimiser step on SFT over ``chunk`` (prompt, reply) plus DPO over ``pairs`` against their
    reference sums (either may be empty); returns the two losses (None where empty). Shared by the
    warm start and the safety stage (``learning.safety``)."""
    loss = torch.zeros(())
    sft = dpo = None
    if chunk:
        term = sft_loss(model, tokenizer, [p for p, _ in chunk], [r for _, r in chunk], budgets)
        loss, sft = loss + term, float(term.detach())
    if pairs:
        if ref_sums is None:
            raise ValueError("DPO pairs need their reference sums (ref_sums)")
        term = dpo_loss(pair_logprob_sums(model, tokenizer, pairs, budgets), ref_sums, beta)
        loss, dpo = loss + term, float(term.detach())
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(params, budgets.ppo_max_grad_norm)
    optimizer.step()
    return sft, dpo


def warm_start(model, tokenizer, scorer: Scorer, prompts: Sequence[str], own: Sequence[tuple[str, str]], budgets: Budgets,
               *, harm_lambda: float | None = None, seed: int = 0, sampler: Sampler = sample,
               pairs: Sequence[tuple[str, str, str, str]] = ()) -> WarmStartResult:
    """Fine-tune the adapter loaded in ``model`` on best-of-n replies and the user's own preferred ones,
    with DPO on the user's own ranked ``pairs`` (chosen prompt, chosen, rejected prompt, rejected)."""
    started = time.monotonic()
    picker = random.Random(seed)
    harm_lambda = budgets.ppo_harm_lambda if harm_lambda is None else harm_lambda
    n = budgets.warm_start_samples
    chosen: list[tuple[str, str]] = []
    rso: list[tuple[str, str, str, str]] = []
    sampled = 0
    pool = list(dict.fromkeys(prompts))
    if budgets.warm_start_prompts and pool and n > 1:
        picks = picker.sample(pool, min(len(pool), budgets.warm_start_prompts))
        # 1-2. sample and score, as PPO would
        samples = sampler(model, tokenizer, picks, budgets, seed, per_prompt=n)
        _, rewards, harm = score_samples(model, samples, scorer, budgets)
        scores = (rewards - harm_lambda * harm - budgets.ppo_no_eos_penalty * (~samples.finished).float()).view(-1, n)  # (G, n)
        sampled = scores.numel()
        # 3. each prompt's best, when it stands out from its siblings (and, for RSO, its worst)
        best, worst = scores.argmax(1), scores.argmin(1)  # (G,)
        for g, (i, j) in enumerate(zip(best.tolist(), worst.tolist())):
            if scores[g, i] > scores[g].mean() and samples.texts[g * n + i].strip():
                chosen.append((picks[g], samples.texts[g * n + i]))
                if scores[g, i] > scores[g, j] and samples.texts[g * n + i] != samples.texts[g * n + j]:
                    rso.append((picks[g], samples.texts[g * n + i], picks[g], samples.texts[g * n + j]))
    n_distilled = len(chosen)
    # 4. the user's own preferred replies
    own = list(own)[-budgets.warm_start_own_labels:] if budgets.warm_start_own_labels else []
    data = chosen + [(p, r) for p, r in own if r.strip()]
    pairs = list(pairs)[-budgets.warm_start_dpo_pairs:] if budgets.warm_start_dpo_pairs else []
    rso = rso[:budgets.warm_start_rso_pairs]
    pairs += rso
    if not data and not pairs:
        return WarmStartResult(sampled, 0, 0, 0.0, 0.0, time.monotonic() - started)
    mb = budgets.ppo_minibatch_size
    ref_sums = torch.zeros(0, 2)  # (k, 2) the pairs' reference sums; none without pairs
    if pairs:  # the DPO reference: the base (adapter off), as PPO's KL reference
        with torch.no_grad(), reference_mode(model):
            ref_sums = pair_logprob_sums(model, tokenizer, pairs, budgets, batch_size=2 * mb)
    # 5. supervised fine-tuning (and DPO) on the LoRA weights
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=budgets.warm_start_lr, weight_decay=0.0)
    losses: list[list[float]] = []
    dpo_losses: list[list[float]] = []
    order = list(range(len(pairs)))
    for _epoch in range(budgets.warm_start_epochs):
        picker.shuffle(data)
        picker.shuffle(order)
        epoch, dpo_epoch = [], []
        for step in range(max(-(-len(data) // mb), -(-len(order) // mb))):
            rows = order[step * mb:(step + 1) * mb]
            sft, dpo = sft_dpo_step(model, tokenizer, optimizer, params, data[step * mb:(step + 1) * mb],
                                    [pairs[i] for i in rows], ref_sums[rows] if rows else None, budgets.warm_start_dpo_beta,
                                    budgets)
            epoch += [sft] if sft is not None else []
            dpo_epoch += [dpo] if dpo is not None else []
        losses.append(epoch)
        dpo_losses.append(dpo_epoch)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    result = WarmStartResult(sampled, n_distilled, len(data) - n_distilled, mean(losses[0]), mean(losses[-1]),
                             time.monotonic() - started, len(pairs), mean(dpo_losses[0]), mean(dpo_losses[-1]), len(rso))
    logger.info("warm start: %d best-of-%d and %d own replies, NLL %.3f -> %.3f; %d pairs (%d sampled), DPO %.3f -> %.3f (%.1fs)",
                result.distilled, n, result.own, result.loss_first, result.loss_last, result.dpo_pairs, result.rso_pairs,
                result.dpo_loss_first, result.dpo_loss_last, result.wall_s)
    return result
