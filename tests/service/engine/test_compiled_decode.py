"""The compiled one-row decode step (ASSISTANT_COMPILE_DECODE): the eager step's tokens, one graph for every
length and adapter rank, and the eager step whenever the graph does not fit.

A two-layer Llama keeps inductor's compilation to seconds; the embedded model's agreement is measured by
``assistant bench serve --compile-decode`` (docs/results/2026-12-06-compiled-decode)."""

from __future__ import annotations

import pytest
import torch

from service.engine.adapter_cache import LoraWeights
from service.engine.compiled_decode import MAX_FALLBACKS_IN_A_ROW, CompiledDecode
from service.engine.runner import LlamaRunner

PROMPT = [3, 17, 42, 9, 77, 5, 61, 23]


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=512,
                      initializer_range=0.2)  # logits spread over several units, so a wrong step shows
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """torch.compile keeps graphs per code object, so every runner in a process shares decode_pure's: each test
    starts from none (a server has one runner)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _adapter(runner: LlamaRunner, rank: int) -> LoraWeights:
    g = torch.Generator().manual_seed(rank)
    out = {"q_proj": runner.d_q, "k_proj": runner.d_kv, "v_proj": runner.d_kv, "o_proj": runner.d_model,
           "gate_proj": runner.d_ff, "up_proj": runner.d_ff, "down_proj": runner.d_model}
    inp = {"o_proj": runner.d_q, "down_proj": runner.d_ff}
    a = {m: torch.randn(runner.n_layers, inp.get(m, runner.d_model), rank, generator=g) * 0.3 for m in out}
    b = {m: torch.randn(runner.n_layers, rank, out[m], generator=g) * 0.3 for m in out}
    return LoraWeights(key=f"r{rank}", rank=rank, a=a, b=b)


def _greedy(runner: LlamaRunner, steps: int, adapter: LoraWeights | None,
            forced: list[int] | None = None) -> tuple[list[int], list[torch.Tensor]]:
    """Prefill PROMPT on row 0, then ``steps`` one-row decode steps, greedy or feeding ``forced``'s tokens:
    the tokens fed and each step's logits."""
    with torch.inference_mode():
        if adapter is not None:
            runner.ensure_rank(adapter.rank)
        runner.set_row_adapter(0, adapter)
        use_lora = adapter is not None
        tok = int(runner.extend([PROMPT], [0], 0, use_lora)[0].argmax())
        tokens, logits = [tok], []
        for i in range(steps):
            tok = tokens[-1] if forced is None else forced[i]
            out = runner.decode(torch.tensor([tok]), torch.tensor([len(PROMPT) + i]), use_lora)
            logits.append(out[0].float())
            tokens.append(int(out[0].argmax()))
        return tokens, logits


def _error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """The largest logit error over the steps, as a share of the reference step's logit range."""
    assert len(got) == len(want)
    return max(float((a - b).abs().max()) / float(b.max() - b.min()) for a, b in zip(got, want))


def test_the_pure_step_is_the_eager_step(tiny_model):
    """decode_pure + write_step_kv, run eagerly, give the eager decode's logits and cache (16-bit rounding apart)."""
    eager = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=64)
    pure = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=64)
    with torch.inference_mode():
        for r in (eager, pure):
            r.extend([PROMPT, PROMPT[:5]], [0, 0], 0, False)
        tokens, positions = torch.tensor([7, 11]), torch.tensor([len(PROMPT), 5])
        want = eager.decode(tokens, positions, False).float()
        logits, k_new, v_new = pure.decode_pure(tokens, positions, pure.k_cache[:, :2], pure.v_cache[:, :2], False)
        pure.write_step_kv(positions, k_new, v_new)
    assert (logits.float() - want).abs().max() < 0.05 * want.abs().max()
    assert torch.equal(logits.argmax(-1), want.argmax(-1))
    for row, p in enumerate(positions.tolist()):  # the step's keys and values landed where the eager step puts them:
        for cache in ("k_cache", "v_cache"):  # layer 0's exactly; later layers' after a 16-bit rounding apart
            mine, theirs = getattr(pure, cache)[:, row, :, p].float(), getattr(eager, cache)[:, row, :, p].float()
            assert torch.equal(mine[0], theirs[0])
            assert (mine - theirs).abs().max() < 0.02 * theirs.abs().max()


def test_compiled_one_row_decode_is_as_close_to_float32_as_the_eager_step_across_lengths_and_ranks(tiny_model):
    """Fed float32's greedy tokens, the compiled step's logits are as close to float32's as the eager 16-bit step's
    (inductor rounds at other places, so not bit-equal); a wrong mask, key or cache write is off by whole units."""
    reference = LlamaRunner(tiny_model, max_rows=2, dtype=torch.float32, initial_capacity=32)
    eager = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    fast = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    fast.compiled = CompiledDecode(fast)
    assert fast.compiled.warm() > 0
    steps = 40  # past the first capacity (32): the cache grows and the same graph keeps serving
    for adapter in (None, _adapter(fast, 4), _adapter(fast, 8)):  # ranks the warm-up (2) never saw
        want, want_logits = _greedy(reference, steps, adapter)
        eager_error = _error(_greedy(eager, steps, adapter, forced=want)[1], want_logits)
        fast_error = _error(_greedy(fast, steps, adapter, forced=want)[1], want_logits)
        assert fast_error < max(2 * eager_error, 0.02), (fast_error, eager_error)
        assert fast_error < 0.1
    assert fast.capacity > 32
    assert fast.compiled.stats()["steps"] == 3 * steps and fast.compiled.fallbacks == 0


def test_a_pass_the_graph_does_not_fit_runs_eagerly_and_is_counted(tiny_model):
    runner = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32, int8_rows=1)
    runner.compiled = CompiledDecode(runner)
    runner.compiled.warm()  # traced on the int8 weights
    reference = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    runner.int8_rows = 0  # now one row multiplies the dense weights: another graph, which is never compiled mid-serving
    want, want_logits = _greedy(reference, 4, None)
    assert _error(_greedy(runner, 4, None, forced=want)[1], want_logits) == 0.0  # the eager step: exactly the reference
    assert runner.compiled.fallbacks == 4 and runner.compiled.steps == 0
    last = len(PROMPT) + 3  # the eager steps wrote the cache as the reference did
    assert torch.equal(runner.k_cache[:, 0, :, :last + 1], reference.k_cache[:, 0, :, :last + 1])
    # a graph that keeps not fitting is given up (each refusal costs torch a guard report)
    _greedy(runner, MAX_FALLBACKS_IN_A_ROW, None)
    assert runner.compiled.disabled and runner.compiled.stats()["disabled"]
    refused = runner.compiled.fallbacks
    _greedy(runner, 2, None)
    assert runner.compiled.fallbacks == refused  # no longer even tried


def test_float32_is_never_compiled(tiny_model):
    runner = LlamaRunner(tiny_model, max_rows=1, dtype=torch.float32, initial_capacity=32)
    with pytest.raises(ValueError, match="16-bit"):
        CompiledDecode(runner)
    assert CompiledDecode.attach(runner, threads=1) is None and runner.compiled is None  # the server starts, eager


def test_attach_compiles_before_serving_and_the_runner_uses_it(tiny_model):
    runner = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    compiled = CompiledDecode.attach(runner, threads=torch.get_num_threads())  # the graph is guarded on the thread count
    assert compiled is not None and runner.compiled is compiled and compiled.warm_seconds > 0
    before = compiled.steps
    _greedy(runner, 3, None)
    assert compiled.steps == before + 3 and compiled.fallbacks == 0
    with torch.inference_mode():  # two rows: wider than the compiled step, so eager
        runner.extend([PROMPT, PROMPT], [0, 0], 0, False)
        runner.decode(torch.tensor([1, 2]), torch.tensor([len(PROMPT)] * 2), False)
    assert compiled.steps == before + 3
    runner.load_weights(tiny_model)  # a new base of the same shape (the safety stage's swap): the same graph serves it
    _greedy(runner, 3, None)
    assert compiled.steps == before + 6 and compiled.fallbacks == 0


def test_a_background_compile_waits_while_the_engine_serves_and_hands_the_step_over_when_ready(tiny_model):
    """The server's way (ASSISTANT_COMPILE_DECODE): the step compiles in a thread of its own, on a scratch twin, and
    pauses while the engine has work; the serving runner's rows hold exactly what an untouched runner's hold, and
    once the step is ready the runner's one-row steps run it."""
    import threading
    import time

    runner = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    reference = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    serving = threading.Event()
    serving.set()
    compiled = CompiledDecode.attach(runner, threads=torch.get_num_threads(), background=True, pause_while=serving.is_set)
    assert compiled is not None
    adapter = _adapter(runner, 4)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:  # longer than the whole compilation takes unpaused (~3 s)
        want, want_logits = _greedy(reference, 6, adapter)
        got, got_logits = _greedy(runner, 6, adapter, forced=want)
        assert _error(got_logits, want_logits) == 0.0  # the eager step, on rows the compilation never wrote
        assert compiled.state == "compiling" and runner.compiled is None  # paused while we serve
    serving.clear()  # idle: it goes on
    while compiled.state == "compiling" and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    assert compiled.state == "ready", compiled.error
    assert runner.compiled is compiled and compiled.stats()["state"] == "ready"
    _greedy(runner, 5, adapter)
    assert compiled.steps == 5 and compiled.fallbacks == 0  # traced on the twin, it fits the serving runner


def test_a_background_compile_that_fails_leaves_the_runner_eager_and_says_why(tiny_model, monkeypatch):
    import time

    def broken(self, int8_rows=None):
        raise RuntimeError("out of disk for inductor's cache")

    monkeypatch.setattr(CompiledDecode, "warm", broken)
    runner = LlamaRunner(tiny_model, max_rows=2, dtype=torch.bfloat16, initial_capacity=32)
    compiled = CompiledDecode.attach(runner, threads=torch.get_num_threads(), background=True, pause_while=lambda: False)
    assert compiled is not None
    t0 = time.monotonic()
    while compiled.state == "compiling" and time.monotonic() - t0 < 30:
        time.sleep(0.01)
    assert compiled.stats()["state"] == "failed" and "out of disk" in compiled.stats()["error"]
    assert runner.compiled is None  # the server goes on serving eagerly
    with pytest.raises(RuntimeError, match="out of disk"):  # compiling in the caller's time: the error reaches it
        CompiledDecode.attach(runner, threads=torch.get_num_threads())
