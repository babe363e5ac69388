"""The batched engine: continuous batching with a different LoRA adapter per row.

One engine thread runs ``step()`` in a loop (vLLM's ``EngineCore.step()``), which only
orchestrates:

1. schedule (``Scheduler``): drop cancelled rows, admit waiting requests into free rows
   (a request whose adapter is still loading keeps its place and is admitted at a later
   step; a prompt whose prefix is in the prefix cache starts from there), prefetch
   adapters for the requests behind them;
2. prefill (``LlamaRunner.extend``): one pass over the next chunk of the prefilling
   rows' prompts, at most ``prefill_chunk_tokens`` tokens; rows whose prompt is complete
   sample their first token and decode from the next step;
3. decode: one pass over the decoding rows, one token each;
4. sample (``sample_batch``: penalties, temperature, top-p for the whole batch at once),
   emit text deltas, end rows on EOS or ``max_new_tokens``;
5. retire: ended rows leave, their caches go to the prefix cache, and the rows are
   compacted so each pass covers a contiguous range of buffer rows.

Prefill is its own pass (not merged with decode) because a chunk is many tokens per row
and decode is one: a merged pass would pad every decode row to the chunk length or need
a ragged attention kernel. Chunking bounds what a long prompt costs the decoding rows.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from service.engine.adapter_cache import AdapterCache, load_lora
from service.engine.base import EndEvent, GenerationRequest, RequestStream, TokenEvent
from service.engine.prefix_cache import PrefixCache
from service.engine.runner import DecodeStep, LlamaRunner, UnsupportedModel, resolve_dtype
from service.engine.sampling import BatchSampling, sample_batch, stop_token_ids, token_logprobs
from service.engine.scheduler import Counters, Row, Scheduler

logger = logging.getLogger(__name__)

__all__ = ["BatchedEngine", "UnsupportedModel"]

REPLACE_WAIT_S = 30.0  # a new base waits at most this long for the engine to fall idle
STALL_S = 2.0  # an engine loop that has not gone round this long is not moving (``needs_cpu``)


class BatchedEngine:
    """Continuous batching with per-row adapters; same interface as ``NaiveEngine``."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        adapter_cache_size: int = 32,
        dtype=None,
        prefill_chunk_tokens: int = 256,
        prefix_cache_bytes: int = 256 * 2**20,
        threads: int | None = None,
        int8_rows: int = 0,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        if adapter_cache_size < max_batch_size:
            logger.warning(
                "adapter_cache_size=%d < max_batch_size=%d: a batch of distinct adapters will wait for room",
                adapter_cache_size, max_batch_size,
            )
        self.model = model
        self.tokenizer = tokenizer
        self.threads = threads  # torch threads of the engine thread (None: leave torch's setting)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.dtype = resolve_dtype(dtype, model)
        self.runner = LlamaRunner(model, max_rows=max_batch_size, dtype=self.dtype, int8_rows=int8_rows)
        self._wake = threading.Event()
        self.adapters = AdapterCache(
            lambda ref: load_lora(ref, num_layers=self.runner.n_layers, dtype=self.runner.lora_dtype),
            capacity=adapter_cache_size,
            on_ready=self._wake.set,
        )
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self._counters = Counters()
        self.scheduler = Scheduler(
            self.runner, self.adapters, self.prefix_cache, tokenizer, max_rows=max_batch_size, max_queue=max_queue,
            chunk_tokens=prefill_chunk_tokens, counters=self._counters,
        )
        self._stop_ids = stop_token_ids(tokenizer, model.config)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.tokens_generated = 0
        self.dtype_report: dict | None = None  # how build_engine chose the dtype (ASSISTANT_DTYPE=auto)
        self.int8_report: dict | None = None  # how build_engine chose the int8 decode width (ASSISTANT_INT8_DECODE_ROWS)
        # the compiled one-row step (ASSISTANT_COMPILE_DECODE), also while it compiles in the background; the runner's
        # decode uses it once it is ready (``runner.compiled``)
        self.compiled_decode: DecodeStep | None = None
        self._loop_at = time.monotonic()  # when the engine loop last went round (``needs_cpu``)
        self.shrink_after_s = 300.0  # idle seconds before a grown KV cache is given back
        self._pending_base = None  # a new base's weights, applied between passes (``replace_base``)
        self._pending_since = 0.0
        self.base_replacements = 0

    # --- public API -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="batched-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for req in self.scheduler.drain_waiting():
            req.stream.put(EndEvent("error", 0, len(req.prompt_ids), error="the engine stopped"))
        for row in self.scheduler.running:
            self.scheduler.finish(row, "error", error="the engine stopped")
        self.scheduler.retire()
        self.adapters.close()

    def submit(self, request: GenerationRequest) -> RequestStream:
        self.scheduler.submit(request)
        self._wake.set()
        return request.stream

    def cancel(self, request_id: str) -> None:
        req = self.scheduler.find(request_id)
        if req is not None:
            req.cancelled.set()
            self._wake.set()

    def evict_adapter(self, key: str) -> None:
        self.adapters.evict(key)
        self.prefix_cache.drop_adapter(key)

    def replace_base(self, model) -> None:
        """Serve ``model``'s weights (the same architecture: the safe base, ``learning.safety``) from the
        next moment no row is generating, or within ``REPLACE_WAIT_S`` under constant load. The prefix
        cache, computed under the old weights, is emptied then."""
        self._pending_since = time.monotonic()
        self._pending_base = model
        self._wake.set()

    def _apply_pending_base(self) -> None:
        model, self._pending_base = self._pending_base, None
        self.runner.load_weights(model)
        self.prefix_cache.clear()
        self.model = model
        self.base_replacements += 1
        logger.info("serving a new base model (replacement %d)", self.base_replacements)

    def needs_cpu(self) -> bool:
        """Rows running or requests waiting, and the loop moving (it went round within the last ``STALL_S``):
        what a background compilation pauses for (``service.engine.compiled_decode``). A loop that stopped
        moving may be waiting on something the paused thread holds, so it is not waited for. Read from any
        thread: a glance, which the engine thread may change next."""
        return bool(self.scheduler.running or self.scheduler.waiting) and time.monotonic() - self._loop_at < STALL_S

    def set_adapter_cache_size(self, capacity: int) -> None:
        self.adapters.set_capacity(capacity)

    def stats(self) -> dict:
        c = self._counters
        cs = self.adapters.stats
        ps = self.prefix_cache.stats
        return {
            "engine": "batched",
            "dtype": str(self.dtype).removeprefix("torch."),
            "dtype_choice": self.dtype_report,
            "int8_decode": self.int8_report,
            "compiled_decode": None if self.compiled_decode is None else self.compiled_decode.stats(),
            "running": len(self.scheduler.running),
            "queued": self.scheduler.queued(),
            "max_batch_size": self.max_batch_size,
            "tokens_generated": self.tokens_generated,
            "steps": c.steps,
            "prefill_passes": c.prefill_passes,
            "prefill_tokens": c.prefill_tokens,
            "prefill_chunk_tokens": self.scheduler.chunk_tokens,
            "decode_passes": c.decode_passes,
            "mean_decode_batch": c.decode_rows / c.decode_passes if c.decode_passes else 0.0,
            "forward_seconds": round(c.forward_seconds, 3),
            "finished": dict(c.finished),
            "adapters": {
                "resident": len(self.adapters), "capacity": self.adapters.capacity,
                "pinned": len(self.adapters.pinned_keys()), "loads": cs.loads, "evictions": cs.evictions,
                "failures": cs.failures, "load_seconds": round(cs.load_seconds, 3),
            },
            "prefix_cache": {
                "entries": len(self.prefix_cache), "bytes": self.prefix_cache.bytes, "max_bytes": self.prefix_cache.max_bytes,
                "lookups": ps.lookups, "hits": ps.hits, "reused_tokens": ps.hit_tokens,
                "hit_rate_tokens": round(ps.hit_tokens / ps.looked_up_tokens, 3) if ps.looked_up_tokens else 0.0,
                "evictions": ps.evicted,
            },
        }

    # --- loop -----------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        last_busy = time.monotonic()
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._wake.clear()
                if self._pending_base is not None and (
                        not self.scheduler.running or time.monotonic() - self._pending_since > REPLACE_WAIT_S):
                    self._apply_pending_base()
                try:
                    busy = self.step()
                except Exception as exc:  # a failed pass ends the rows in it; the engine keeps serving
                    logger.exception("engine step failed")
                    for row in self.scheduler.running:
                        if row.finish is None:
                            self.scheduler.finish(row, "error", error=f"generation failed: {exc}")
                    self.scheduler.retire()
                    busy = False
                self._loop_at = time.monotonic()
                if busy:
                    last_busy = self._loop_at
                else:
                    # a KV cache grown by long requests is given back after a quiet spell, not at once:
                    # re-growing it for the next long request would cost more than keeping it a while
                    if not self.scheduler.running and time.monotonic() - last_busy > self.shrink_after_s:
                        self.runner.shrink_cache()
                    self._wake.wait(0.05)

    def step(self) -> bool:
        """One scheduling round and up to two forward passes; False when there was nothing to do."""
        sch, c = self.scheduler, self._counters
        # 1. schedule: cancellations free their rows now, then admit into the free rows
        cancelled = [r for r in sch.running if r.req.cancelled.is_set()]
        for row in cancelled:
            sch.finish(row, "cancelled")
        if cancelled:
            sch.retire()
        decoding = sch.decoding()
        new = sch.admit()
        # 2. prefill: the next chunk of the prefilling rows; complete prompts sample their first token
        rows, chunks = sch.prefill_batch()
        if rows:
            t0 = time.perf_counter()
            complete = [r.length + len(ch) >= len(r.req.prompt_ids) for r, ch in zip(rows, chunks)]
            logits = self.runner.extend(
                chunks, [r.length for r in rows], first_row=rows[0].slot,
                use_lora=any(r.lora for r in rows), want_logits=complete,
            )  # (R, V) or None
            c.forward_seconds += time.perf_counter() - t0
            c.prefill_passes += 1
            c.prefill_tokens += sum(map(len, chunks))
            for r, ch in zip(rows, chunks):
                r.length += len(ch)
            done = [i for i, ok in enumerate(complete) if ok]
            if done:
                assert logits is not None  # rows that completed their prompt wanted logits
                sch.prompt_done([rows[i] for i in done])
                self._sample([rows[i] for i in done], logits[done])
        # 3. decode one token for every row that was decoding before this step
        if decoding:
            t0 = time.perf_counter()
            tokens = torch.tensor([r.last_token for r in decoding], device=self.runner.device)  # (B,)
            positions = torch.tensor([r.length for r in decoding], device=self.runner.device)  # (B,)
            logits = self.runner.decode(tokens, positions, use_lora=any(r.lora for r in decoding))  # (B, V)
            c.forward_seconds += time.perf_counter() - t0
            c.decode_passes += 1
            c.decode_rows += len(decoding)
            for r in decoding:
                r.length += 1
            self._sample(decoding, logits)
        # 5. retire rows that ended; keep each region a dense range of the buffers
        sch.retire()
        busy = bool(new or rows or decoding or cancelled)
        c.steps += busy  # idle wake-ups are not steps
        return busy

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        """4. pick, emit and account one token per row; ``logits`` (len(rows), V)."""
        params = [r.req.params for r in rows]
        tokens = sample_batch(logits, BatchSampling.of(params, [r.generator for r in rows]), [r.generated for r in rows])
        logprobs = token_logprobs(self.tokenizer, logits, tokens, [p.logprobs for p in params])
        for row, p, tok, lp in zip(rows, params, tokens, logprobs):
            row.generated.append(tok)
            row.last_token = tok
            self.tokens_generated += 1
            if tok in self._stop_ids and not p.ignore_eos:
                self.scheduler.finish(row, "stop")
                continue
            row.req.stream.put(TokenEvent(text=row.detok.add(tok), token_ids=[tok], logprobs=lp))
            if len(row.generated) >= p.max_new_tokens:
                self.scheduler.finish(row, "length")
