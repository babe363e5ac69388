"""``assistant bench rollouts``: the training loop's sampling, HF ``generate`` vs the batched engine.

Both samplers draw the same batch (``--prompts`` prompts x ``--per-prompt`` replies of up to
``--max-new-tokens``, the PPO temperature) from the same policy: the base model with a rank-r LoRA
on every linear layer whose B factors are random, so the adapter changes every logit as a trained
one does. The scenarios alternate ``--repeats`` times and each keeps its best; the ratio is
measured in one run, next to the machine's one-stream generation speed (machines of one kind
differ by up to 3x from day to day).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from learning.config import Budgets

PROMPTS = (
    "How do I boil an egg?", "Give me a tip for sleeping well.", "What is a good breakfast?", "Explain photosynthesis.",
    "How do I write a cover letter?", "What should I pack for a beach day?", "Why is the sky blue?",
    "How can I learn to cook?", "What is a black hole?", "Suggest a name for a cat.", "How do I fix a flat tyre?",
    "What is the best way to learn a language?", "How do plants drink water?", "Tell me about the Moon.",
    "How do I start running?", "What is inflation?",
)


def run(settings, *, prompts: int = 16, per_prompt: int = 1, max_new_tokens: int = 48, rank: int = 16,
        repeats: int = 2) -> dict:
    from learning.data import chat_renderer
    from learning.recipe import one_stream_speed
    from learning.policy import make_policy, sample
    from learning.rollouts import rollout_sampler
    from service.model_loading import load_base_model, load_tokenizer

    budgets = Budgets.from_env(ppo_max_new_tokens=max_new_tokens, lora_r=rank, lora_alpha=2 * rank,
                               rollout_max_rows=prompts * per_prompt)  # the rest (temperature, dtype) as the worker's
    tokenizer = load_tokenizer(settings)
    base = load_base_model(settings, dtype=torch.float32)
    engine_sampler, report = rollout_sampler(settings, dataclasses.replace(budgets, rollout_engine="batched"), base, tokenizer)
    policy = make_policy(base, budgets)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    render = chat_renderer(tokenizer)
    batch = [render([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(prompts)]
    tok_s = one_stream_speed(policy, tokenizer, batch[0])

    def timed(sampler) -> tuple[float, int]:
        t0 = time.monotonic()
        samples = sampler(policy, tokenizer, batch, budgets, 7, per_prompt=per_prompt)
        return time.monotonic() - t0, int(samples.response_mask.sum())

    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, sampler in (("hf_generate", sample), ("batched_engine", engine_sampler)):
            wall, tokens = timed(sampler)
            if name not in best or tokens / wall > best[name][1] / best[name][0]:
                best[name] = (wall, tokens)
    rates = {name: tokens / wall for name, (wall, tokens) in best.items()}
    return {
        "rows": prompts * per_prompt, "max_new_tokens": max_new_tokens, "lora_rank": rank,
        "one_stream_tok_s": round(tok_s, 2), "engine_dtype": report.get("dtype"), "engine": report.get("engine"),
        **{f"{name}_tok_s": round(rate, 1) for name, rate in rates.items()},
        **{f"{name}_s": round(best[name][0], 2) for name in best},
        "speedup": round(rates["batched_engine"] / rates["hf_generate"], 2) if report.get("engine") == "batched" else None,
    }


def main(args: argparse.Namespace, settings) -> dict:
    result = run(settings, prompts=args.prompts, per_prompt=args.per_prompt, max_new_tokens=args.max_new_tokens,
                 rank=args.rank, repeats=args.repeats)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result
