"""The naive engine: one request at a time, adapter swapped per request.

It is the baseline the batched engine is benchmarked against (sequential
decoding with ``set_adapter``), and a fallback (``ASSISTANT_ENGINE=naive``).
Requests are served strictly one after another from a bounded queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import torch

from service.engine.base import AdapterRef, EndEvent, GenerationRequest, QueueFull, RequestStream, TokenEvent
from service.engine.sampling import BatchSampling, Detokenizer, sample_batch, stop_token_ids, token_logprobs

logger = logging.getLogger(__name__)


class NaiveEngine:
    def __init__(self, model, tokenizer, *, max_queue: int = 64, threads: int | None = None) -> None:
        self.threads = threads  # torch threads of the engine thread (None: leave torch's setting)
        self.base_model = model
        self.model = model
        self.tokenizer = tokenizer
        self._queue: queue.Queue[GenerationRequest] = queue.Queue(maxsize=max_queue)
        self._by_id: dict[str, GenerationRequest] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loaded: set[str] = set()
        self._stop_ids = stop_token_ids(tokenizer, model.config)
        self.tokens_generated = 0

    # --- public API -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="naive-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, request: GenerationRequest) -> RequestStream:
        request.submitted_at = time.perf_counter()
        try:
            self._queue.put_nowait(request)
        except queue.Full as exc:
            raise QueueFull("the generation queue is full; try again in a moment") from exc
        self._by_id[request.request_id] = request
        return request.stream

    def cancel(self, request_id: str) -> None:
        req = self._by_id.get(request_id)
        if req is not None:
            req.cancelled.set()

    def evict_adapter(self, key: str) -> None:
        pass  # adapters are loaded per request and deleted after use

    def stats(self) -> dict:
        return {"engine": "naive", "queued": self._queue.qsize(), "tokens_generated": self.tokens_generated}

    # --- loop -----------------------------------------------------------------
    def _policy(self, adapter: AdapterRef | None):
        """Select the adapter; returns a context manager for the forward passes."""
        from contextlib import nullcontext

        from peft import PeftModel

        if adapter is None:
            return self.model.disable_adapter() if self.model is not self.base_model else nullcontext()
        if self.model is self.base_model:
            self.model = PeftModel.from_pretrained(self.base_model, str(adapter.path), adapter_name=adapter.key)
        elif adapter.key not in self.model.peft_config:
            self.model.load_adapter(str(adapter.path), adapter_name=adapter.key)
        self.model.set_adapter(adapter.key)
        self.model.eval()
        return nullcontext()

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while not self._stopping.is_set():
            try:
                req = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            req.scheduled_at = time.perf_counter()
            try:
                self._generate(req)
            except Exception as exc:  # report the failure to the one request, keep serving
                logger.exception("generation failed for %s", req.request_id)
                req.stream.put(EndEvent("error", 0, len(req.prompt_ids), error=str(exc)))
            finally:
                self._by_id.pop(req.request_id, None)

    @torch.inference_mode()
    def _generate(self, req: GenerationRequest) -> None:
        with self._policy(req.adapter):
            self._decode(req)

    def _decode(self, req: GenerationRequest) -> None:
        p = req.params
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        device = next(self.model.parameters()).device
        ids = torch.tensor([req.prompt_ids], device=device)
        detok = Detokenizer(self.tokenizer)
        sampling = BatchSampling.of([p], [gen])
        generated: list[int] = []
        past = None
        n = 0
        finish = "length"
        while n < p.max_new_tokens:
            if req.cancelled.is_set():
                finish = "cancelled"
                break
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = sample_batch(out.logits[:, -1], sampling, [generated])[0]
            lp = token_logprobs(self.tokenizer, out.logits[:, -1], [tok], [p.logprobs])[0]
            generated.append(tok)
            n += 1
            self.tokens_generated += 1
            if tok in self._stop_ids and not p.ignore_eos:
                finish = "stop"
                break
            text = detok.add(tok)
            req.stream.put(TokenEvent(text=text, token_ids=[tok], logprobs=lp))
            ids = torch.tensor([[tok]], device=device)
        req.stream.put(EndEvent(finish, n, len(req.prompt_ids)))
