"""Weight-only int8 for small decode steps (ASSISTANT_INT8_DECODE_ROWS): half the bytes per token for one stream,
the 16-bit weights everywhere else, float32 untouched."""

from __future__ import annotations

import torch

from service.engine.dtype_probe import PROBE_PROMPTS, _greedy, _greedy_logprobs, _prompt_ids, choose_int8_rows, float32_reference
from service.engine.runner import LlamaRunner, _Int8

LOGPROB_TOLERANCE = 0.5  # the largest |log p| change of a float32 greedy token stated for int8 (README)


def test_int8_rounds_each_weight_to_the_nearest_step_of_its_rows_scale():
    w = torch.tensor([[0.5, -1.27, 0.0], [2.54, 0.015, -0.02]])  # 0.015 / 0.02 = 0.75 steps: 1
    c = _Int8.of(w)
    assert torch.allclose(c.s, torch.tensor([1.27 / 127, 2.54 / 127]))
    assert c.q.tolist() == [[50, -127, 0], [127, 1, -1]]
    assert (c.q.float() * c.s[:, None] - w).abs().max() <= c.s.max() / 2 + 1e-7


def test_one_row_on_int8_stays_close_to_float32_and_wider_steps_keep_the_dense_weights(base_model, prompts):
    with torch.inference_mode():
        ref = LlamaRunner(base_model, max_rows=4, dtype=torch.float32, initial_capacity=64)
        bf16 = LlamaRunner(base_model, max_rows=4, dtype=torch.bfloat16, initial_capacity=64)
        int8 = LlamaRunner(base_model, max_rows=4, dtype=torch.bfloat16, initial_capacity=64, int8_rows=1)
        want = _greedy(ref, prompts[0], 8)
        drift = [abs(a - b) for a, b in zip(_greedy_logprobs(int8, prompts[0], want), _greedy_logprobs(ref, prompts[0], want))]
        assert max(drift) < LOGPROB_TOLERANCE, drift
        # two rows: wider than int8_rows, so exactly the bfloat16 runner's logits
        logits = []
        for runner in (bf16, int8):
            runner.extend([prompts[0], prompts[1]], [0, 0], first_row=0, use_lora=False)
            logits.append(runner.decode(torch.tensor([5, 7]), torch.tensor([len(prompts[0]), len(prompts[1])]), use_lora=False))
        assert torch.equal(logits[0], logits[1])
        # ...while one row differs from bfloat16 (the int8 weights are really used)
        one = [r.decode(torch.tensor([5]), torch.tensor([len(prompts[0]) + 1]), use_lora=False) for r in (bf16, int8)]
        assert not torch.equal(one[0], one[1])
        assert int8.weight_bytes()["int8_copies"] < bf16.weight_bytes()["weights"] * 0.6
        # float32 serving never quantises: it stays the exact reference
        assert LlamaRunner(base_model, max_rows=1, dtype=torch.float32, initial_capacity=64, int8_rows=4).int8_rows == 0


def test_the_int8_probe_reports_its_timings_agreement_and_drift(base_model, tokenizer):
    report = choose_int8_rows(base_model, tokenizer, torch.bfloat16, candidates=(1, 2), steps=1, agree_tokens=4)
    assert set(report.decode_ms) == {"1", "2"} and all(v["dense"] > 0 and v["int8"] > 0 for v in report.decode_ms.values())
    assert report.agreement is not None and report.logprob_drift is not None and report.reason
    fast = [r for r in (1, 2) if report.decode_ms[str(r)]["dense"] / report.decode_ms[str(r)]["int8"] >= 1.1]
    assert report.rows == (max(fast) if fast and report.agreement >= 2 / 3 else 0)
    assert choose_int8_rows(base_model, tokenizer, torch.float32).rows == 0  # 16-bit serving only



def test_the_int8_probe_reuses_the_dtype_probes_float32_reference(base_model, tokenizer):
    prompts = [_prompt_ids(tokenizer, p) for p in PROBE_PROMPTS]
    with torch.inference_mode():
        runner = LlamaRunner(base_model, max_rows=1, dtype=torch.float32, initial_capacity=64)
        reference = float32_reference(runner, prompts, 4)
        assert reference.logprobs == [_greedy_logprobs(runner, p, t) for p, t in zip(prompts, reference.tokens)]
    # the probe measured against the given reference reads what it reads when it runs float32 itself
    given = choose_int8_rows(base_model, tokenizer, torch.bfloat16, reference=reference, candidates=(1,), steps=1, agree_tokens=4)
    fresh = choose_int8_rows(base_model, tokenizer, torch.bfloat16, candidates=(1,), steps=1, agree_tokens=4)
    assert (given.agreement, given.logprob_drift) == (fresh.agreement, fresh.logprob_drift)
