"""A compiled one-row decode step: ``torch.compile`` of ``LlamaRunner.decode_pure`` (issue 30).

One stream's decode step was profiled (docs/results/2026-12-06-decode-profile): about half of it is
the int8 matmuls, and about a third is ~6,900 small aten calls per token (views, casts, the RMS
norms' and RoPE's pointwise ops), each a Python dispatch that llama.cpp's step does not have.
Inductor fuses those into a few C++ loops; the matmuls stay calls into torch's kernels.

What makes it compile to something fast (each measured in docs/results/2026-12-06-compiled-decode):

- **No host reads**: ``decode_pure`` takes the cache's first S positions as a view (S: the longest
  row's length, known on the host before the step) and masks each row's later ones, so no
  ``int(positions.max())`` breaks the graph. S and the LoRA buffers' rank are marked dynamic, so
  one graph serves every length, every cache growth and every adapter rank.
- **No writes into the cache inside the graph**: a compiled graph that writes into the KV cache
  copied the cache whole, every step (500 ms a step). The step returns its keys and values and the
  runner writes them after, one indexed copy for all layers.
- **Compiled at start, never on a user's request**: ``warm`` traces the graphs (with and without
  LoRA) before the engine serves: 2-5 minutes on 2 cores the first time, which is why it is off by
  default (~25 s at a restart: ``build_engine`` keeps inductor's cache in the data dir). After
  that the calls run under torch.compiler's ``fail_on_recompile`` stance, and a step whose guards do
  not hold (a base of another shape, say) runs the eager step instead, counted in ``fallbacks``,
  rather than stalling a stream for minutes of compilation.

16-bit serving only, like int8 decode: float32 stays the exact reference of Hugging Face's forward.
"""

from __future__ import annotations

import logging
import time

import torch

from service.engine.runner import LlamaRunner

logger = logging.getLogger(__name__)

WARM_PROMPT = list(range(100, 116))  # token ids the warm-up decodes after (any ids: only shapes are traced)
WARM_RANK = 2  # the warm-up's LoRA rank; 1 would make a dimension of size 1, which torch.compile specialises
MAX_FALLBACKS_IN_A_ROW = 8  # then the step is off until restart: each refusal builds torch's guard report, which costs


class CompiledDecode:
    """The compiled pure step for decode passes of at most ``rows`` rows of ``runner``."""

    def __init__(self, runner: LlamaRunner, *, rows: int = 1) -> None:
        if runner.dtype == torch.float32:
            raise ValueError("the compiled decode step serves 16-bit dtypes only; float32 stays the exact eager reference")
        self.runner = runner
        self.rows = rows
        self._step = torch.compile(runner.decode_pure, fullgraph=True)  # dynamic: only the dims marked in _inputs
        self.warm_seconds = 0.0  # spent compiling, every warm-up together
        self.steps = 0  # decode passes the compiled step ran
        self.fallbacks = 0  # passes it refused (a recompile would have been needed): they ran eagerly
        self._refused_in_a_row = 0
        self.disabled = False  # after MAX_FALLBACKS_IN_A_ROW refusals in a row: the graph no longer fits this runner

    @classmethod
    def attach(cls, runner: LlamaRunner, *, threads: int, int8_rows: tuple[int, ...] = ()) -> "CompiledDecode | None":
        """Compile ``runner``'s step (also for each of ``int8_rows``' widths: the benchmark runs both) and
        have its decode use it; None, with the reason logged, where it does not compile (float32, or no C++
        compiler for inductor): the runner stays eager. ``threads``: the engine thread's torch threads (the
        graph is guarded on the thread count, so a warm-up with another one would never be used)."""
        from service.threads import run_in_thread

        if runner.dtype == torch.float32:
            logger.warning("the compiled decode step serves 16-bit dtypes only; this engine serves float32: eager")
            return None
        compiled = cls(runner)
        served = runner.int8_rows
        try:
            for rows in dict.fromkeys((served, *int8_rows)):
                runner.int8_rows = rows
                run_in_thread(compiled.warm, threads=threads, name="compile-decode")
        except torch._dynamo.exc.TorchDynamoException as exc:  # inductor needs a C++ compiler (gcc) at run time
            logger.warning("could not compile the decode step, serving eagerly: %s", str(exc).splitlines()[0])
            return None
        finally:
            runner.int8_rows = served
        runner.compiled = compiled
        return compiled

    def _inputs(self, rows: int, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n_keys`` positions of the first ``rows`` rows' cache, (L, rows, Hkv, n_keys, hd) each, views
        whose strides are the cache's; their length and the LoRA rank marked dynamic."""
        r = self.runner
        k_all, v_all = r.k_cache[:, :rows, :, :n_keys], r.v_cache[:, :rows, :, :n_keys]
        for t in (k_all, v_all):
            torch._dynamo.mark_dynamic(t, 3)
        for name, buf in r.lora.items():  # (L, rows, in, k r) and (L, rows, k r, out)
            torch._dynamo.mark_dynamic(buf, 3 if name.startswith("a_") else 2)
        return k_all, v_all

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool, n_keys: int) -> torch.Tensor:
        k_all, v_all = self._inputs(tokens.shape[0], n_keys)
        logits, k_new, v_new = self._step(tokens, positions, k_all, v_all, use_lora)
        self.runner.write_step_kv(positions, k_new, v_new)
        return logits

    def warm(self) -> float:
        """Trace and compile the step with and without LoRA (2-5 minutes for the embedded model on 2 cores), on
        row 0 of an idle runner. Returns the seconds it took."""
        r = self.runner
        t0 = time.perf_counter()
        with torch.inference_mode():  # as the engine loop runs: its buffers are inference tensors, which guards tell apart
            r.ensure_rank(WARM_RANK)  # LoRA buffers exist (zeros), so the LoRA graph has them to trace
            for use_lora in (False, True):
                r.extend([WARM_PROMPT], [0], 0, use_lora)
                for i in range(2):
                    tokens = torch.tensor([WARM_PROMPT[-1]] * self.rows, device=r.device)
                    positions = torch.full((self.rows,), len(WARM_PROMPT) + i, device=r.device)
                    r._int8_now = self.rows <= r.int8_rows
                    self._run(tokens, positions, use_lora, len(WARM_PROMPT) + i + 1)
        seconds = time.perf_counter() - t0
        self.warm_seconds += seconds
        logger.info("compiled the %d-row decode step in %.1f s", self.rows, seconds)
        return seconds

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool, n_keys: int) -> torch.Tensor | None:
        """The step's logits (B, V) with the cache written, or None when the compiled graph does not fit (run eagerly).
        ``n_keys``: one more than the largest of ``positions`` (the cache holds at least that many)."""
        if self.disabled:
            return None
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                logits = self._run(tokens, positions, use_lora, n_keys)
        except RuntimeError as exc:
            if "fail_on_recompile" not in str(exc):
                raise
            self.fallbacks += 1
            self._refused_in_a_row += 1
            if self.fallbacks == 1:
                logger.warning("the compiled decode step does not fit this pass (%s); such passes run eagerly", exc)
            if self._refused_in_a_row >= MAX_FALLBACKS_IN_A_ROW:
                self.disabled = True
                logger.warning("the compiled decode step did not fit %d passes in a row: off until the server restarts",
                               self._refused_in_a_row)
            return None
        self._refused_in_a_row = 0
        self.steps += 1
        return logits

    def stats(self) -> dict[str, float | int | bool]:
        return {"rows": self.rows, "warm_seconds": round(self.warm_seconds, 1), "steps": self.steps,
                "fallbacks": self.fallbacks, "disabled": self.disabled}
