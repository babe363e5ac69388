"""ASSISTANT_ENGINE=vllm: the engine protocol on a real vLLM server (`make vllm-e2e` installs vLLM's CPU build
in .peers/vllm and runs this file with ASSISTANT_TEST_VLLM_PYTHON set), plus the request mapping and the
stream parsing, which need no server."""

from __future__ import annotations

import os

import httpx
import pytest

from service.engine.base import AdapterRef, GenerationRequest, SamplingParams
from service.engine.vllm import VllmEngine, VllmError, VllmServer

VLLM_PYTHON = os.environ.get("ASSISTANT_TEST_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="ASSISTANT_TEST_VLLM_PYTHON is unset: `make vllm-e2e` installs "
                                "vLLM's CPU build and runs these against it")


def _request(prompt: list[int], adapter: AdapterRef | None = None, rid: str = "r", **params) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt_ids=prompt, params=SamplingParams(**params), adapter=adapter)


# --- without a server ---------------------------------------------------------------------------


def test_a_request_maps_onto_vllms_completions_api(tokenizer, prompts, tmp_path):
    engine = VllmEngine("http://127.0.0.1:9/", tokenizer)
    adapter = AdapterRef(key="u2-v1@abc", path=tmp_path)
    body = engine.body(_request(prompts[0], adapter, max_new_tokens=12, temperature=0.0, seed=7, logprobs=2,
                                presence_penalty=0.5), "base")
    assert body["model"] == "u2-v1@abc" and body["prompt"] == prompts[0]  # token ids, rendered here
    assert (body["max_tokens"], body["temperature"], body["seed"], body["logprobs"], body["presence_penalty"]) == (12, 0.0, 7, 2, 0.5)
    assert body["stream"] and body["return_tokens_as_token_ids"] and tokenizer.eos_token_id in body["stop_token_ids"]
    plain = engine.body(_request(prompts[0], ignore_eos=True), "base")
    assert plain["model"] == "base" and plain["ignore_eos"] and "stop_token_ids" not in plain and "seed" not in plain
    assert plain["logprobs"] == 0  # the sampled token's id comes with its log-prob, always


def test_streamed_tokens_become_events_and_stop_tokens_are_counted_never_shown(tokenizer):
    engine = VllmEngine("http://127.0.0.1:9/", tokenizer)
    hello, world = tokenizer.encode(" Hello", add_special_tokens=False)[0], tokenizer.encode(" world", add_special_tokens=False)[0]
    eos = tokenizer.eos_token_id
    choice = {"text": " Hello world", "logprobs": {"tokens": [f"token_id:{hello}", f"token_id:{world}", f"token_id:{eos}"],
                                                   "token_logprobs": [-0.5, -1.0, -0.1],
                                                   "top_logprobs": [{f"token_id:{hello}": -0.5, f"token_id:{world}": -2.0},
                                                                    {f"token_id:{world}": -1.0}, {f"token_id:{eos}": -0.1}]}}
    event, count = engine._event(choice, wanted=1)
    assert count == 3 and event.token_ids == [hello, world] and event.text == " Hello world"
    assert [round(lp.logprob, 2) for lp in event.logprobs] == [-0.5, -1.0] and len(event.logprobs[0].top) == 1
    assert engine._event(choice, wanted=None)[0].logprobs is None
    assert engine._event({"text": "", "logprobs": {"tokens": [f"token_id:{eos}"]}}, None) == (None, 1)
    with pytest.raises(VllmError, match="not as its id"):
        engine._event({"text": "x", "logprobs": {"tokens": ["x"]}}, None)


def test_an_unreachable_server_ends_the_request_with_a_clear_error(tokenizer, prompts):
    engine = VllmEngine("http://127.0.0.1:9/", tokenizer, model="base")  # nothing listens on port 9
    engine.start()
    try:
        events = list(engine.submit(_request(prompts[0], max_new_tokens=4)).iter_sync(timeout=30))
    finally:
        engine.stop()
    assert events[-1].finish_reason == "error" and "ConnectError" in events[-1].error


# --- against vLLM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_url(engine_settings, tmp_path_factory):
    with VllmServer(engine_settings, VLLM_PYTHON, tmp_path_factory.mktemp("vllm") / "server.log", dtype="float32",
                    max_loras=4, kv_cache_gib=1) as server:
        yield server.url


@pytest.fixture(scope="module")
def engine(vllm_url, tokenizer):
    e = VllmEngine(vllm_url, tokenizer, max_batch_size=8)
    e.start()
    yield e
    e.stop()


def _run(engine, prompt, adapter=None, rid="r", **params):
    events = list(engine.submit(_request(prompt, adapter, rid, **params)).iter_sync(timeout=300))
    return [t for ev in events[:-1] for t in ev.token_ids], events


@needs_vllm
def test_greedy_replies_equal_hf_generate_with_and_without_adapters(engine, prompts, adapters, reference):
    for i, adapter in enumerate([None, adapters[0], adapters[1]]):
        ids, events = _run(engine, prompts[i], adapter, f"greedy-{i}", max_new_tokens=12, temperature=0.0)
        assert events[-1].finish_reason in ("stop", "length") and events[-1].error is None
        assert ids == reference(prompts[i], adapter, 12), adapter
    assert engine.stats()["adapters"]["loads"] == 2


@needs_vllm
def test_distinct_adapters_at_once_each_get_their_own_reply(engine, prompts, adapters, reference):
    reqs = [_request(prompts[i % 3], adapters[i % 3], f"many-{i}", max_new_tokens=10, temperature=0.0) for i in range(6)]
    streams = [engine.submit(r) for r in reqs]
    for r, stream in zip(reqs, streams):
        ids = [t for ev in list(stream.iter_sync(timeout=300))[:-1] for t in ev.token_ids]
        assert ids == reference(r.prompt_ids, r.adapter, 10)


@needs_vllm
def test_a_seed_repeats_its_sample_and_logprobs_come_with_each_token(engine, prompts, adapters):
    a, _ = _run(engine, prompts[1], adapters[2], "seed-a", max_new_tokens=16, temperature=0.9, seed=7)
    b, events = _run(engine, prompts[1], adapters[2], "seed-b", max_new_tokens=16, temperature=0.9, seed=7, logprobs=2)
    assert a == b
    lps = [lp for ev in events[:-1] for lp in ev.logprobs]
    assert len(lps) == len(b) and all(lp.logprob <= 0 and len(lp.top) == 2 for lp in lps)


@needs_vllm
def test_cancel_stops_the_reply_and_evict_unloads_the_adapter(engine, vllm_url, prompts, adapters):
    req = _request(prompts[0], adapters[0], "long", max_new_tokens=400, temperature=0.7, ignore_eos=True)
    stream = engine.submit(req)
    events = []
    for ev in stream.iter_sync(timeout=300):
        events.append(ev)
        if len(events) == 2:
            engine.cancel("long")
    assert events[-1].finish_reason == "cancelled" and events[-1].completion_tokens < 400
    engine.evict_adapter(adapters[0].key)
    listed = [m["id"] for m in httpx.get(f"{vllm_url}/v1/models").json()["data"]]
    assert adapters[0].key not in listed and adapters[1].key in listed
    loads = engine.stats()["adapters"]["loads"]
    _run(engine, prompts[0], adapters[0], "again", max_new_tokens=4, temperature=0.0)  # loaded again on demand
    assert engine.stats()["adapters"]["loads"] == loads + 1
