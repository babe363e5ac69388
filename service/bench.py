"""``assistant bench serve``: the batched engine against the naive baseline, one run, same dtype.

Scenarios (every request generates exactly ``max_new_tokens`` greedy tokens with EOS
ignored, so token counts are comparable):

1. naive: the ``users`` requests, each on its own adapter, served one after another by
   ``NaiveEngine`` (HF forward with ``set_adapter`` per request);
2. batched, 1 user on one adapter (single-user TTFT and inter-token latency);
3. batched, ``users`` concurrent requests on ``adapters`` distinct adapters;
4. batched, the same requests all on one adapter;
5. batched, 64 concurrent requests on 64 distinct adapters vs all on one (the adapter
   cache holds 32, so adapters load in the background during the run; in scenarios 2-4
   the adapters are made resident by a one-token request first, as for users who are
   already chatting);
6. prefix reuse: a five-turn conversation (system prompt, a user's adapter, replies of
   ``max_new_tokens``) recorded once, then replayed with the prefix cache off and on;
   TTFT of each turn, and turn 5's ratio;
7. chunked prefill: 8 rows decoding while a ~1,900-token prompt arrives, with the
   configured chunk and with the whole prompt in one pass; the running rows'
   inter-token latency during its prefill, against their idle latency.

``--api`` runs the 16-user scenario through a real server instead (``service.bench_api``),
``--while-training`` measures chat beside a training process (``service.bench_training``).

Each scenario runs ``repeats`` times and keeps its best run, so load from other processes
sharing the cores distorts the ratios less; the batched scenarios alternate. The naive
baseline runs (and its thread ends) before the batched engine's thread starts, since a
second live engine thread's OpenMP pool slows the first (``service.threads``). Times are taken in the engine thread when it emits each event (``service.bench_common.TimedStream``), so
consumer wake-ups do not blur them. TTFT = first token - submit; inter-token latency =
gaps between a request's successive tokens; aggregate tokens/s = all completion tokens /
(last end - first submit). ``tokens_per_cpu_s`` divides by this process's CPU time
instead: when other processes share the cores, it shows the work per token that the
wall-clock numbers blur (the ratios print both).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from service.bench_common import LORA_TARGETS, TimedStream, loadavg, make_random_adapter, pct, run_requests, stamps  # noqa: F401
from service.engine.base import AdapterRef, GenerationRequest, SamplingParams
from service.settings import Settings

logger = logging.getLogger(__name__)

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "Give me three tips for learning a new language.",
    "What is the capital of France and why is it famous?",
    "Describe a sunset in two sentences.",
    "How do plants make food?",
    "Tell me a joke about computers.",
    "Summarize the plot of Romeo and Juliet.",
]


SYSTEM_PROMPT = (
    "You are a helpful, careful assistant. Answer clearly and concisely, use plain language, "
    "say when you are unsure, prefer short paragraphs and lists for steps, and never invent facts. "
    "When the user asks for code, give a short working example with a one-line explanation."
)
CONVERSATION = [
    "I want to start running. How should I begin?",
    "How many times a week should I run at first?",
    "What should I eat before a morning run?",
    "My knees hurt a little after running. What can I do?",
    "Can you sum up your advice in three short points?",
]
LONG_PARAGRAPH = ("The history of the city begins with a small market by the river, where traders from the hills "
                  "met fishermen from the coast and exchanged salt, wool, grain and news. ")


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)


def _generate(engine, ids: list[int], adapter: AdapterRef | None, n: int, *, ignore_eos: bool = False) -> tuple[GenerationRequest, list[int]]:
    from service.engine.base import TokenEvent

    req = GenerationRequest(request_id=f"bench-{uuid.uuid4().hex[:8]}", prompt_ids=ids, adapter=adapter, stream=TimedStream(),
                            params=SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=ignore_eos), cache_salt="bench")
    engine.submit(req)
    events = list(req.stream.iter_sync(timeout=600))
    return req, [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids]


def _compiled_agreement(engine, compiled, ids: list[int], adapter: AdapterRef, int8_rows: int, n: int = 64) -> dict:
    """Greedy tokens of one stream with an adapter, eager vs compiled (on int8 when the run has it), and the step's
    counters. The engine's int8 width is the run's again after, without the compiled step (what later steps measure)."""
    served = engine.runner.int8_rows
    engine.runner.int8_rows = int8_rows
    runs = []
    try:
        for step in (None, compiled):
            engine.runner.compiled = step
            runs.append(_generate(engine, ids, adapter, n, ignore_eos=True)[1])
    finally:
        engine.runner.compiled = None
        engine.runner.int8_rows = served
    same = next((i for i, (a, b) in enumerate(zip(*runs)) if a != b), min(map(len, runs)))
    return {"greedy_prefix_agreement": round(same / max(1, min(map(len, runs))), 3), "tokens": n, "int8": bool(int8_rows),
            **compiled.stats()}


def _prefix_reuse(engine, tokenizer, adapter: AdapterRef | None, max_new_tokens: int) -> dict:
    """6. TTFT of each turn of one conversation, replayed with the prefix cache off and on."""
    budget = engine.prefix_cache.max_bytes
    engine.prefix_cache.clear()
    engine.prefix_cache.max_bytes = 0
    messages, prompts = [{"role": "system", "content": SYSTEM_PROMPT}], []
    for q in CONVERSATION:  # record: the replies the model gives, so both replays send the same prompts
        messages.append({"role": "user", "content": q})
        prompts.append(_chat_ids(tokenizer, messages))
        _, toks = _generate(engine, prompts[-1], adapter, max_new_tokens)
        messages.append({"role": "assistant", "content": tokenizer.decode(toks, skip_special_tokens=True)})
    out: dict = {"prompt_tokens": [len(p) for p in prompts]}
    for mode, size in (("without", 0), ("with", max(budget, 64 * 2**20))):
        engine.prefix_cache.clear()
        engine.prefix_cache.max_bytes = size
        out[f"ttft_s_{mode}_reuse"] = []
        for p in prompts:
            req, _ = _generate(engine, p, adapter, max_new_tokens)
            out[f"ttft_s_{mode}_reuse"].append(round(stamps(req)[0] - req.submitted_at, 4))
    engine.prefix_cache.clear()
    engine.prefix_cache.max_bytes = budget
    out["turn5_with_vs_without"] = round(out["ttft_s_with_reuse"][-1] / out["ttft_s_without_reuse"][-1], 3)
    return out


def _long_prompt_join(engine, tokenizer, prompts: list[list[int]], refs: list[AdapterRef], chunk: int) -> dict:
    """7. ITL of 8 decoding rows while a long prompt is prefilled in chunks of ``chunk`` tokens."""
    long_ids = _chat_ids(tokenizer, [{"role": "user", "content": LONG_PARAGRAPH * 62 + "Summarize this."}])
    # the KV cache grown for the long prompt beforehand, and no prefix reuse: only chunking differs
    budget, engine.prefix_cache.max_bytes = engine.prefix_cache.max_bytes, 0
    engine.prefix_cache.clear()
    _generate(engine, long_ids, None, 1)
    saved, engine.scheduler.chunk_tokens = engine.scheduler.chunk_tokens, chunk
    steady = [GenerationRequest(request_id=f"bench-steady-{uuid.uuid4().hex[:6]}-{i}", prompt_ids=prompts[i], adapter=refs[i],
                                stream=TimedStream(), params=SamplingParams(max_new_tokens=96, temperature=0.0, ignore_eos=True))
              for i in range(8)]
    try:
        for r in steady:
            engine.submit(r)
        deadline = time.monotonic() + 300
        while min(len(stamps(r)) for r in steady) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        long_req, _ = _generate(engine, long_ids, refs[8 % len(refs)], 4)
        for r in steady:
            list(r.stream.iter_sync(timeout=600))
    finally:
        engine.scheduler.chunk_tokens = saved
        engine.prefix_cache.max_bytes = budget
    t_in, t_first = long_req.submitted_at, stamps(long_req)[0]
    gaps_during, gaps_idle = [], []
    for r in steady:
        ts = stamps(r)[:-1]  # token events, not the end
        for a, b in zip(ts, ts[1:]):
            if b > t_in and a < t_first:
                gaps_during.append(b - a)
            elif b <= t_in:
                gaps_idle.append(b - a)
    return {"long_prompt_tokens": len(long_ids), "chunk_tokens": chunk, "long_ttft_s": round(t_first - t_in, 3),
            "itl_idle_p50_s": round(pct(gaps_idle, 50), 4), "itl_during_p95_s": round(pct(gaps_during, 95), 4),
            "itl_during_max_s": round(max(gaps_during, default=float("nan")), 4)}


def run_serve_bench(
    settings: Settings,
    users: int = 16,
    adapters: int = 16,
    max_new_tokens: int = 64,
    out_path: Path | str | None = None,
    *,
    dtype: str | None = None,
    many_adapters: int = 64,
    rank: int = 8,
    skip_naive: bool = False,
    naive_requests: int | None = None,
    repeats: int = 2,
    while_training: bool = False,
    peer: str | None = None,
    llamacpp_server: str | None = None,
    int8_rows: int = 0,
    vllm_python: str | None = None,
    compile_decode: bool = False,
) -> dict:
    """Run the serving benchmark and return (and optionally write as JSON) its numbers."""
    import torch

    from service.engine.batched import BatchedEngine
    from service.engine.dtype_probe import choose_dtype
    from service.engine.naive import NaiveEngine
    from service.model_loading import load_base_model, load_tokenizer
    from service.threads import cores, run_in_thread, single_threaded_control

    single_threaded_control()  # as in the server: torch runs multi-threaded only in engine threads
    threads = settings.server_threads or cores()
    dtype = dtype or settings.dtype
    tokenizer = load_tokenizer(settings)
    dtype_choice = int8_probe = None
    if dtype == "auto":  # measured here, as the server does at start
        fp32 = load_base_model(settings, dtype=torch.float32)
        _, report = run_in_thread(lambda: choose_dtype(fp32, tokenizer), threads=threads)
        dtype, dtype_choice = report.chosen, report.as_dict()
        if int8_rows:  # and the int8 probe of ASSISTANT_INT8_DECODE_ROWS=-1: timings, agreement, log-prob drift
            from service.engine.dtype_probe import choose_int8_rows

            int8_probe = run_in_thread(lambda: choose_int8_rows(fp32, tokenizer, getattr(torch, dtype), reference=report.reference), threads=threads).as_dict()
        del fp32
    tdtype = getattr(torch, dtype)
    model = load_base_model(settings, dtype=tdtype)
    n_adapters = max(adapters, many_adapters, 9)
    prompts = [_chat_ids(tokenizer, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(max(users, many_adapters, 9))]
    result: dict = {
        "config": {"users": users, "adapters": adapters, "many_adapters": many_adapters, "max_new_tokens": max_new_tokens,
                   "dtype": dtype, "dtype_choice": dtype_choice, "int8_probe": int8_probe, "lora_rank": rank, "torch_threads": threads, "repeats": repeats,
                   "naive_requests": 0 if skip_naive or while_training else min(users, naive_requests or users),
                   "prefill_chunk_tokens": settings.prefill_chunk_tokens, "prefix_cache_mb": settings.prefix_cache_mb,
                   "load_avg_at_start": loadavg(),
                   "prompt_tokens_mean": round(sum(map(len, prompts[:users])) / users, 1)},
    }
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        t = time.perf_counter()
        refs = [
            AdapterRef(key=f"bench-{i}", path=make_random_adapter(model, Path(tmp) / f"a{i}", seed=1000 + i, r=rank))
            for i in range(n_adapters)
        ]
        logger.info("wrote %d random adapters in %.1f s", n_adapters, time.perf_counter() - t)

        # The batched engine copies the weights it multiplies, so it is built before NaiveEngine
        # wraps a second copy of the model with PEFT layers; both stay up and the scenarios
        # alternate, best of ``repeats``, so a burst of load from other processes hits both.
        engine = BatchedEngine(model, tokenizer, max_batch_size=max(16, users), max_queue=max(64, users, many_adapters),
                               adapter_cache_size=32, dtype=tdtype, prefill_chunk_tokens=settings.prefill_chunk_tokens,
                               prefix_cache_bytes=settings.prefix_cache_mb * 2**20, threads=threads, int8_rows=int8_rows)
        result["config"]["int8_rows"] = engine.runner.int8_rows  # 0 when the dtype is float32
        compiled = None
        if compile_decode:  # warmed on the dense and the int8 weights; timed
            from service.engine.compiled_decode import CompiledDecode

            compiled = CompiledDecode.attach(engine.runner, threads=threads, int8_rows=(0,))
        if compiled is not None:
            result["config"]["compiled_decode_warm_s"] = round(compiled.warm_seconds, 1)
        result["config"]["weight_bytes"] = engine.runner.weight_bytes()
        if while_training:
            from service.bench_training import run_while_training_bench

            engine.start()
            try:
                run_requests(engine, prompts[:2], [None, None], 4)  # warm-up
                result.update(run_while_training_bench(settings, engine, prompts[:8], max_new_tokens=max_new_tokens))
            finally:
                engine.stop()
            return _write(result, out_path)
        naive = None if skip_naive else NaiveEngine(load_base_model(settings, dtype=tdtype), tokenizer, max_queue=max(64, users),
                                                     threads=threads)
        n_naive = min(users, naive_requests or users)  # sequential: its tokens/s does not depend on the count
        scenarios: list[tuple[str, object, list[list[int]], Sequence[AdapterRef | None]]] = []
        if naive is not None:  # 1. naive baseline: sequential, adapter swapped per request
            scenarios.append(("naive", naive, prompts[:n_naive], [refs[i % adapters] for i in range(n_naive)]))
        scenarios += [
            ("batched_1_user", engine, prompts[:1], [refs[0]]),  # 2. one user
            *([("batched_1_user_int8", engine, prompts[:1], [refs[0]])] if engine.runner.int8_rows else []),  # 2b. on int8
            *([("batched_1_user_compiled", engine, prompts[:1], [refs[0]])] if compiled else []),  # 2c. the compiled step
            *([("batched_1_user_int8_compiled", engine, prompts[:1], [refs[0]])] if compiled and engine.runner.int8_rows else []),
            ("batched_distinct", engine, prompts[:users], [refs[i % adapters] for i in range(users)]),  # 3.
            ("batched_one_adapter", engine, prompts[:users], [refs[0]] * users),  # 4. the same requests, one adapter
            ("batched_base", engine, prompts[:users], [None] * users),  # 4b. the same requests, no adapter
        ]
        if many_adapters:  # 5. many adapters vs one, through the LRU (capacity 32)
            scenarios += [
                (f"batched_{many_adapters}_distinct", engine, prompts[:many_adapters], refs[:many_adapters]),
                (f"batched_{many_adapters}_one_adapter", engine, prompts[:many_adapters], [refs[1]] * many_adapters),
            ]
        def best_of(group) -> None:
            for rep in range(repeats):
                for name, eng, ps, ads in group:
                    if eng is engine:  # int8 weights and the compiled step only in the scenarios named for them
                        engine.runner.int8_rows = result["config"]["int8_rows"] if "_int8" in name else 0
                        engine.runner.compiled = compiled if name.endswith("_compiled") else None
                    if eng is engine and any(ads) and len(set(ads)) <= engine.adapters.capacity:
                        run_requests(eng, ps, ads, 1)  # their adapters resident, as for users already chatting
                    r = run_requests(eng, ps, ads, max_new_tokens)
                    logger.info("run %d %s: %s", rep, name, r)
                    if name not in result or r["tokens_per_s"] > result[name]["tokens_per_s"]:
                        result[name] = r

        reference = None
        try:
            # The naive baseline runs first and its thread ends before the batched engine's starts:
            # an engine thread that stays alive keeps its OpenMP pool, which slows the other (service.threads).
            if naive is not None:
                naive.start()
                run_requests(naive, prompts[:2], refs[-2:], 4)  # warm-up
                best_of([sc for sc in scenarios if sc[1] is naive])
                naive.stop()
                naive = None
            engine.start()
            run_requests(engine, prompts[:2], refs[-2:], 4)  # warm-up
            best_of([sc for sc in scenarios if sc[1] is engine])
            if compiled is not None:  # 2d. greedy agreement of the compiled step with the eager one, on int8 where it serves
                result["compiled_decode"] = _compiled_agreement(engine, compiled, prompts[0], refs[0], result["config"]["int8_rows"])
                logger.info("compiled decode: %s", result["compiled_decode"])
            result["prefix_reuse"] = _prefix_reuse(engine, tokenizer, refs[0], max_new_tokens)  # 6.
            logger.info("prefix reuse: %s", result["prefix_reuse"])
            result["long_prompt_join"] = {  # 7.
                "chunked": _long_prompt_join(engine, tokenizer, prompts, refs, settings.prefill_chunk_tokens),
                "one_pass": _long_prompt_join(engine, tokenizer, prompts, refs, 1 << 16),
            }
            logger.info("long prompt join: %s", result["long_prompt_join"])
            result["engine_stats"] = engine.stats()
            if peer == "llamacpp":  # our greedy tokens, for the peer's float32 run to reproduce
                reference = {"tokens": _generate(engine, prompts[0], refs[0], 32, ignore_eos=True)[1]}
        finally:
            engine.stop()
            if naive is not None:
                naive.stop()
        if peer == "llamacpp":  # 8. the same requests on llama.cpp, after our engine stopped: the same cores
            result["peers"] = {"llamacpp": _llamacpp(settings, refs, [sc for sc in scenarios if sc[1] is engine
                                                                    and "_int8" not in sc[0] and "_compiled" not in sc[0]],
                                                     Path(tmp), threads, max_new_tokens, repeats, llamacpp_server,
                                                     reference)}
        if peer == "vllm":  # 8. the same requests on vLLM's CPU build, through ASSISTANT_ENGINE=vllm's engine
            result["peers"] = {"vllm": _vllm(settings, tokenizer, [sc for sc in scenarios if sc[1] is engine
                                                                   and "_int8" not in sc[0] and "_compiled" not in sc[0]],
                                             Path(tmp), threads, max_new_tokens, repeats, vllm_python, max(16, users))}

    b = result["batched_distinct"]
    ratios = {
        "distinct_vs_one_adapter": round(b["tokens_per_s"] / result["batched_one_adapter"]["tokens_per_s"], 3),
        "ttft_p95_vs_single_user": round(b["ttft_p95_s"] / result["batched_1_user"]["ttft_p50_s"], 2),
        "ttft_turn5_with_vs_without_prefix_reuse": result["prefix_reuse"]["turn5_with_vs_without"],
    }
    lj = result["long_prompt_join"]
    ratios["itl_p95_during_long_prompt_vs_idle_chunked"] = round(lj["chunked"]["itl_during_p95_s"] / lj["chunked"]["itl_idle_p50_s"], 2)
    ratios["itl_p95_during_long_prompt_vs_idle_one_pass"] = round(lj["one_pass"]["itl_during_p95_s"] / lj["one_pass"]["itl_idle_p50_s"], 2)
    if "batched_1_user_int8" in result:
        ratios["1_user_int8_vs_dense_tokens_per_s"] = round(result["batched_1_user_int8"]["tokens_per_s"]
                                                            / result["batched_1_user"]["tokens_per_s"], 2)
    for variant in ("compiled", "int8_compiled"):
        if f"batched_1_user_{variant}" in result:  # against the same weights run eagerly
            eager = result["batched_1_user_int8" if variant.startswith("int8") else "batched_1_user"]
            ratios[f"1_user_{variant}_vs_eager_tokens_per_s"] = round(result[f"batched_1_user_{variant}"]["tokens_per_s"]
                                                                      / eager["tokens_per_s"], 2)
    if "naive" in result:
        ratios["batched_vs_naive_tokens_per_s"] = round(b["tokens_per_s"] / result["naive"]["tokens_per_s"], 2)
        ratios["batched_vs_naive_tokens_per_cpu_s"] = round(b["tokens_per_cpu_s"] / result["naive"]["tokens_per_cpu_s"], 2)
        ratios["batched_1_user_vs_naive_tokens_per_s"] = round(result["batched_1_user"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2)
    if many_adapters:
        ratios[f"{many_adapters}_distinct_vs_one_adapter"] = round(
            result[f"batched_{many_adapters}_distinct"]["tokens_per_s"] / result[f"batched_{many_adapters}_one_adapter"]["tokens_per_s"], 3
        )
    if "f32" in result.get("peers", {}).get("llamacpp", {}):
        from service.bench_peers import peer_ratios

        ratios.update(peer_ratios(result, result["peers"]["llamacpp"]))
    if "bf16" in result.get("peers", {}).get("vllm", {}):
        from service.bench_peers import vllm_ratios

        ratios.update(vllm_ratios(result, result["peers"]["vllm"]))
    result["ratios"] = ratios
    return _write(result, out_path)


def _llamacpp(settings: Settings, refs, scenarios, workdir: Path, threads: int, max_new_tokens: int,
              repeats: int, binary: str | None, reference: dict[str, list[int]] | None) -> dict:
    """llama.cpp's numbers on our scenarios, or why there are none (no binary, a model its GGUF cannot hold).
    Its GGUFs are written from the served model in float32, whatever dtype our engine ran in."""
    import torch

    from service.bench_peers import find_llama_server, run_llamacpp_peer
    from service.model_loading import embedded_gguf_path, load_base_model

    found = find_llama_server(binary)
    if found is None:
        logger.warning("no llama-server: the peer is skipped (make peer-llamacpp, or --llamacpp-server PATH)")
        return {"skipped": "no llama-server found: run `make peer-llamacpp` or pass --llamacpp-server PATH"}
    try:
        return run_llamacpp_peer(found, load_base_model(settings, dtype=torch.float32), refs, {name: (ps, ads) for name, _, ps, ads in scenarios},
                                 template=embedded_gguf_path(), workdir=workdir, threads=threads,
                                 max_new_tokens=max_new_tokens, repeats=repeats, reference=reference)
    except ValueError as e:  # a served model that is not the shipped architecture
        logger.warning("the llama.cpp peer is skipped: %s", e)
        return {"skipped": f"the served model cannot be written as the shipped GGUF: {e}"}


def _vllm(settings: Settings, tokenizer, scenarios, workdir: Path, threads: int, max_new_tokens: int, repeats: int,
          python: str | None, max_batch_size: int) -> dict:
    """vLLM's numbers on our scenarios, or why there are none (its venv missing, a server that did not start)."""
    from service.bench_peers import run_vllm_peer

    python = python or str(Path(".peers/vllm/bin/python"))
    if not Path(python).exists():
        logger.warning("no vLLM venv at %s: the peer is skipped (make peer-vllm, or --vllm-python PATH)", python)
        return {"skipped": f"no vLLM at {python}: run `make peer-vllm` or pass --vllm-python PATH"}
    try:
        return run_vllm_peer(settings, tokenizer, python, {name: (ps, ads) for name, _, ps, ads in scenarios}, workdir=workdir,
                             threads=threads, max_new_tokens=max_new_tokens, repeats=repeats, max_batch_size=max_batch_size)
    except RuntimeError as e:  # vLLM exited or never answered: its log tail says why
        logger.warning("the vLLM peer is skipped: %s", e)
        return {"skipped": f"vLLM did not serve: {str(e)[-500:]}"}


def _write(result: dict, out_path: Path | str | None) -> dict:
    result["config"]["load_avg_at_end"] = loadavg()
    if out_path is not None:
        Path(out_path).write_text(json.dumps(result, indent=2))
    return result


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``assistant bench serve``."""
    parser.add_argument("--users", type=int, default=16, help="concurrent requests (default 16)")
    parser.add_argument("--adapters", type=int, default=16, help="distinct adapters among them (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--many-adapters", type=int, default=64, help="size of the many-adapters scenario; 0 skips it")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the random adapters (default 8)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=None,
                        help="serving dtype (default: ASSISTANT_DTYPE; auto measures, as the server does)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the (slow) naive baseline")
    parser.add_argument("--naive-requests", type=int, default=None,
                        help="serve only this many of the requests through the sequential baseline (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the scenarios this many times, keep each one's best")
    parser.add_argument("--api", action="store_true", help="the users scenario through a real server's /v1 and WebSocket routes")
    parser.add_argument("--while-training", action="store_true", help="one user's chat idle vs beside a training process")
    parser.add_argument("--best-of-n", type=int, default=1,
                        help="with --api: personal best-of-n off vs this n, each user on an adapter with a stored reward")
    parser.add_argument("--best-of-block", type=int, default=16, help="with --best-of-n: tokens per choice (0: whole replies)")
    parser.add_argument("--best-of-first-block", type=int, default=0,
                        help="with --best-of-n: tokens of the first choice (0: --best-of-block)")
    parser.add_argument("--int8-rows", type=int, default=0,
                        help="also one user on int8 weights (decode steps of at most this many rows; 16-bit dtypes only)")
    parser.add_argument("--compile-decode", action="store_true",
                        help="also one user on the compiled decode step (ASSISTANT_COMPILE_DECODE), dense and int8: tokens/s "
                             "against the same weights run eagerly, greedy agreement, compile time")
    parser.add_argument("--peer", choices=["llamacpp", "vllm"], default=None,
                        help="also run the same requests on llama.cpp's server (float32 and Q4_1, same adapters and cores) "
                             "or on vLLM's CPU build (bfloat16, adapters loaded at runtime, through ASSISTANT_ENGINE=vllm's engine)")
    parser.add_argument("--vllm-python", default=None,
                        help="with --peer vllm: the python of vLLM's venv (default: `make peer-vllm`'s .peers/vllm/bin/python)")
    parser.add_argument("--llamacpp-server", default=None,
                        help="with --peer llamacpp: the llama-server binary (default: `make peer-llamacpp`'s, else PATH)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    return parser


def main_bench(args: argparse.Namespace, settings: Settings | None = None) -> dict:
    """Entry point for ``assistant bench serve``: run, print a summary, return the numbers."""
    from service.settings import get_settings

    settings = settings or get_settings()
    if args.api:
        from service.bench_api import run_api_bench

        result = run_api_bench(settings, users=args.users, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                               best_of_n=args.best_of_n, best_of_block=args.best_of_block,
                               best_of_first_block=args.best_of_first_block)
        if args.out is not None:
            Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return result
    result = run_serve_bench(
        settings, users=args.users, adapters=args.adapters, max_new_tokens=args.max_new_tokens, out_path=args.out,
        dtype=args.dtype, many_adapters=args.many_adapters, rank=args.rank, skip_naive=args.skip_naive,
        naive_requests=args.naive_requests, repeats=args.repeats, while_training=args.while_training,
        peer=args.peer, llamacpp_server=args.llamacpp_server, int8_rows=args.int8_rows, vllm_python=args.vllm_python,
        compile_decode=args.compile_decode,
    )
    print(json.dumps(result, indent=2))  # the command's output, not a log line
    if "f32" in result.get("peers", {}).get("llamacpp", {}):
        from service.bench_peers import peer_table

        print(peer_table(result, result["peers"]["llamacpp"]))
    return result


if __name__ == "__main__":  # python -m service.bench ...
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main_bench(add_bench_args(argparse.ArgumentParser(prog="assistant bench serve")).parse_args())
