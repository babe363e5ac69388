"""The policy being trained and everything that reads it: shared by PPO, the warm start and the gate.

Policy    = the base model + one LoRA adapter (``peft``, all linear layers).
Reference = the same model with ``model.disable_adapter()`` (TRL's trick: no second copy).
Value     = a linear head on the policy's last hidden state (PPO's critic).

``sample`` draws replies (several per prompt when asked), ``forward_logprobs`` reads their
log-probabilities, values and hidden states back, and ``score_samples`` runs the reference once to
get both the reference log-probs and the reward model's features.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from learning.config import Budgets
from learning.reward import position_ids_for, reference_mode, reply_features

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

logger = logging.getLogger(__name__)

# features (B, F), rendered prompts and reply texts -> (user reward (B,), harm probability (B,))
Scorer = Callable[[torch.Tensor, list[str], list[str]], tuple[torch.Tensor, torch.Tensor]]
# ``sample``'s signature: (model, tokenizer, prompts, budgets, seed, *, reference, per_prompt, temperature) -> Samples;
# ``learning.rollouts.EngineSampler`` is the fast one
Sampler = Callable[..., "Samples"]

__all__ = ["Sampler", "Samples", "Scorer", "ValueHead", "forward_logprobs", "load_adapter_dir", "load_lora_state", "lora_state",
           "make_policy", "reference_mode", "sample", "score_samples", "select"]


class Samples(NamedTuple):
    """Sampled replies for a batch of prompts."""

    query_responses: torch.Tensor  # (B, P + T) left-padded prompt ids, then sampled reply ids
    attention_mask: torch.Tensor  # (B, P + T) 1 on real prompt tokens and reply tokens up to end-of-turn
    response_mask: torch.Tensor  # (B, T) float, 1.0 on reply tokens up to and including the first end-of-turn
    finished: torch.Tensor  # (B,) bool, the reply emitted end-of-turn within the budget
    prompt_len: int  # P
    texts: list[str]  # B decoded replies
    prompts: list[str]  # B rendered prompts (row i answers prompts[i])


def select(samples: Samples, inds: torch.Tensor) -> Samples:
    """The rows ``inds`` of a batch."""
    rows = inds.tolist()
    return Samples(samples.query_responses[inds], samples.attention_mask[inds], samples.response_mask[inds],
                   samples.finished[inds], samples.prompt_len, [samples.texts[i] for i in rows],
                   [samples.prompts[i] for i in rows])


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
        config = cast("LoraConfig", model.peft_config["default"])  # make_policy's adapter is a LoRA one
        raise ValueError(f"adapter at {path} has another LoRA layout than ASSISTANT_LORA_R={config.r}")
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
def sample(model, tokenizer, prompts: Sequence[str], budgets: Budgets, seed: int, *, reference: bool = False,
           per_prompt: int = 1, temperature: float | None = None) -> Samples:
    """Sample ``per_prompt`` replies for each prompt (from the reference if ``reference``); rows are
    grouped by prompt (``per_prompt`` consecutive rows answer one prompt). One batched ``generate``."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(per_prompt)]
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    enc = tokenizer(rows, return_tensors="pt", padding=True, truncation=True,
                    max_length=budgets.max_prompt_tokens, add_special_tokens=False)
    P = enc.input_ids.shape[1]
    eos = tokenizer.eos_token_id
    gen_config = GenerationConfig(do_sample=True, temperature=temperature or budgets.ppo_temperature, top_k=0, top_p=1.0,
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
    return Samples(query_responses, attention_mask, response_mask, finished, P, texts, rows)


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
    rewards, harm = scorer(feats, samples.prompts, samples.texts)
    return ref_logprobs.cpu(), rewards.float(), harm.float()


def reply_logprob_sums(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], budgets: Budgets, *,
                       batch_size: int | None = None) -> torch.Tensor:
    """(B,) summed log-probs (temperature 1) of each stored reply given its prompt, under the model as
    it is called (wrap in ``reference_mode`` for the base; in ``torch.no_grad`` unless training), in
    forward passes of at most ``batch_size`` rows (None: one pass)."""
    return reply_logprob_stats(model, tokenizer, prompts, replies, budgets, batch_size=batch_size)[0]


def reply_logprob_stats(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], budgets: Budgets, *,
                        batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) summed log-probs, (B,) token counts) of each stored reply as ``reply_logprob_sums`` reads it."""
    step = batch_size or max(1, len(prompts))
    sums, counts = [], []
    for i in range(0, len(prompts), step):
        batch = encode_replies(tokenizer, prompts[i:i + step], replies[i:i + step], budgets)
        logprobs, _, _ = forward_logprobs(model, batch, 1.0)  # (b, T)
        sums.append((logprobs.float().cpu() * batch.response_mask).sum(1))
        counts.append(batch.response_mask.sum(1))
    if not sums:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(sums), torch.cat(counts)


def encode_replies(tokenizer, prompts: Sequence[str], replies: Sequence[str], budgets: Budgets) -> Samples:
    """Given (prompt, reply) texts as a ``Samples`` batch (left-padded prompts, each reply ended with
    end-of-turn unless it had to be cut at ``ppo_max_new_tokens``), so stored replies can be read with
    ``forward_logprobs`` like sampled ones."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    p_ids = [tokenizer(p, add_special_tokens=False).input_ids[-budgets.max_prompt_tokens:] for p in prompts]
    # a reply longer than the budget is cut without an end token: a cut is not where the reply ended
    r_ids = [ids + [eos] if len(ids) < budgets.ppo_max_new_tokens else ids[: budgets.ppo_max_new_tokens]
             for ids in (tokenizer(r, add_special_tokens=False).input_ids for r in replies)]
    finished = torch.tensor([bool(ids) and ids[-1] == eos for ids in r_ids])
    P, T = max(len(x) for x in p_ids), max(len(x) for x in r_ids)
    B = len(prompts)
    qr = torch.full((B, P + T), pad, dtype=torch.long)  # (B, P + T)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    mask = torch.zeros((B, T))  # (B, T)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        qr[i, P - len(p):P], attn[i, P - len(p):P] = torch.tensor(p), 1
        qr[i, P:P + len(r)], attn[i, P:P + len(r)], mask[i, :len(r)] = torch.tensor(r), 1, 1.0
    return Samples(qr, attn, mask, finished, P, list(replies), list(prompts))
