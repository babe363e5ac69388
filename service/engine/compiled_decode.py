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
- **Compiled beside serving, never on a user's request**: ``warm`` traces the graphs (with and
  without LoRA) on a scratch twin of the runner (the same weights, a KV cache and LoRA buffers of
  its own), so the server compiles in a background thread while the engine serves eagerly on the
  live runner, pausing whenever the engine has work (``_compile_beside_serving``): 5-11 minutes on 2
  cores the first time (~20 s at a restart: ``build_engine`` keeps inductor's cache in the data
  dir), and the step is handed to the runner when it is ready. The
  graph is compiled from the unbound ``LlamaRunner.decode_pure``, so the runner is an argument and
  the guards check its tensors' shapes, not which runner it is. After that the calls run under
  torch.compiler's ``fail_on_recompile`` stance, and a step whose guards do not hold (a base of
  another shape, say) runs the eager step instead, counted in ``fallbacks``, rather than stalling a
  stream for minutes of compilation.

16-bit serving only, like int8 decode: float32 stays the exact reference of Hugging Face's forward.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import torch

from service.engine.runner import LlamaRunner

logger = logging.getLogger(__name__)

WARM_PROMPT = list(range(100, 116))  # token ids the warm-up decodes after (any ids: only shapes are traced)
WARM_RANK = 2  # the warm-up's LoRA rank; 1 would make a dimension of size 1, which torch.compile specialises
PAUSE_POLL_S = 0.02  # a background compilation paused for the engine looks again this often
MAX_FALLBACKS_IN_A_ROW = 8  # then the step is off until restart: each refusal builds torch's guard report, which costs


class CompiledDecode:
    """The compiled pure step for decode passes of at most ``rows`` rows of ``runner``."""

    def __init__(self, runner: LlamaRunner, *, rows: int = 1) -> None:
        if runner.dtype == torch.float32:
            raise ValueError("the compiled decode step serves 16-bit dtypes only; float32 stays the exact eager reference")
        self.runner = runner
        self.rows = rows
        self._step = torch.compile(LlamaRunner.decode_pure, fullgraph=True)  # dynamic: only the dims marked in _inputs
        self.state = "new"  # "compiling", then "ready" (the runner uses it) or "failed" (the runner stays eager)
        self.error: str | None = None  # why it failed
        self.warm_seconds = 0.0  # spent compiling, every warm-up together
        self.steps = 0  # decode passes the compiled step ran
        self.fallbacks = 0  # passes it refused (a recompile would have been needed): they ran eagerly
        self._refused_in_a_row = 0
        self.disabled = False  # after MAX_FALLBACKS_IN_A_ROW refusals in a row: the graph no longer fits this runner

    @classmethod
    def attach(cls, runner: LlamaRunner, *, threads: int, int8_rows: tuple[int, ...] = (),
               background: bool = False, pause_while: Callable[[], bool] | None = None) -> "CompiledDecode | None":
        """Compile ``runner``'s step (also for each of ``int8_rows``' widths: the benchmark runs both) and
        have its decode use it once compiled. None, with the reason logged, for float32 (the runner stays
        eager). ``threads``: the engine thread's torch threads (the graph is guarded on the thread count, so
        a warm-up with another one would never be used). ``background``: compile in a thread of its own and
        return at once (the server: it serves eagerly meanwhile; ``state`` says how far it got), pausing
        whenever ``pause_while()`` is true (the engine has work); otherwise compile now, and return None
        where inductor cannot compile (no C++ compiler)."""
        if runner.dtype == torch.float32:
            logger.warning("the compiled decode step serves 16-bit dtypes only; this engine serves float32: eager")
            return None
        compiled = cls(runner)
        widths = tuple(dict.fromkeys((runner.int8_rows, *int8_rows)))
        if background:
            compiled.state = "compiling"  # from now on, though it waits for the engine's idle time
            threading.Thread(target=compiled._compile_beside_serving, args=(widths, threads, pause_while),
                             name="compile-decode", daemon=True).start()
            return compiled
        from service.threads import run_in_thread  # a helper thread: the caller's own OpenMP pool stays untouched

        run_in_thread(lambda: compiled._compile(widths, threads), threads=threads, name="compile-decode")
        return compiled if compiled.state == "ready" else None

    def _compile_beside_serving(self, widths: tuple[int, ...], threads: int,
                                pause_while: Callable[[], bool] | None) -> None:
        """``_compile`` in the engine's idle time. Measured at a first start
        (docs/results/2026-12-06-compile-in-background), a compilation running beside the engine made
        replies wait 42-98 s: tracing is Python that holds the GIL, and the engine thread takes the GIL
        back after each torch op (every op releases it), waiting up to the switch interval each time. So
        at every Python call this thread first waits while ``pause_while()`` holds (a trace function of
        this thread alone; tracing is slower, idle time is free). Its C++ compiles run one at a time, and
        this thread and the compilers it starts run at the lowest priority (nice 19: on Linux a thread has
        its own, and the processes it starts inherit it)."""
        import torch._inductor.config as inductor_config

        if hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except OSError as exc:
                logger.info("could not lower the compiling thread's priority: %s", exc)
        if pause_while is not None:
            def wait_for_idle(frame, event, arg):  # sys.settrace: called at each Python call of this thread
                while pause_while():
                    time.sleep(PAUSE_POLL_S)
                return None  # no line events

            sys.settrace(wait_for_idle)
        try:
            with inductor_config.patch(compile_threads=1):
                self._compile(widths, threads)
        except Exception as exc:  # this thread's error has no caller to reach: logged and shown, and serving stays eager
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("compiling the decode step failed, serving eagerly")
        finally:
            sys.settrace(None)

    def _compile(self, widths: tuple[int, ...], threads: int) -> None:
        """Warm the step for each int8 width with ``threads`` torch threads, then hand it to the runner. Where
        inductor cannot compile (no C++ compiler), that is logged and kept in ``error``, and the runner stays
        eager; any other error is raised."""
        self.state = "compiling"
        torch.set_num_threads(threads)  # the same count as the engine thread's, which the graph is guarded on
        try:
            for rows in widths:
                self.warm(int8_rows=rows)
        except torch._dynamo.exc.TorchDynamoException as exc:  # inductor needs a C++ compiler (gcc) at run time
            self.state, self.error = "failed", str(exc).splitlines()[0]
            logger.warning("could not compile the decode step, serving eagerly: %s", self.error)
            return
        self.state = "ready"
        self.runner.compiled = self

    @staticmethod
    def _inputs(r: LlamaRunner, rows: int, n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n_keys`` positions of the first ``rows`` rows' cache, (L, rows, Hkv, n_keys, hd) each, views
        whose strides are the cache's; their length and the LoRA rank marked dynamic."""
        k_all, v_all = r.k_cache[:, :rows, :, :n_keys], r.v_cache[:, :rows, :, :n_keys]
        for t in (k_all, v_all):
            torch._dynamo.mark_dynamic(t, 3)
        for name, buf in r.lora.items():  # (L, rows, in, k r) and (L, rows, k r, out)
            torch._dynamo.mark_dynamic(buf, 3 if name.startswith("a_") else 2)
        return k_all, v_all

    def _run(self, r: LlamaRunner, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool, n_keys: int) -> torch.Tensor:
        k_all, v_all = self._inputs(r, tokens.shape[0], n_keys)
        logits, k_new, v_new = self._step(r, tokens, positions, k_all, v_all, use_lora)
        r.write_step_kv(positions, k_new, v_new)
        return logits

    def warm(self, int8_rows: int | None = None) -> float:
        """Trace and compile the step with and without LoRA (2-5 minutes for the embedded model on 2 cores) on a
        scratch twin of the runner, never on the runner's own rows, so the runner may serve meanwhile.
        ``int8_rows``: the twin's int8 width (default the runner's). Returns the seconds it took."""
        r = self.runner.scratch(capacity=2 * len(WARM_PROMPT))
        if int8_rows is not None:
            r.int8_rows = int8_rows
        t0 = time.perf_counter()
        with torch.inference_mode():  # as the engine loop runs: its buffers are inference tensors, which guards tell apart
            r.ensure_rank(WARM_RANK)  # LoRA buffers exist (zeros), so the LoRA graph has them to trace
            for use_lora in (False, True):
                r.extend([WARM_PROMPT], [0], 0, use_lora)
                for i in range(2):
                    tokens = torch.tensor([WARM_PROMPT[-1]] * self.rows, device=r.device)
                    positions = torch.full((self.rows,), len(WARM_PROMPT) + i, device=r.device)
                    r.set_step_rows(self.rows)  # as ``decode`` does
                    self._run(r, tokens, positions, use_lora, len(WARM_PROMPT) + i + 1)
        seconds = time.perf_counter() - t0
        self.warm_seconds += seconds
        logger.info("compiled the %d-row decode step (int8 up to %d rows) in %.1f s", self.rows, r.int8_rows, seconds)
        return seconds

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool, n_keys: int) -> torch.Tensor | None:
        """The step's logits (B, V) with the cache written, or None when the compiled graph does not fit (run eagerly).
        ``n_keys``: one more than the largest of ``positions`` (the cache holds at least that many)."""
        if self.disabled:
            return None
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                logits = self._run(self.runner, tokens, positions, use_lora, n_keys)
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

    def stats(self) -> dict[str, float | int | bool | str | None]:
        return {"state": self.state, "error": self.error, "rows": self.rows, "warm_seconds": round(self.warm_seconds, 1),
                "steps": self.steps, "fallbacks": self.fallbacks, "disabled": self.disabled}
