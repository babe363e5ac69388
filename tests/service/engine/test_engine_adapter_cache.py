"""AdapterCache: LRU order, pinning, eviction, background loading; load_lora on PEFT files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from service.engine.adapter_cache import AdapterCache, AdapterLoadError, LoraWeights, load_lora
from service.engine.base import AdapterRef


def fake_loader(calls: list[str], gate: threading.Event | None = None, fail: set[str] = frozenset()):
    def load(ref: AdapterRef) -> LoraWeights:
        if gate is not None:
            gate.wait(5)
        calls.append(ref.key)
        if ref.key in fail:
            raise OSError("disk on fire")
        return LoraWeights(key=ref.key, rank=1, a={}, b={})

    return load


def ref(key: str) -> AdapterRef:
    return AdapterRef(key=key, path=Path("/nowhere") / key)


def test_lru_evicts_least_recently_used_unpinned():
    calls: list[str] = []
    cache = AdapterCache(fake_loader(calls), capacity=2, background=False)
    for k in ("a", "b"):
        cache.acquire(ref(k))
        cache.release(k)
    cache.acquire(ref("a"))  # touch a: b is now the oldest
    cache.release("a")
    cache.acquire(ref("c"))
    cache.release("c")
    assert cache.resident_keys() == ["a", "c"]
    assert calls == ["a", "b", "c"] and cache.stats.evictions == 1


def test_pinned_adapters_survive_pressure_and_shrinking():
    cache = AdapterCache(fake_loader([]), capacity=2, background=False)
    cache.acquire(ref("a"))  # pinned by a running request
    cache.acquire(ref("b"))
    cache.release("b")
    cache.acquire(ref("c"))  # evicts b, never a
    assert set(cache.resident_keys()) == {"a", "c"}
    cache.set_capacity(1)  # c is pinned too: nothing can go yet
    assert set(cache.resident_keys()) == {"a", "c"}
    cache.release("c")
    assert cache.resident_keys() == ["a"]
    assert cache.acquire(ref("d")) is None  # full of pinned: d loads but waits for room
    cache.release("a")
    assert cache.acquire(ref("d")).key == "d" and cache.resident_keys() == ["d"]


def test_evict_waits_for_running_requests():
    cache = AdapterCache(fake_loader([]), capacity=4, background=False)
    cache.acquire(ref("old"))
    assert cache.evict("old") is False  # a request still decodes on it
    assert cache.resident_keys() == ["old"]
    cache.release("old")
    assert cache.resident_keys() == []
    with pytest.raises(RuntimeError):
        cache.release("old")


def test_background_load_does_not_block_and_wakes_the_engine():
    gate, woke = threading.Event(), threading.Event()
    calls: list[str] = []
    cache = AdapterCache(fake_loader(calls, gate), capacity=2, on_ready=woke.set)
    try:
        t = time.perf_counter()
        assert cache.acquire(ref("a")) is None  # returns at once while the load runs
        assert time.perf_counter() - t < 0.5
        gate.set()
        assert woke.wait(5)
        w = cache.acquire(ref("a"))
        assert w is not None and w.key == "a" and calls == ["a"]
    finally:
        cache.close()


def test_failed_load_is_reported_once_then_retried():
    calls: list[str] = []
    cache = AdapterCache(fake_loader(calls, fail={"bad"}), capacity=2, background=False)
    with pytest.raises(AdapterLoadError, match="disk on fire"):
        cache.acquire(ref("bad"))
    assert cache.stats.failures == 1 and cache.resident_keys() == []


def test_load_lora_reads_peft_files(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from service.bench import make_random_adapter

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(cfg)
    path = make_random_adapter(model, tmp_path / "ad", seed=1, r=4)
    w = load_lora(AdapterRef("k", path), num_layers=2)
    assert w.rank == 4 and set(w.a) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert w.a["k_proj"].shape == (2, 32, 4) and w.b["k_proj"].shape == (2, 4, 16)  # (L, in, r), (L, r, out)
    from safetensors.torch import load_file

    raw = load_file(str(path / "adapter_model.safetensors"))
    b = raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]  # (out, r)
    assert torch.equal(w.b["down_proj"][1], (b * 2.0).t())  # lora_alpha = 2r: scaling 2 folded into B


def test_load_lora_refuses_pickle_only_adapters(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterLoadError, match="safetensors"):
        load_lora(AdapterRef("p", tmp_path), num_layers=2)
