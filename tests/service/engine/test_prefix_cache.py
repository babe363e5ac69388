"""The prefix cache's index: longest verified prefix, per adapter and salt, LRU under a byte budget."""

from __future__ import annotations

import torch

from service.engine.prefix_cache import PrefixCache


def kv(n: int, fill: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.full((2, 1, n, 4), fill)  # (L, Hkv, n, hd): 2*1*4*4 bytes = 32 B per token per tensor
    return t, t.clone()


def test_longest_prefix_is_found_and_checked_token_for_token():
    cache = PrefixCache(10**6, block_size=4)
    tokens = list(range(20))
    assert cache.store("a", "u1", tokens, *kv(20))
    hit = cache.lookup("a", "u1", tokens[:13] + [99, 98, 97], max_length=15)
    assert hit is not None and hit.length == 13  # 3 full blocks, then extended to the exact common length
    assert cache.lookup("a", "u1", [5] + tokens[1:], max_length=19) is None  # first block differs
    assert cache.lookup("a", "u1", tokens[:3], max_length=2) is None  # shorter than one block


def test_prefixes_do_not_cross_adapters_or_salts():
    cache = PrefixCache(10**6, block_size=4)
    tokens = list(range(16))
    cache.store("a", "u1", tokens, *kv(16))
    assert cache.lookup("b", "u1", tokens, max_length=15) is None
    assert cache.lookup("a", "u2", tokens, max_length=15) is None
    assert cache.lookup(None, None, tokens, max_length=15) is None
    cache.drop_adapter("a")
    assert cache.lookup("a", "u1", tokens, max_length=15) is None and cache.bytes == 0


def test_a_later_turn_replaces_the_earlier_and_lru_evicts_under_the_budget():
    per_token = 2 * 1 * 4 * 4 * 2  # k and v, fp32
    cache = PrefixCache(40 * per_token, block_size=4)
    turn1 = list(range(12))
    turn2 = turn1 + list(range(100, 112))  # 24 tokens, starts with turn 1
    cache.store("a", "u1", turn1, *kv(12))
    cache.store("a", "u1", turn2, *kv(24))
    assert len(cache) == 1 and cache.bytes == 24 * per_token  # turn 1 was a prefix of turn 2: dropped
    other = list(range(200, 212))
    cache.store("a", "u1", other, *kv(12))  # 36 tokens stored, under 40
    assert len(cache) == 2
    assert cache.lookup("a", "u1", turn2, max_length=23).length == 23  # turn 2 is now the most recent
    cache.store("a", "u1", list(range(300, 312)), *kv(12))  # 48 > 40: the least recent (other) goes
    assert cache.lookup("a", "u1", other, max_length=11) is None
    assert cache.lookup("a", "u1", turn2, max_length=23) is not None
    assert cache.bytes <= 40 * per_token and cache.stats.evicted == 1


def test_disabled_cache_stores_nothing():
    cache = PrefixCache(0)
    assert not cache.store("a", None, list(range(64)), *kv(64))
    assert cache.lookup("a", None, list(range(64)), max_length=63) is None
