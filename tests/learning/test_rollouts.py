"""The batched rollout engine draws the same kind of ``Samples`` as HF ``generate``, from the adapter
being trained: layout and masks, grouping, and greedy replies equal to the PEFT model's."""

import pytest
import torch

from learning.policy import forward_logprobs, make_policy, sample
from learning.rollouts import EngineSampler

from tests.learning.test_ppo import BUDGETS, PROMPTS, tiny  # noqa: F401  (fixture)


def _perturb(policy, scale: float = 0.5) -> None:
    """Give the fresh adapter (B = 0) weights, so sampling with and without it differs."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_engine_samples_have_the_layout_sample_returns(tiny):  # noqa: F811
    model, tok = tiny
    sampler = EngineSampler(model, tok, dtype=torch.float32, max_rows=4)  # before PEFT wraps the base
    policy = make_policy(model, BUDGETS)
    s = sampler(policy, tok, PROMPTS, BUDGETS, seed=1, per_prompt=3)
    B, T = 6, s.response_mask.shape[1]
    assert s.query_responses.shape == (B, s.prompt_len + T) and T <= BUDGETS.ppo_max_new_tokens
    assert s.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    replies = s.query_responses[:, s.prompt_len:]
    for i in range(B):
        n = int(s.response_mask[i].sum())
        assert s.response_mask[i, :n].eq(1).all() and s.response_mask[i, n:].eq(0).all()
        if bool(s.finished[i]):
            assert int(replies[i, n - 1]) == tok.eos_token_id
        else:
            assert n == BUDGETS.ppo_max_new_tokens
    assert s.attention_mask[:, s.prompt_len:].float().eq(s.response_mask).all()
    assert (forward_logprobs(policy, s, BUDGETS.ppo_temperature)[0] <= 0).all()
    again = sampler(policy, tok, PROMPTS, BUDGETS, seed=1, per_prompt=3)
    assert torch.equal(again.query_responses, s.query_responses)  # one seed, one draw


def test_engine_samples_follow_the_adapter_being_trained(tiny):  # noqa: F811
    model, tok = tiny
    sampler = EngineSampler(model, tok, dtype=torch.float32, max_rows=4)
    policy = make_policy(model, BUDGETS)
    _perturb(policy)
    greedy = 1e-6  # temperature this low is argmax
    mine = sampler(policy, tok, PROMPTS, BUDGETS, seed=0, temperature=greedy)
    theirs = sample(policy, tok, PROMPTS, BUDGETS, seed=0, temperature=greedy)
    base = sampler(policy, tok, PROMPTS, BUDGETS, seed=0, temperature=greedy, reference=True)
    assert mine.texts == theirs.texts  # the adapter, folded into the engine's weights, as PEFT computes it
    assert base.texts != mine.texts  # and the reference really is the base
    # the engine's own weights are restored after the call: the base model's greedy replies again
    assert sampler(policy, tok, PROMPTS, BUDGETS, seed=0, temperature=greedy, reference=True).texts == base.texts


def test_rollout_benchmark_command_prints_both_samplers_and_their_ratio(model_data_dir):
    """`assistant bench rollouts` on the real model, at smoke size: both rates, the ratio, the one-stream speed."""
    from learning.rollouts_bench import run
    from service.settings import Settings

    result = run(Settings(data_dir=model_data_dir, dev_mode=True, dtype="float32"), prompts=2, max_new_tokens=4, rank=4,
                 repeats=1)
    assert result["engine"] == "batched" and result["engine_dtype"] == "float32"
    assert result["hf_generate_tok_s"] > 0 and result["batched_engine_tok_s"] > 0 and result["one_stream_tok_s"] > 0
    assert result["speedup"] == pytest.approx(result["batched_engine_tok_s"] / result["hf_generate_tok_s"], rel=0.05)
