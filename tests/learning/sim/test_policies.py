"""The evaluation's sampling on the real model: per-row seeds give common random numbers, the base's
replies come back from the disk cache unchanged, and the batched KL matches one sequence at a time."""

from __future__ import annotations

import pytest
import torch

from learning.sim.evaluate import EvalConfig
from learning.sim.policies import BaseReplyCache, PolicyBank, row_seed

PROMPTS = ["Name a fruit.", "Say something about the sea.", "Give me a tip for sleeping well."]


def test_row_seeds_are_stable_and_distinct():
    assert row_seed("policy-0", "Hi", 0) == row_seed("policy-0", "Hi", 0)
    seeds = {row_seed(s, p, j) for s in ("policy-0", "base-0") for p in ("Hi", "Hello") for j in range(3)}
    assert len(seeds) == 12 and all(0 <= x < 2**63 for x in seeds)


def test_base_reply_cache_round_trip(tmp_path):
    key = {"base": "abc", "temperature": 0.7}
    cache = BaseReplyCache(tmp_path, key)
    assert cache.get(7) is None
    cache.put(7, "hello")
    cache.save()
    again = BaseReplyCache(tmp_path, key)
    assert again.get(7) == "hello" and (again.hits, again.misses) == (1, 0)
    assert BaseReplyCache(tmp_path, {**key, "temperature": 0.0}).get(7) is None  # another setting, another file


@pytest.fixture(scope="module")
def bank(tmp_path_factory, model_data_dir):
    from peft import LoraConfig, get_peft_model

    from service.model_loading import load_base_model
    from service.settings import Settings

    settings = Settings(data_dir=model_data_dir, dev_mode=True, dtype="float32")
    tmp = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    zero = get_peft_model(load_base_model(settings), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    zero.save_pretrained(tmp / "zero")  # LoRA's B starts at zero: the base model exactly
    moved = get_peft_model(load_base_model(settings), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    moved.save_pretrained(tmp / "moved")
    b = PolicyBank(settings, EvalConfig(max_new_tokens=12, temperature=0.9, batch_size=8))
    b.add("zero", tmp / "zero")
    b.add("moved", tmp / "moved")
    return b


def test_seeded_samples_repeat_and_a_zero_adapter_draws_the_bases_replies(bank, tmp_path):
    first = bank.sample(None, PROMPTS, 2, "policy-0")
    assert bank.sample(None, PROMPTS, 2, "policy-0").texts == first.texts  # the same seeds, the same replies
    assert any(a != b for a, b in first.texts)  # two samples of a prompt differ
    # common random numbers: a policy that is the base answers with the base's very replies
    assert bank.sample("zero", PROMPTS, 2, "policy-0").texts == first.texts
    assert bank.sample(None, PROMPTS, 2, "base-0").texts != first.texts  # another seed set, other replies

    cache = BaseReplyCache(tmp_path, {"k": 1})
    drawn = bank.sample(None, PROMPTS, 2, "base-0", cache)
    assert (cache.hits, cache.misses) == (0, 6)
    assert bank.sample(None, PROMPTS, 2, "base-0", cache).texts == drawn.texts and cache.hits == 6


def test_batched_kl_matches_one_sequence_at_a_time(bank):
    pool = bank.sample("moved", PROMPTS, 2, "policy-0")
    seqs = [s for per in pool.sequences for s in per]
    plens = [n for n in pool.prompt_lens for _ in range(2)]
    one = bank.kl_to_base_batched("moved", seqs, plens, batch_size=1)
    assert one > 1e-4
    assert bank.kl_to_base_batched("moved", seqs, plens, batch_size=4) == pytest.approx(one, rel=1e-3)
    assert bank.kl_to_base_batched("zero", seqs, plens) == pytest.approx(0.0, abs=1e-6)


def test_best_of_one_whole_reply_is_the_plain_sample_and_best_of_n_follows_the_reward(bank):
    """The evaluation drives the server's chooser (service.best_of_n): best-of-1 over whole replies
    starts from the same row seed, so it is ``sample``'s reply; with n = 3 the reward decides."""
    never = lambda texts: [False] * len(texts)  # noqa: E731
    plain = bank.sample("moved", PROMPTS, 2, "policy-0")
    one, records = bank.sample_best_of("moved", PROMPTS, 2, "policy-0", n=1, block=0,
                                       score=lambda p, ts: [0.0] * len(ts), harmful=never)
    assert one.texts == plain.texts and all(r["choices"] == [0] for r in records)
    longest, records = bank.sample_best_of("moved", PROMPTS, 2, "policy-0", n=3, block=0,
                                           score=lambda p, ts: [len(t) for t in ts], harmful=never)
    shortest, _ = bank.sample_best_of("moved", PROMPTS, 2, "policy-0", n=3, block=0,
                                      score=lambda p, ts: [-len(t) for t in ts], harmful=never)
    flat = lambda pool: [t for per in pool.texts for t in per]  # noqa: E731
    assert all(len(a) >= len(b) for a, b in zip(flat(longest), flat(plain)))
    assert sum(map(len, flat(longest))) > sum(map(len, flat(shortest)))
    blockwise, records = bank.sample_best_of("moved", PROMPTS, 1, "policy-0", n=2, block=4,
                                             score=lambda p, ts: [len(t) for t in ts], harmful=never)
    assert all(1 <= len(r["choices"]) <= 3 for r in records)  # 12 tokens in blocks of 4, or fewer when a reply ends
    assert any(len(r["choices"]) == 3 for r in records)
