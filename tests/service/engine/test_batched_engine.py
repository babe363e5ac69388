"""BatchedEngine on the real embedded model: greedy equivalence with HF, scheduling, adapters, back-pressure."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
import torch

from service.bench_common import TimedStream as _TimedStream
from service.engine.base import EndEvent, GenerationRequest, QueueFull, SamplingParams, TokenEvent
from service.engine.batched import STALL_S, BatchedEngine

N = 20  # greedy tokens per equivalence request: short, but long enough for adapters to diverge


@contextmanager
def running(engine: BatchedEngine):
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def request(rid: str, prompt: list[int], adapter=None, n: int = N, cache_salt: str | None = None, **params) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    return GenerationRequest(rid, prompt, SamplingParams(max_new_tokens=n, **params), adapter=adapter, stream=_TimedStream(),
                             cache_salt=cache_salt)


def collect(req: GenerationRequest) -> tuple[list[int], EndEvent]:
    events = list(req.stream.iter_sync(timeout=120))
    return [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids], events[-1]


def wait_tokens(req: GenerationRequest, k: int, timeout: float = 60) -> None:
    """Block until ``req`` has emitted ``k`` events."""
    deadline = time.monotonic() + timeout
    while len(req.stream.times) < k:
        assert time.monotonic() < deadline, "engine produced too few tokens"
        time.sleep(0.005)


def test_greedy_matches_hf_generate_with_mixed_adapters_and_late_joiners(base_model, tokenizer, prompts, adapters, reference):
    a0, a1, a2 = adapters
    p0, p1, p2 = prompts
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=4)
    with running(engine):
        first = [
            request("base", p0, None),
            request("a0", p0, a0),  # the same prompt on three adapters and the base model, one batch
            request("a1", p0, a1),
            request("a2-short", p1, a2, n=8),  # leaves early; its row is reused
        ]
        for r in first:
            engine.submit(r)
        wait_tokens(first[0], 4)
        late = [request("late-a0", p1, a0), request("late-a1", p2, a1), request("late-base", p2, None, n=12)]
        for r in late:  # join a batch that is already decoding; the last two wait for free rows
            engine.submit(r)
        results = {r.request_id: (r, *collect(r)) for r in first + late}
        stats = engine.stats()

    outputs = {}
    for rid, (req, toks, end) in results.items():
        ref = reference(req.prompt_ids, req.adapter, req.params.max_new_tokens)
        assert toks == ref, f"{rid}: engine {toks} != HF generate {ref}"
        assert end.finish_reason == ("length" if len(ref) == req.params.max_new_tokens else "stop")
        assert end.prompt_tokens == len(req.prompt_ids)
        outputs[rid] = toks
    # the adapters really change the output, so a row served with the wrong adapter would fail above
    assert len({tuple(outputs[k]) for k in ("base", "a0", "a1")}) == 3
    assert stats["prefill_passes"] >= 2 and stats["mean_decode_batch"] > 1
    assert sum(stats["finished"].values()) == 7


def test_rows_leave_on_limit_and_stop_token_and_waiting_requests_join(base_model, tokenizer, prompts, reference):
    p0, p1, _ = prompts
    ref = reference(p0, None, N)
    # a stop token that first appears at index k of the reference continuation
    k = next(i for i in range(3, len(ref)) if ref[i] not in ref[:i])
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=2)
    engine._stop_ids = engine._stop_ids | {ref[k]}
    with running(engine):
        stopper = request("stopper", p0, None)
        limited = request("limited", p1, None, n=5)
        waiter = request("waiter", p1, None, n=3)
        for r in (stopper, limited, waiter):
            engine.submit(r)
        (s_toks, s_end), (l_toks, l_end), (w_toks, w_end) = collect(stopper), collect(limited), collect(waiter)
    assert s_end.finish_reason == "stop" and s_toks == ref[:k] and s_end.completion_tokens == k + 1
    assert l_end.finish_reason == "length" and len(l_toks) == 5 == l_end.completion_tokens
    assert w_end.finish_reason == "length" and w_toks == l_toks[:3]
    # the waiter got a row only when one was freed (batch of 2)
    assert waiter.stream.times[0] >= min(stopper.stream.times[-1], limited.stream.times[-1])


def test_cancel_frees_the_row_for_the_next_request(base_model, tokenizer, prompts):
    p0, p1, _ = prompts
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=1)
    with running(engine):
        long = request("long", p0, None, n=500, ignore_eos=True)
        queued_then_cancelled = request("gone", p1, None)
        nxt = request("next", p1, None, n=4)
        for r in (long, queued_then_cancelled, nxt):
            engine.submit(r)
        engine.cancel("gone")  # still waiting: ends without a row
        wait_tokens(long, 3)
        engine.cancel("long")
        toks, end = collect(long)
        g_toks, g_end = collect(queued_then_cancelled)
        n_toks, n_end = collect(nxt)
    assert end.finish_reason == "cancelled" and 3 <= end.completion_tokens < 500 and len(toks) == end.completion_tokens
    assert g_end.finish_reason == "cancelled" and g_toks == [] and g_end.completion_tokens == 0
    assert n_end.finish_reason == "length" and len(n_toks) == 4


def test_the_engine_needs_the_cpu_while_it_has_work_and_its_loop_moves(base_model, tokenizer, prompts):
    """What a background compilation pauses for (ASSISTANT_COMPILE_DECODE): a request waiting or running on a loop
    that goes round; not an idle engine, nor one whose loop has stalled (it may be waiting on the paused thread)."""
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=1)
    assert not engine.needs_cpu()  # nothing to do
    waiting = request("w", prompts[0], None, n=2)
    engine.submit(waiting)
    assert engine.needs_cpu()
    time.sleep(STALL_S + 0.2)  # not started: its loop never goes round
    assert not engine.needs_cpu()
    with running(engine):
        assert collect(waiting)[1].finish_reason == "length"
        long = request("long", prompts[1], None, n=500, ignore_eos=True)
        engine.submit(long)
        wait_tokens(long, 2)
        assert engine.needs_cpu()
        engine.cancel("long")
        collect(long)
        time.sleep(0.2)  # the loop retires the row
        assert not engine.needs_cpu()


def test_queue_full_is_back_pressure(base_model, tokenizer, prompts):
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=1, max_queue=2)
    reqs = [request(f"q{i}", prompts[0], None, n=2) for i in range(2)]
    for r in reqs:  # not started: nothing drains the queue
        engine.submit(r)
    with pytest.raises(QueueFull):
        engine.submit(request("q2", prompts[0], None, n=2))
    assert engine.stats()["queued"] == 2
    with running(engine):
        assert [collect(r)[1].finish_reason for r in reqs] == ["length", "length"]
        engine.submit(request("q3", prompts[0], None, n=2))  # room again


def test_pinned_adapter_is_not_evicted_and_new_adapter_waits_for_room(base_model, tokenizer, prompts, adapters, reference):
    a0, a1, _ = adapters
    p0, p1, _ = prompts
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=2, adapter_cache_size=1)
    with running(engine):
        first = request("first", p0, a0, n=16)
        engine.submit(first)
        wait_tokens(first, 2)
        second = request("second", p1, a1, n=6)  # a1 cannot become resident while a0 is pinned
        engine.submit(second)
        (f_toks, _), (s_toks, _) = collect(first), collect(second)
        stats = engine.stats()
        engine.evict_adapter(a1.key)  # pinned until its row retires, then dropped
        deadline = time.monotonic() + 10
        while engine.adapters.resident_keys() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.adapters.resident_keys() == []
    assert f_toks == reference(p0, a0, 16)
    assert s_toks == reference(p1, a1, 6)
    assert second.stream.times[0] >= first.stream.times[-1]
    assert stats["adapters"]["evictions"] >= 1 and stats["adapters"]["resident"] == 1


def test_missing_adapter_ends_with_error_and_engine_keeps_serving(base_model, tokenizer, prompts, tmp_path):
    from service.engine.base import AdapterRef

    engine = BatchedEngine(base_model, tokenizer, max_batch_size=2)
    with running(engine):
        bad = request("bad", prompts[0], AdapterRef("missing", tmp_path / "nope"), n=4)
        ok = request("ok", prompts[0], None, n=4)
        engine.submit(bad)
        engine.submit(ok)
        _, bad_end = collect(bad)
        ok_toks, ok_end = collect(ok)
    assert bad_end.finish_reason == "error" and "adapter_config.json" in bad_end.error
    assert ok_end.finish_reason == "length" and len(ok_toks) == 4


def test_seeded_sampling_is_reproducible_inside_a_batch(base_model, tokenizer, prompts):
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=4)
    with running(engine):
        reqs = [request(f"s{i}", prompts[1], None, n=10, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True) for i in range(2)]
        reqs.append(request("other", prompts[0], None, n=10, temperature=0.9, seed=8, ignore_eos=True))
        for r in reqs:
            engine.submit(r)
        outs = [collect(r)[0] for r in reqs]
    assert outs[0] == outs[1] and len(outs[0]) == 10


def test_bfloat16_serves_adapters(engine_settings, tokenizer, prompts, adapters):
    from service.model_loading import load_base_model

    model = load_base_model(engine_settings, dtype=torch.bfloat16)
    engine = BatchedEngine(model, tokenizer, max_batch_size=4, dtype="bfloat16")
    with running(engine):
        reqs = [request(f"b{i}", prompts[i % 3], ad, n=6, ignore_eos=True) for i, ad in enumerate([None, *adapters])]
        for r in reqs:
            engine.submit(r)
        ends = [collect(r) for r in reqs]
    assert engine.runner.k_cache.dtype == torch.bfloat16
    for toks, end in ends:
        assert end.finish_reason == "length" and len(toks) == 6
    text = tokenizer.decode(ends[0][0])
    assert text.strip(), "bf16 base model produced no text"


def _next_turn(tokenizer, question: str, reply_ids: list[int], follow_up: str) -> list[int]:
    """The prompt of turn 2: turn 1 with its reply, then a new user message (as the server renders it)."""
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": tokenizer.decode(reply_ids, skip_special_tokens=True)},
            {"role": "user", "content": follow_up}]
    enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)


def test_prefix_reuse_matches_hf_generate_and_stays_inside_adapter_and_salt(base_model, tokenizer, prompts, adapters, reference):
    from tests.service.engine.conftest import QUESTIONS

    a0, a1, _ = adapters
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=4)
    with running(engine):
        first = request("t1", prompts[0], a0, cache_salt="user-1")
        engine.submit(first)
        reply, _ = collect(first)
        turn2 = _next_turn(tokenizer, QUESTIONS[0], reply, "Give an example.")
        cold = engine.stats()["prefix_cache"]["reused_tokens"]
        same = request("t2", turn2, a0, cache_salt="user-1")
        other_user = request("t2-other-user", turn2, a0, cache_salt="user-2")
        other_adapter = request("t2-other-adapter", turn2, a1, cache_salt="user-1")
        for r in (same, other_user, other_adapter):
            engine.submit(r)
        outs = [collect(r)[0] for r in (same, other_user, other_adapter)]
        reused = engine.stats()["prefix_cache"]["reused_tokens"] - cold
    assert cold == 0
    # turn 1's prompt and most of its reply came from the cache, for that user and adapter only
    assert len(prompts[0]) <= reused < len(turn2)
    assert outs[0] == outs[1] == reference(turn2, a0, N)
    assert outs[2] == reference(turn2, a1, N)


def test_chunked_prefill_matches_hf_generate_and_decoding_rows_keep_going(base_model, tokenizer, prompts, adapters, reference):
    a0, a1, _ = adapters
    # a long prompt: the three questions many times over, in one user message
    long_text = " ".join(["Explain what a hash table is, then write a short poem about the sea."] * 20)
    enc = tokenizer.apply_chat_template([{"role": "user", "content": long_text}], add_generation_prompt=True, tokenize=True)
    long_ids = list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)
    assert len(long_ids) > 300
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=4, prefill_chunk_tokens=32, prefix_cache_bytes=0)
    with running(engine):
        steady = request("steady", prompts[1], a1, n=40, ignore_eos=True)
        engine.submit(steady)
        wait_tokens(steady, 2)
        long = request("long", long_ids, a0, n=8)
        engine.submit(long)
        long_toks, _ = collect(long)
        steady_toks, _ = collect(steady)
    # the long prompt took ceil(len / 32) chunk passes; the steady row decoded between them
    during = [t for t in steady.stream.times if long.submitted_at <= t <= long.stream.times[0]]
    assert len(during) >= len(long_ids) // 32 - 1
    assert long_toks == reference(long_ids, a0, 8)
    ref = reference(prompts[1], a1, 40)  # cut at its first stop token; the steady row ignores EOS
    assert steady_toks[: len(ref)] == ref


def test_a_new_base_is_swapped_in_between_passes_and_the_stale_prefix_cache_is_dropped(engine_settings, base_model, tokenizer,
                                                                                        prompts, adapters, reference):
    """How the safe base (``learning.safety``) reaches a running server: ``replace_base``."""
    from peft import PeftModel

    from service.engine.sampling import stop_token_ids
    from service.model_loading import load_base_model

    new_base = PeftModel.from_pretrained(load_base_model(engine_settings), str(adapters[0].path)).merge_and_unload()
    new_base.eval()
    p0 = prompts[0]
    with torch.inference_mode():
        out = new_base.generate(torch.tensor([p0]), attention_mask=torch.ones(1, len(p0), dtype=torch.long),
                                max_new_tokens=N, do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, len(p0):].tolist()
    stops = stop_token_ids(tokenizer, new_base.config)
    expected = next((out[:i] for i, t in enumerate(out) if t in stops), out)
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=2, prefix_cache_bytes=1 << 26)
    with running(engine):
        before = request("before", p0)
        engine.submit(before)
        toks_before, _ = collect(before)
        engine.replace_base(new_base)
        after = request("after", p0)  # the same prompt: a stale cached prefix would answer as the old base
        engine.submit(after)
        toks_after, _ = collect(after)
    assert toks_before == reference(p0, None, N)
    assert toks_after == expected and toks_after != toks_before
    assert engine.base_replacements == 1


def test_the_server_swaps_in_the_safe_base_once_it_is_saved(tmp_path, model_data_dir, base_model, tokenizer, prompts, adapters):
    """A running server picks up the safe base the learning worker saved, without a restart."""
    import dataclasses

    from peft import PeftModel

    from learning.config import Budgets
    from learning.safety import SafetyResult, _save_merged
    from service.base_watch import BaseWatcher
    from service.model_loading import EMBEDDED_DIRNAME, base_model_hash, load_base_model, load_tokenizer, safe_base_dir
    from service.settings import Settings

    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / EMBEDDED_DIRNAME).symlink_to(model_data_dir / "models" / EMBEDDED_DIRNAME)
    settings = Settings(data_dir=data, dev_mode=True)
    engine = BatchedEngine(base_model, tokenizer, max_batch_size=2)
    watcher = BaseWatcher(settings, engine, interval_s=3600)
    plain_hash = watcher.hash
    assert watcher.describe() == {"safety_stage": False, "hash": plain_hash}
    assert not watcher.check_once()  # nothing new yet

    safe = PeftModel.from_pretrained(load_base_model(settings), str(adapters[0].path)).merge_and_unload()
    fields = {f.name: 0 for f in dataclasses.fields(SafetyResult)}
    _save_merged(safe, load_tokenizer(settings), safe_base_dir(settings, plain_hash),
                 SafetyResult(**{**fields, "accepted": True, "reason": "test", "base_hash": plain_hash}), Budgets(), rows=[])
    with running(engine):
        before = request("before", prompts[0])
        engine.submit(before)
        toks_before, _ = collect(before)
        assert watcher.check_once()  # loads the saved weights and hands them to the engine
        after = request("after", prompts[0])
        engine.submit(after)
        toks_after, _ = collect(after)
    assert engine.base_replacements == 1 and toks_after != toks_before
    assert watcher.describe() == {"safety_stage": True, "hash": base_model_hash(settings)} and watcher.hash != plain_hash
    assert not watcher.check_once()
    assert torch.equal(engine.runner.embed, base_model.model.embed_tokens.weight.to(engine.runner.dtype))
