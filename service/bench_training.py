"""``assistant bench serve --while-training``: chat latency while training runs beside it.

The server and the learning worker share the machine. This benchmark measures, in one
run, one user's chat (time to first token and inter-token latency, through the batched
engine in this process, with the server's thread budget) idle and while a second
process runs a training load with the worker's thread budget and CPU priority
(``ASSISTANT_WORKER_THREADS``, ``ASSISTANT_WORKER_NICE``, applied by the same
``apply_thread_budget`` the worker calls). It also measures the load's own step rate
alone and beside the chat, so the job's slowdown is reported too.

The load is shaped like a PPO update of a user's adapter: the base model with a rank-8
LoRA on every linear layer, forward and backward over a batch of 8 sequences of 128
tokens, and an AdamW step, repeated.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

from service.settings import Settings


def _training_load(settings_json: str, seconds: float, out, stop) -> None:
    """Child process: train a LoRA adapter on random tokens until ``stop`` is set (at most ``seconds``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from service.model_loading import load_base_model
    from service.threads import apply_thread_budget

    settings = Settings.model_validate_json(settings_json)
    apply_thread_budget("worker", settings.worker_threads, nice=settings.worker_nice)
    model = load_base_model(settings, dtype=torch.float32)
    model.train()
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (8, 128), generator=gen)  # (B, T)
    out.put(("ready", time.time()))
    steps, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds and not stop.is_set():
        s, wall = time.perf_counter(), time.time()
        loss = peft(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps.append((wall, time.perf_counter() - s))  # (start, seconds)
    out.put(("done", steps))


def _start_load(settings: Settings, seconds: float):
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_training_load, args=(settings.model_dump_json(), seconds, q, stop), daemon=True)
    proc.start()
    kind, _ = q.get(timeout=600)
    if kind != "ready":
        raise RuntimeError("the training load did not start")
    return proc, q, stop


def _finish_load(proc, q, stop) -> list[tuple[float, float]]:
    stop.set()
    kind, steps = q.get(timeout=900)
    proc.join(timeout=60)
    return steps


def run_while_training_bench(settings: Settings, engine, prompts: list[list[int]], *, requests: int = 12,
                             max_new_tokens: int = 64, load_seconds: float = 30.0) -> dict:
    """Chat idle vs beside a training load, and the load alone vs beside the chat."""
    from service.bench_common import run_requests

    def chat() -> dict:  # one user at a time, as a person chatting would
        runs = [run_requests(engine, [prompts[i % len(prompts)]], [None], max_new_tokens) for i in range(requests)]
        return {"ttft_p50_s": round(statistics.median(r["ttft_p50_s"] for r in runs), 4),
                "ttft_max_s": round(max(r["ttft_p50_s"] for r in runs), 4),
                "itl_p50_s": round(statistics.median(r["itl_p50_s"] for r in runs), 4),
                "itl_p95_s": round(max(r["itl_p95_s"] for r in runs), 4),
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 2)}

    idle = chat()
    # the load alone: its step time with the machine to itself (the first step warms up)
    load = _start_load(settings, 3600)
    time.sleep(load_seconds)
    alone = [d for _, d in _finish_load(*load)[1:]]
    # the load beside the chat: chat runs while the load trains; its steps inside the chat's window count
    load = _start_load(settings, 3600)
    time.sleep(2.0)  # let the load reach its steady state
    t0 = time.time()
    busy = chat()
    t1 = time.time()
    beside = [d for start, d in _finish_load(*load) if start < t1 and start + d > t0] or [float("nan")]  # overlapping the chat
    step_alone = statistics.median(alone) if alone else float("nan")
    step_beside = statistics.median(beside)
    return {
        "config": {"requests": requests, "max_new_tokens": max_new_tokens, "worker_threads": settings.worker_threads,
                   "worker_nice": settings.worker_nice, "server_threads": settings.server_threads, "load": "LoRA r8 fwd+bwd+AdamW, 8x128 tokens"},
        "chat_idle": idle,
        "chat_while_training": busy,
        "training_step_s_alone": round(step_alone, 3),
        "training_step_s_beside_chat": round(step_beside, 3),
        "ratios": {
            "ttft_while_training_vs_idle": round(busy["ttft_p50_s"] / idle["ttft_p50_s"], 2),
            "itl_p50_while_training_vs_idle": round(busy["itl_p50_s"] / idle["itl_p50_s"], 2),
            "itl_p95_while_training_vs_idle": round(busy["itl_p95_s"] / idle["itl_p95_s"], 2),
            "training_slowdown_beside_chat": round(step_beside / step_alone, 2),
        },
    }
