"""Rollouts through the serving engine: the trainer's replies drawn with continuous batching.

``learning.policy.sample`` calls HF ``generate`` on the PEFT model: every row of the padded batch
runs until the longest reply ends, through PEFT's per-module LoRA wrappers, in float32. The
serving engine (``service.engine.BatchedEngine``) retires rows as they finish, fuses the LoRA
products, and runs in the dtype measured fastest on this machine (``ASSISTANT_DTYPE=auto``): the
same replies cost a fraction of the time, so a job's fixed budget buys more samples (the
warm start's best-of-n, PPO's groups, the gate's prompts).

``EngineSampler`` has ``sample``'s signature, so the warm start, PPO and the gate take either.
For each call it folds the policy's current LoRA weights into a copy of the engine's weights
(every row of a call shares the adapter, so no per-row LoRA products are needed; the engine never
sees PEFT's modules) and drives ``engine.step()`` in the calling thread until every reply has ended. PPO still reads the log-probabilities of the drawn
tokens from the training model in float32 (``forward_logprobs``): a 16-bit engine changes which
replies are drawn, never the objective (as TRL and OpenRLHF do with vLLM).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Sequence

import torch

from learning.config import Budgets
from learning.policy import Samples, lora_state

if TYPE_CHECKING:
    from service.engine.adapter_cache import LoraWeights
    from service.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["EngineSampler", "rollout_sampler"]


class EngineSampler:
    """Draws ``Samples`` with a ``BatchedEngine`` built on the (unwrapped) base model."""

    def __init__(self, base_model, tokenizer, *, dtype: torch.dtype, max_rows: int = 16) -> None:
        from service.engine.batched import BatchedEngine

        self.tokenizer = tokenizer
        # no prefix cache (the weights differ from call to call) and no adapter cache: every row of a
        # call shares one adapter, folded into the weights for the call (``LlamaRunner.merged``)
        self.engine = BatchedEngine(base_model, tokenizer, max_batch_size=max_rows, max_queue=1 << 20,
                                    adapter_cache_size=max_rows, dtype=dtype, prefix_cache_bytes=0)
        self.dtype = dtype

    def _policy_weights(self, model) -> "LoraWeights":
        from service.engine.adapter_cache import lora_from_tensors

        cfg = model.peft_config["default"]
        scaling = cfg.lora_alpha / cfg.r**0.5 if getattr(cfg, "use_rslora", False) else cfg.lora_alpha / cfg.r
        return lora_from_tensors("policy", lora_state(model), rank=cfg.r, scaling=scaling,
                                 num_layers=self.engine.runner.n_layers, dtype=torch.float32)

    @torch.no_grad()
    def __call__(self, model, tokenizer, prompts: Sequence[str], budgets: Budgets, seed: int, *, reference: bool = False,
                 per_prompt: int = 1, temperature: float | None = None) -> Samples:
        """Like ``learning.policy.sample``: ``per_prompt`` consecutive rows answer each prompt."""
        rows = [p for p in prompts for _ in range(per_prompt)]
        prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids[-budgets.max_prompt_tokens:] for p in rows]
        out = self.generate(prompt_ids, None if reference else self._policy_weights(model),
                            max_new_tokens=budgets.ppo_max_new_tokens,
                            temperature=temperature or budgets.ppo_temperature, seed=seed)
        return _as_samples(tokenizer, prompt_ids, [ids for ids, _ in out], [done for _, done in out], rows)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], weights: "LoraWeights | None", *, max_new_tokens: int,
                 temperature: float, seed: int, row_seeds: Sequence[int] | None = None) -> list[tuple[list[int], bool]]:
        """(reply ids, ended with end-of-turn) per prompt, the end token included when it ended;
        ``weights``: the adapter every row uses (None: the base model); temperature 0 is greedy.
        ``row_seeds``: one seed per row, so a row samples the same tokens whatever else shares the
        call (common random numbers for comparing policies); else every row draws from ``seed``."""
        from service.engine.base import GenerationRequest, SamplingParams

        if row_seeds is not None and len(row_seeds) != len(prompt_ids):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompt_ids)} prompts")
        requests = [
            GenerationRequest(request_id=f"rollout-{seed}-{i}", prompt_ids=ids,
                              params=SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                                                    seed=None if row_seeds is None else row_seeds[i]))
            for i, ids in enumerate(prompt_ids)
        ]
        for req in requests:
            self.engine.submit(req)
        # unseeded rows draw from torch's global generator in one batched call (a generator per row
        # costs ~0.4 ms per row per step here); this thread alone drives the engine, so one seed
        # makes the call reproducible
        torch.manual_seed(seed)
        idle = 0
        merged = contextlib.nullcontext() if weights is None else self.engine.runner.merged(weights)
        with torch.inference_mode(), merged:
            while not all(req.stream.ended() for req in requests):
                if self.engine.step():
                    idle = 0
                    continue
                idle += 1
                if idle > 100:  # nothing left to run, yet replies are missing: fail loudly, never hang
                    raise RuntimeError("the rollout engine stopped before every reply ended")
        out: list[tuple[list[int], bool]] = []
        eos = self.tokenizer.eos_token_id
        for req in requests:
            events = list(req.stream.iter_sync(timeout=0))
            end = events[-1]
            if end.finish_reason == "error":
                raise RuntimeError(f"rollout failed: {end.error}")
            ids = [t for ev in events[:-1] for t in ev.token_ids]
            done = end.finish_reason == "stop"
            out.append((ids + [eos] if done else ids, done))
        return out


def rollout_sampler(settings: "Settings", budgets: Budgets, base, tokenizer) -> tuple[Any, dict]:
    """The sampler ``ASSISTANT_ROLLOUT_ENGINE`` names: the batched engine (in the dtype
    ``ASSISTANT_DTYPE`` names, ``auto`` = measured here) or HF ``generate``."""
    from learning.policy import sample

    if budgets.rollout_engine == "hf":
        return sample, {"engine": "hf", "dtype": "float32"}
    from service.engine.runner import UnsupportedModel

    if settings.dtype == "auto":
        from service.engine.dtype_probe import choose_dtype

        dtype, choice = choose_dtype(base, tokenizer)
        why = choice.reason
    else:
        dtype, why = getattr(torch, settings.dtype), "set by ASSISTANT_DTYPE"
    try:
        sampler = EngineSampler(base, tokenizer, dtype=dtype, max_rows=budgets.rollout_max_rows)
    except UnsupportedModel as exc:
        logger.warning("rollouts fall back to HF generate: %s", exc)
        return sample, {"engine": "hf", "dtype": "float32", "reason": str(exc)}
    logger.info("rollouts through the batched engine in %s (%s)", str(dtype).removeprefix("torch."), why)
    return sampler, {"engine": "batched", "dtype": str(dtype).removeprefix("torch."), "reason": why}


def _as_samples(tokenizer, prompt_ids: list[list[int]], replies: list[list[int]], finished: list[bool],
                rows: list[str]) -> Samples:
    """The layout ``sample`` returns: left-padded prompts, then replies padded after their end."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    B = len(rows)
    P = max(len(p) for p in prompt_ids)
    T = max(1, max(len(r) for r in replies))
    qr = torch.full((B, P + T), pad, dtype=torch.long)  # (B, P + T)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)  # (B, P)
    response_mask = torch.zeros((B, T))  # (B, T)
    for i, (p, r) in enumerate(zip(prompt_ids, replies)):
        qr[i, P - len(p):P], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
        if r:
            qr[i, P:P + len(r)], response_mask[i, :len(r)] = torch.tensor(r), 1.0
    texts = tokenizer.batch_decode([r for r in replies], skip_special_tokens=True)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    return Samples(qr, attention_mask, response_mask, torch.tensor(finished, dtype=torch.bool), P, texts, list(rows))
