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
from typing import TYPE_CHECKING, Sequence

import torch

from learning.config import Budgets
from learning.policy import Samples, lora_state

if TYPE_CHECKING:
    from service.engine.adapter_cache import LoraWeights

logger = logging.getLogger(__name__)

__all__ = ["EngineSampler"]


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
        from service.engine.base import GenerationRequest, SamplingParams

        rows = [p for p in prompts for _ in range(per_prompt)]
        prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids[-budgets.max_prompt_tokens:] for p in rows]
        temp = temperature or budgets.ppo_temperature
        requests = [
            GenerationRequest(request_id=f"rollout-{seed}-{i}", prompt_ids=ids,
                              params=SamplingParams(max_new_tokens=budgets.ppo_max_new_tokens, temperature=temp, top_p=1.0))
            for i, ids in enumerate(prompt_ids)
        ]
        for req in requests:
            self.engine.submit(req)
        # unseeded rows draw from torch's global generator in one batched call (a generator per row
        # costs ~1.5 ms per row per step here); this thread alone drives the engine, so one seed
        # makes the call reproducible
        torch.manual_seed(seed)
        idle = 0
        merged = contextlib.nullcontext() if reference else self.engine.runner.merged(self._policy_weights(model))
        with torch.inference_mode(), merged:
            while not all(req.stream.ended() for req in requests):
                if self.engine.step():
                    idle = 0
                    continue
                idle += 1
                if idle > 100:  # nothing left to run, yet replies are missing: fail loudly, never hang
                    raise RuntimeError("the rollout engine stopped before every reply ended")
        replies: list[list[int]] = []
        finished: list[bool] = []
        eos = tokenizer.eos_token_id
        for req in requests:
            events = list(req.stream.iter_sync(timeout=0))
            end = events[-1]
            if end.finish_reason == "error":
                raise RuntimeError(f"rollout failed: {end.error}")
            ids = [t for ev in events[:-1] for t in ev.token_ids]
            done = end.finish_reason == "stop"
            replies.append(ids + [eos] if done else ids)
            finished.append(done)
        return _as_samples(tokenizer, prompt_ids, replies, finished, rows)


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
