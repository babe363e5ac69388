"""PPO on one LoRA adapter, written to be read top to bottom (after CleanRL's ppo.py).

Policy    = the base model + the adapter being trained (``peft`` LoRA on all linear layers).
Reference = the same model with ``model.disable_adapter()`` (TRL's trick: no second copy).
Value     = a linear head on the policy's last hidden state.
Reward    = at the reply's last token: user reward - lambda * P(harm) - [no end-of-turn] penalty,
            plus a per-token KL penalty toward the reference at every token.

One iteration of ``train_ppo``:
    1. rollout: sample replies for a batch of prompts at ``ppo_temperature``
    2. log-probs and values under the policy (no grad)
    3. reference log-probs and reward features under the reference (one forward pass)
    4. scores: reward - lambda harm - no-eos penalty; KL-penalised per-token rewards
    5. GAE advantages and returns; whiten advantages
    6. ``ppo_epochs`` passes of clipped policy + value losses over minibatches,
       stopping early once approx-KL to the rollout policy exceeds ``ppo_target_kl``
    7. metrics grouped by prefix (``losses/``, ``ppo/``, ``reward/``, ``harm/``, ``kl/``)

``b_`` names the flattened rollout batch and ``mb_`` a minibatch.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from learning.config import Budgets
from learning.losses import compute_gae, kl_penalized_rewards, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from learning.reward import position_ids_for, reference_mode, reply_features

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

# features (B, F) and reply texts -> (user reward (B,), harm probability (B,))
Scorer = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[int, int, dict[str, float]], None]


class Samples(NamedTuple):
    """Sampled replies for a batch of prompts."""

    query_responses: torch.Tensor  # (B, P + T) left-padded prompt ids, then sampled reply ids
    attention_mask: torch.Tensor  # (B, P + T) 1 on real prompt tokens and reply tokens up to end-of-turn
    response_mask: torch.Tensor  # (B, T) float, 1.0 on reply tokens up to and including the first end-of-turn
    finished: torch.Tensor  # (B,) bool, the reply emitted end-of-turn within the budget
    prompt_len: int  # P
    texts: list[str]  # B decoded replies


class Trajectory(NamedTuple):
    """One PPO rollout batch: everything the update needs, all detached."""

    samples: Samples
    logprobs: torch.Tensor  # (B, T) log pi_old of the sampled tokens (at the sampling temperature)
    ref_logprobs: torch.Tensor  # (B, T) same under the reference (adapter disabled)
    values: torch.Tensor  # (B, T) V(state before each reply token)
    rewards: torch.Tensor  # (B,) user reward (standardised)
    harm: torch.Tensor  # (B,) P(harm)
    scores: torch.Tensor  # (B,) rewards - lambda harm - no-eos penalty


@dataclass
class PPOResult:
    steps: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# --- the models -------------------------------------------------------------------------------


def make_policy(base_model, budgets: Budgets) -> "PeftModel":
    """Wrap the base model with a fresh LoRA adapter (B = 0, so it starts equal to the base)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=budgets.lora_r, lora_alpha=budgets.lora_alpha, lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(budgets.seed)
    return get_peft_model(base_model, config)


def lora_state(model: "PeftModel") -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state(model: "PeftModel", state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter weights do not fit this LoRA layout (e.g. {unexpected[0]}); check ASSISTANT_LORA_R")


def load_adapter_dir(model: "PeftModel", path: Path) -> None:
    """Load a stored adapter's weights (safetensors only, never pickle) into the policy."""
    from safetensors.torch import load_file

    state = load_file(str(path / "adapter_model.safetensors"))
    current = lora_state(model)
    if set(state) != set(current) or any(state[k].shape != current[k].shape for k in state):
        raise ValueError(f"adapter at {path} has another LoRA layout than ASSISTANT_LORA_R={model.peft_config['default'].r}")
    load_lora_state(model, state)


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)  # V = 0 at start: the first advantages are plain returns
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)  # (B, T, H) -> (B, T)


# --- sampling and scoring -------------------------------------------------------------------


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], budgets: Budgets, seed: int, *, reference: bool = False) -> Samples:
    """Sample one reply per prompt (from the reference if ``reference``)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True,
                    max_length=budgets.max_prompt_tokens, add_special_tokens=False)
    P = enc.input_ids.shape[1]
    eos = tokenizer.eos_token_id
    gen_config = GenerationConfig(do_sample=True, temperature=budgets.ppo_temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=budgets.ppo_max_new_tokens, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with reference_mode(model) if reference else contextlib.nullcontext():
        query_responses = model.generate(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                                         generation_config=gen_config).cpu()  # (B, P + T)
    responses = query_responses[:, P:]  # (B, T)
    T = responses.shape[1]
    is_eos = responses == eos
    finished = is_eos.any(1)  # (B,)
    first_eos = torch.where(finished, is_eos.float().argmax(1), torch.full_like(finished, T, dtype=torch.long))  # (B,)
    response_mask = (torch.arange(T).unsqueeze(0) <= first_eos.unsqueeze(1)).float()  # (B, T), the end token included
    attention_mask = torch.cat([enc.attention_mask, response_mask.long()], dim=1)  # (B, P + T)
    texts = tokenizer.batch_decode(responses * response_mask.long() + eos * (1 - response_mask.long()), skip_special_tokens=True)
    return Samples(query_responses, attention_mask, response_mask, finished, P, texts)


def forward_logprobs(model, samples: Samples, temperature: float, value_head: ValueHead | None = None):
    """Log-probs of the sampled reply tokens (B, T), values (B, T) or None, and the per-layer hidden
    states (each (B, P+T, H), embeddings first)."""
    device = next(model.parameters()).device
    qr, attn, P = samples.query_responses.to(device), samples.attention_mask.to(device), samples.prompt_len
    T = qr.shape[1] - P
    out = model(input_ids=qr, attention_mask=attn, position_ids=position_ids_for(attn), output_hidden_states=True,
                logits_to_keep=T + 1)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position P-1+t predicts reply token t
    logprobs = torch.gather(F.log_softmax(logits, dim=-1), 2, qr[:, P:].unsqueeze(-1)).squeeze(-1)  # (B, T)
    hidden = out.hidden_states[-1]  # (B, P + T, H)
    values = value_head(hidden[:, P - 1:-1].float()) if value_head is not None else None  # (B, T)
    return logprobs, values, out.hidden_states


@torch.no_grad()
def score_samples(model, samples: Samples, scorer: Scorer, budgets: Budgets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference log-probs (B, T), user reward (B,), P(harm) (B,)) from one reference forward pass."""
    with reference_mode(model):
        ref_logprobs, _, ref_hidden = forward_logprobs(model, samples, budgets.ppo_temperature)
    reply_mask = torch.cat([torch.zeros(samples.response_mask.shape[0], samples.prompt_len), samples.response_mask], 1)
    feats = reply_features(ref_hidden, reply_mask).cpu()  # (B, 2H): the reward model's features
    rewards, harm = scorer(feats, samples.texts)
    return ref_logprobs.cpu(), rewards.float(), harm.float()


# --- PPO ------------------------------------------------------------------------------------------


def rollout(model, value_head: ValueHead, tokenizer, prompts: Sequence[str], scorer: Scorer, budgets: Budgets, seed: int) -> Trajectory:
    # 1. rollout
    samples = sample(model, tokenizer, prompts, budgets, seed)
    # 2. policy log-probs and values
    with torch.no_grad():
        logprobs, values, _ = forward_logprobs(model, samples, budgets.ppo_temperature, value_head)
    # 3. reference log-probs and reward features
    ref_logprobs, rewards, harm = score_samples(model, samples, scorer, budgets)
    # 4a. the score at the end of each reply
    scores = rewards - budgets.ppo_harm_lambda * harm - budgets.ppo_no_eos_penalty * (~samples.finished).float()
    return Trajectory(samples, logprobs.cpu(), ref_logprobs, values.cpu(), rewards, harm, scores)


def ppo_update(model, value_head: ValueHead, optimizer: torch.optim.Optimizer, traj: Trajectory, budgets: Budgets,
               rng: torch.Generator) -> dict[str, float]:
    b_mask = traj.samples.response_mask  # (B, T)
    # 4b. KL-penalised per-token rewards
    b_rewards, b_kl = kl_penalized_rewards(traj.scores, traj.logprobs, traj.ref_logprobs, b_mask, budgets.ppo_kl_coef)
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
            mb_samples = _select(traj.samples, mb_inds)
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

    # 7. metrics
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


def _select(samples: Samples, inds: torch.Tensor) -> Samples:
    rows = inds.tolist()
    return Samples(samples.query_responses[inds], samples.attention_mask[inds], samples.response_mask[inds],
                   samples.finished[inds], samples.prompt_len, [samples.texts[i] for i in rows])


def train_ppo(model: "PeftModel", tokenizer, scorer: Scorer, prompts: Sequence[str], budgets: Budgets,
              progress: Progress | None = None) -> PPOResult:
    """Run ``budgets.ppo_steps`` iterations on the adapter currently loaded in ``model``."""
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
    result = PPOResult(steps=0, wall_s=0.0)
    for step in range(1, budgets.ppo_steps + 1):
        t0 = time.monotonic()
        batch = picker.sample(list(prompts), budgets.ppo_batch_size) if len(prompts) >= budgets.ppo_batch_size else \
            [picker.choice(list(prompts)) for _ in range(budgets.ppo_batch_size)]
        traj = rollout(model, value_head, tokenizer, batch, scorer, budgets, seed=budgets.seed * 100003 + step)
        t_rollout = time.monotonic() - t0
        metrics = ppo_update(model, value_head, optimizer, traj, budgets, rng)
        metrics.update({"time/rollout_s": t_rollout, "time/step_s": time.monotonic() - t0, "step": float(step)})
        result.history.append(metrics)
        result.steps = step
        logger.info("ppo step %d/%d: reward %.3f harm %.3f kl %.4f approx_kl %.4f (%.1fs)", step, budgets.ppo_steps,
                    metrics["reward/mean"], metrics["harm/mean"], metrics["kl/per_token"], metrics["ppo/approx_kl"],
                    metrics["time/step_s"])
        if progress is not None:
            progress(step, budgets.ppo_steps, metrics)
    result.wall_s = time.monotonic() - started
    return result
