"""The batched engine's scheduler: the waiting queue, admission, chunked prefill, retirement.

It owns which request runs in which buffer row; the runner (``service.engine.runner``)
owns the buffers and the arithmetic. The running rows are kept as one dense prefix of
the buffers in two regions, so every forward pass covers a contiguous range of rows:

    [0, D)        decoding: prompt fully cached, one token per step
    [D, D + P)    prefilling: prompt (or its uncached suffix) entering in chunks

New rows are appended to the prefilling region. Each step, ``prefill_batch`` takes the
prefilling rows from ``D`` onwards, in order, up to ``chunk_tokens`` prompt tokens (the
last one may get a partial chunk and continue at the next step), so a long prompt never
stalls the decoding rows by more than one chunk's forward pass. Rows whose prompt is
complete sample their first token and move to the decoding region by advancing ``D``.

Admission looks each prompt up in the prefix cache (``service.engine.prefix_cache``):
a hit copies the stored keys/values into the row, which then prefills only the rest.
Retirement stores the ended rows' caches there before their rows are reused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from service.engine.adapter_cache import AdapterCache, AdapterLoadError, LoraWeights
from service.engine.base import EndEvent, GenerationRequest, QueueFull
from service.engine.prefix_cache import PrefixCache
from service.engine.runner import LlamaRunner
from service.engine.sampling import Detokenizer

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One running request. Its KV cache and LoRA factors live at buffer row ``slot``."""

    req: GenerationRequest
    slot: int
    lora: LoraWeights | None
    detok: Detokenizer
    generator: torch.Generator | None
    length: int = 0  # tokens in the KV cache
    last_token: int = -1  # sampled, not yet in the cache
    generated: list[int] = field(default_factory=list)  # every sampled token, in order
    finish: str | None = None  # set when the row has ended

    @property
    def adapter_key(self) -> str | None:
        return None if self.lora is None else self.lora.key

    def cached_tokens(self) -> list[int]:
        """The token ids whose keys/values are in the row's cache (the last sample is not)."""
        return (self.req.prompt_ids + self.generated)[: self.length]


@dataclass
class Counters:
    steps: int = 0
    prefill_passes: int = 0
    prefill_tokens: int = 0
    decode_passes: int = 0
    decode_rows: int = 0
    forward_seconds: float = 0.0
    finished: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1


class Scheduler:
    """Admission, chunked prefill planning and retirement over the runner's rows."""

    def __init__(self, runner: LlamaRunner, adapters: AdapterCache, prefix_cache: PrefixCache, tokenizer, *,
                 max_rows: int, max_queue: int, chunk_tokens: int, counters: Counters) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1")
        self.runner = runner
        self.adapters = adapters
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.chunk_tokens = chunk_tokens
        self.counters = counters
        self.lock = threading.Lock()  # guards waiting and by_id (routes vs the engine thread)
        self.waiting: deque[GenerationRequest] = deque()
        self.by_id: dict[str, GenerationRequest] = {}
        self.running: list[Row] = []  # engine thread only; running[i].slot == i
        self.n_decoding = 0  # rows [0, n_decoding) are decoding; the rest are prefilling

    # --- the queue (any thread) ---------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull("the generation queue is full; try again in a moment")
            request.submitted_at = time.perf_counter()
            self.waiting.append(request)
            self.by_id[request.request_id] = request

    def find(self, request_id: str) -> GenerationRequest | None:
        with self.lock:
            return self.by_id.get(request_id)

    def queued(self) -> int:
        with self.lock:
            return len(self.waiting)

    def drain_waiting(self) -> list[GenerationRequest]:
        with self.lock:
            waiting, self.waiting = list(self.waiting), deque()
        return waiting

    # --- admission (engine thread) ---------------------------------------------------------
    def admit(self) -> list[Row]:
        """Move waiting requests into free rows (appended to the prefilling region)."""
        free = self.max_rows - len(self.running)
        with self.lock:
            waiting = list(self.waiting)
        new: list[Row] = []
        taken: list[GenerationRequest] = []
        lookahead = max(0, self.adapters.capacity - len(self.adapters.pinned_keys()))
        for req in waiting:
            if req.cancelled.is_set():
                taken.append(req)
                self._end_unstarted(req, "cancelled")
                continue
            if len(new) >= free:
                if req.adapter is not None and lookahead > 0:
                    self.adapters.prefetch(req.adapter)  # loads in the background while the batch runs
                    lookahead -= 1
                continue
            problem = self._validate(req)
            if problem is not None:
                taken.append(req)
                self._end_unstarted(req, "error", problem)
                continue
            if req.params.max_new_tokens <= 0:
                taken.append(req)
                self._end_unstarted(req, "length")
                continue
            lora = None
            if req.adapter is not None:
                try:
                    lora = self.adapters.acquire(req.adapter)
                except AdapterLoadError as exc:
                    taken.append(req)
                    self._end_unstarted(req, "error", str(exc))
                    continue
                if lora is None:
                    continue  # still loading: keeps its place, admitted at a later step
            taken.append(req)
            req.scheduled_at = time.perf_counter()
            p = req.params
            new.append(Row(
                req=req, slot=len(self.running) + len(new), lora=lora, detok=Detokenizer(self.tokenizer),
                generator=torch.Generator().manual_seed(p.seed) if p.seed is not None else None,
            ))
        if taken:
            gone = {id(r) for r in taken}
            started = {id(row.req) for row in new}
            with self.lock:
                self.waiting = deque(r for r in self.waiting if id(r) not in gone)
                for r in taken:
                    if id(r) not in started:
                        self.by_id.pop(r.request_id, None)
        if new:
            rank = max((r.lora.rank for r in new if r.lora is not None), default=0)
            if self.runner.ensure_rank(rank):  # buffers reallocated: rewrite the running rows too
                for row in self.running:
                    self.runner.set_row_adapter(row.slot, row.lora)
            if self.runner.rank:
                for row in new:
                    self.runner.set_row_adapter(row.slot, row.lora)
            # one cache growth for everything these requests may need, not one per chunk or token
            self.runner.ensure_length(max(len(r.req.prompt_ids) + r.req.params.max_new_tokens for r in new))
            for row in new:
                self._reuse_prefix(row)
            self.running.extend(new)
        return new

    def _reuse_prefix(self, row: Row) -> None:
        prompt = row.req.prompt_ids
        hit = self.prefix_cache.lookup(row.adapter_key, row.req.cache_salt, prompt, max_length=len(prompt) - 1)  # >= 1 token left to run
        if hit is not None:
            self.runner.write_kv(row.slot, hit.k, hit.v, hit.length)
            row.length = hit.length

    def _validate(self, req: GenerationRequest) -> str | None:
        n = len(req.prompt_ids)
        if n == 0:
            return "empty prompt"
        if n + req.params.max_new_tokens > self.runner.max_positions:
            return (
                f"prompt ({n} tokens) + max_new_tokens ({req.params.max_new_tokens}) exceeds the model's "
                f"{self.runner.max_positions} positions; shorten the conversation or lower max_new_tokens"
            )
        return None

    def _end_unstarted(self, req: GenerationRequest, reason: str, error: str | None = None) -> None:
        req.stream.put(EndEvent(reason, 0, len(req.prompt_ids), error=error))
        self.counters.count(reason)

    # --- passes ---------------------------------------------------------------------------------
    def decoding(self) -> list[Row]:
        return self.running[: self.n_decoding]

    def prefill_batch(self) -> tuple[list[Row], list[list[int]]]:
        """Prefilling rows for this step's chunk pass (contiguous from ``n_decoding``) and their chunks."""
        rows, chunks, budget = [], [], self.chunk_tokens
        for row in self.running[self.n_decoding:]:
            if budget <= 0:
                break
            prompt = row.req.prompt_ids
            chunk = prompt[row.length: row.length + budget]
            rows.append(row)
            chunks.append(chunk)
            budget -= len(chunk)
        return rows, chunks

    def prompt_done(self, rows: list[Row]) -> None:
        """``rows`` (the first prefilling rows, in order) have their whole prompt cached: they decode now."""
        for row in rows:
            assert row.slot == self.n_decoding, "rows leave the prefilling region in order"
            self.n_decoding += 1

    # --- retirement ------------------------------------------------------------------------------
    def finish(self, row: Row, reason: str, error: str | None = None) -> None:
        row.finish = reason
        row.req.stream.put(EndEvent(reason, len(row.generated), len(row.req.prompt_ids), error=error))
        self.counters.count(reason)

    def retire(self) -> None:
        """Drop ended rows (their caches go to the prefix cache), unpin adapters, compact the rows."""
        done = [r for r in self.running if r.finish is not None]
        if not done:
            return
        for row in done:
            if row.lora is not None:
                self.adapters.release(row.lora.key)
        for row in done:
            if row.finish != "error" and self.prefix_cache.enabled and row.length >= self.prefix_cache.block_size:
                k, v = self.runner.read_kv(row.slot, row.length)
                self.prefix_cache.store(row.adapter_key, row.req.cache_salt, row.cached_tokens(), k, v)
        with self.lock:
            for row in done:
                self.by_id.pop(row.req.request_id, None)
        decoding = [r for r in self.running[: self.n_decoding] if r.finish is None]
        prefilling = [r for r in self.running[self.n_decoding:] if r.finish is None]
        # decoding region: fill its holes with its last rows (order among decoding rows is free)
        n = len(decoding)
        holes = sorted(r.slot for r in done if r.slot < n)
        movers = sorted((r for r in decoding if r.slot >= n), key=lambda r: r.slot)
        for hole, row in zip(holes, movers):
            self.runner.move_row(row.slot, hole)
            row.slot = hole
        # prefilling region: slide down behind it, keeping its order (chunks are taken in order)
        for target, row in enumerate(prefilling, start=n):
            if row.slot != target:
                self.runner.move_row(row.slot, target)
                row.slot = target
        self.running = sorted(decoding, key=lambda r: r.slot) + prefilling
        self.n_decoding = n
