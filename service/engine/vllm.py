"""The vLLM engine (``ASSISTANT_ENGINE=vllm``): generations on a vLLM server, for fleets with GPUs.

Where users outgrow one box, the chat service runs on an existing serving engine instead of its
own: every request goes to a vLLM server's OpenAI-compatible ``/v1/completions`` (streamed), and
the service keeps doing everything else (users, conversations, ratings, the adapter store, the
learning workers). The contract is the ``Engine`` protocol the batched engine implements, so
``service.chat``, ``/v1`` and best-of-n do not know which engine serves them:

- **Prompts and tokens are ids.** The server renders and tokenizes as always and sends the token
  ids (``prompt`` as a list of ints); vLLM answers each token with its id (``logprobs`` with
  ``return_tokens_as_token_ids``), so ``TokenEvent.token_ids`` are the tokens really sampled.
- **Sampling** maps one to one: ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, the
  per-request ``seed`` (common random numbers, as in the batched engine), presence and frequency
  penalties, ``ignore_eos``, the top-k ``logprobs``; the stop tokens are the ones our engines stop
  on (``stop_token_ids``), never emitted.
- **Adapters** are the store's directories, loaded at runtime (``POST /v1/load_lora_adapter``,
  the server started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) under their engine key the
  first time a request names them, and unloaded by ``evict_adapter`` (a retired version). The
  vLLM server must read the same adapter store (one machine, or a shared volume) and serve the
  same base weights the adapters were trained on (``assistant vllm-command`` prints the command).
- **Back-pressure**: at most ``max_batch_size`` requests in flight (vLLM batches them, distinct
  adapters included); up to ``max_queue`` more wait, beyond that ``QueueFull`` (429), as in the
  batched engine. ``cancel`` closes the stream, which aborts the request in vLLM.

The requests run on an asyncio loop in a thread of their own (``httpx.AsyncClient``); events go
to each request's ``RequestStream``, which is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from service.engine.base import EndEvent, GenerationRequest, QueueFull, RequestStream, TokenEvent, TokenLogprob
from service.engine.sampling import stop_token_ids

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "token_id:"


class VllmError(RuntimeError):
    """The vLLM server refused or failed a request; the message says what it answered."""


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_PREFIX):
        raise VllmError(f"vLLM answered a token as {token!r}, not as its id (return_tokens_as_token_ids)")
    return int(token[len(TOKEN_PREFIX):])


class VllmEngine:
    def __init__(self, url: str, tokenizer, *, model: str | None = None, api_key: str | None = None,
                 max_batch_size: int = 16, max_queue: int = 64, timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.model = model  # the base model's name on the vLLM server (None: the one it serves, asked at start)
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._stop_ids = sorted(stop_token_ids(tokenizer))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._tasks: dict[str, concurrent.futures.Future[None]] = {}
        self._requests: dict[str, GenerationRequest] = {}
        self._loaded: set[str] = set()  # adapter keys loaded on the server by this engine
        self._loading: dict[str, asyncio.Lock] = {}
        self.running = 0
        self.tokens_generated = 0
        self.finished: Counter[str] = Counter()
        self.adapter_loads = 0

    # --- the Engine protocol -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._client = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)
            self._slots = asyncio.Semaphore(self.max_batch_size)
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="vllm-engine", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self._call(self._discover())
        except (httpx.HTTPError, VllmError) as exc:  # requests retry discovery; /healthz shows the error
            logger.warning("vLLM at %s is not answering yet (%s); requests will retry", self.url, exc)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        for task in list(self._tasks.values()):
            task.cancel()
        if self._client is not None:
            self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = self._loop = self._client = None

    def submit(self, request: GenerationRequest) -> RequestStream:
        if self._loop is None:
            raise RuntimeError("the vLLM engine is not started")
        with self._lock:
            if len(self._requests) - self.running >= self.max_queue:
                raise QueueFull("the generation queue is full; try again in a moment")
            request.submitted_at = time.perf_counter()
            self._requests[request.request_id] = request
            self._tasks[request.request_id] = asyncio.run_coroutine_threadsafe(self._generate(request), self._loop)
        return request.stream

    def cancel(self, request_id: str) -> None:
        with self._lock:
            req = self._requests.get(request_id)
        if req is not None:
            req.cancelled.set()

    def evict_adapter(self, key: str) -> None:
        """Unload a retired adapter version from the vLLM server (if this engine loaded it)."""
        if key in self._loaded and self._loop is not None:
            self._loaded.discard(key)
            try:
                self._call(self._post("/v1/unload_lora_adapter", {"lora_name": key}))
            except (httpx.HTTPError, VllmError) as exc:
                logger.warning("could not unload adapter %s from vLLM: %s", key, exc)

    def stats(self) -> dict:
        with self._lock:
            waiting = len(self._requests) - self.running
        return {"engine": "vllm", "url": self.url, "model": self.model, "running": self.running, "queued": waiting,
                "max_batch_size": self.max_batch_size, "tokens_generated": self.tokens_generated,
                "finished": dict(self.finished), "adapters": {"resident": len(self._loaded), "loads": self.adapter_loads}}

    # --- the requests ----------------------------------------------------------------------------
    @property
    def _http(self) -> httpx.AsyncClient:
        """The client, which exists from ``start`` to ``stop``, as do the loop and the request slots."""
        if self._client is None:
            raise RuntimeError("the vLLM engine is not started")
        return self._client

    def _call(self, coro, timeout: float | None = 60.0):
        if self._loop is None:
            raise RuntimeError("the vLLM engine is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _post(self, path: str, body: dict) -> httpx.Response:
        response = await self._http.post(path, json=body)
        if response.status_code >= 400:
            raise VllmError(f"vLLM {path} answered {response.status_code}: {response.text[:300]}")
        return response

    async def _discover(self) -> str:
        """The base model the server serves (the model listed without a parent: adapters have one)."""
        if self.model is None:
            response = await self._http.get("/v1/models")
            response.raise_for_status()
            bases = [m["id"] for m in response.json().get("data", []) if not m.get("parent")]
            if not bases:
                raise VllmError(f"vLLM at {self.url} lists no base model")
            self.model = bases[0]
        return self.model

    async def _ensure_adapter(self, key: str, path) -> None:
        if key in self._loaded:
            return
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._loaded:
                return
            response = await self._http.post("/v1/load_lora_adapter", json={"lora_name": key, "lora_path": str(path)})
            if response.status_code >= 400 and "already" not in response.text.lower():
                raise VllmError(f"vLLM could not load adapter {key} from {path} ({response.status_code}): "
                                f"{response.text[:300]}; is it started with --enable-lora and "
                                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and can it read the adapter store?")
            self._loaded.add(key)
            self.adapter_loads += 1

    def body(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        """The ``/v1/completions`` request for ``request`` (public: the tests read it)."""
        p = request.params
        body: dict[str, Any] = {
            "model": request.adapter.key if request.adapter is not None else model,
            "prompt": list(request.prompt_ids), "max_tokens": p.max_new_tokens, "temperature": p.temperature,
            "top_p": p.top_p, "stream": True, "stream_options": {"include_usage": True},
            "logprobs": p.logprobs or 0, "return_tokens_as_token_ids": True, "skip_special_tokens": True,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if p.ignore_eos:
            body["ignore_eos"] = True
        else:
            body["stop_token_ids"] = self._stop_ids
        return body

    async def _generate(self, req: GenerationRequest) -> None:
        n, finish, error = 0, "length", None
        try:
            assert self._slots is not None  # made in start(), before submit() accepts a request
            async with self._slots:
                with self._lock:
                    self.running += 1
                req.scheduled_at = time.perf_counter()
                try:
                    model = await self._discover()
                    if req.adapter is not None:
                        await self._ensure_adapter(req.adapter.key, req.adapter.path)
                    n, finish = await self._stream(req, model)
                finally:
                    with self._lock:
                        self.running -= 1
        except asyncio.CancelledError:
            finish = "cancelled"
        except (httpx.HTTPError, VllmError, ValueError, KeyError) as exc:
            finish, error = "error", f"{type(exc).__name__}: {exc}"
            logger.warning("vLLM request %s failed: %s", req.request_id, error)
        finally:
            with self._lock:
                self._requests.pop(req.request_id, None)
                self._tasks.pop(req.request_id, None)
            self.finished[finish] += 1
            req.stream.put(EndEvent(finish, n, len(req.prompt_ids), error=error))

    async def _stream(self, req: GenerationRequest, model: str) -> tuple[int, str]:
        """Relay one streamed completion; returns (tokens generated, finish reason)."""
        n, finish = 0, "length"
        if req.cancelled.is_set():  # cancelled while it waited for a slot
            return n, "cancelled"
        async with self._http.stream("POST", "/v1/completions", json=self.body(req, model)) as response:
            if response.status_code >= 400:
                raise VllmError(f"vLLM /v1/completions answered {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if req.cancelled.is_set():
                    return n, "cancelled"
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    event, count = self._event(choice, req.params.logprobs)
                    n += count
                    if event is not None:
                        req.stream.put(event)
                    if choice.get("finish_reason"):
                        finish = "stop" if choice["finish_reason"] == "stop" else "length"
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    n = int(usage["completion_tokens"])
        self.tokens_generated += n
        return n, finish

    def _event(self, choice: dict, wanted: int | None) -> tuple[TokenEvent | None, int]:
        """One streamed choice as a ``TokenEvent`` (None when it carries no token we show), and how
        many tokens it generated (a stop token counts, as in our engines, but is never shown)."""
        lp = choice.get("logprobs") or {}
        tokens = lp.get("tokens") or []
        ids = [_token_id(t) for t in tokens]
        shown = [i for i, t in enumerate(ids) if t not in self._stop_ids]
        if not shown and not choice.get("text"):
            return None, len(ids)
        logprobs = None
        if wanted is not None:
            values, tops = lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
            logprobs = []
            for i in shown:
                top = sorted(((self.tokenizer.decode([_token_id(t)]), float(v)) for t, v in (tops[i] or {}).items()),
                             key=lambda x: -x[1])[:wanted] if i < len(tops) and tops[i] else []
                logprobs.append(TokenLogprob(self.tokenizer.decode([ids[i]]), float(values[i]), top))
        return TokenEvent(text=choice.get("text") or "", token_ids=[ids[i] for i in shown], logprobs=logprobs), len(ids)


def vllm_command(settings, *, port: int = 8001, max_loras: int = 16, max_lora_rank: int | None = None,
                 dtype: str = "bfloat16", python: str = "python") -> tuple[list[str], dict[str, str]]:
    """The command (and environment) that starts a vLLM server for this install: the served base
    (the safe base when the safety stage is on, as the adapters were trained on it), runtime LoRA
    loading, adapters up to the training rank. Printed by ``assistant vllm-command``."""
    from learning.config import Budgets
    from service.model_loading import base_model_id, resolve_model_path

    rank = max_lora_rank or max(8, Budgets.from_env().lora_r)
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model_path(settings),
            "--served-model-name", base_model_id(settings), "--port", str(port), "--enable-lora",
            "--max-loras", str(max_loras), "--max-lora-rank", str(rank), "--dtype", dtype]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}
    return argv, env


class VllmServer:
    """A vLLM server process for this install on this machine (``make vllm-e2e``, ``assistant bench
    serve --peer vllm``): started with ``vllm_command``'s arguments, on its own port, ready once
    ``/v1/models`` answers; stopped on exit. ``python``: the interpreter of vLLM's own venv."""

    def __init__(self, settings, python: str, log: Path, *, dtype: str = "bfloat16", max_loras: int = 16,
                 threads: int | None = None, kv_cache_gib: int = 2, start_polls: int = 600) -> None:
        import os

        from service.local_process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv, env = vllm_command(settings, port=self.port, max_loras=max_loras, dtype=dtype, python=python)
        cores = threads or os.cpu_count() or 1
        # vLLM's CPU build: bind its OpenMP threads to the cores it is given and reserve none
        # (../shared/peers/README.md: the default reserves one core, up to 17% slower on 2 cores)
        self.env = {**os.environ, **env, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                    "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}"}
        preload = [p for p in (Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
                               *Path(python).resolve().parent.parent.glob("lib/libiomp5.so")) if p.exists()]
        if preload:
            self.env["LD_PRELOAD"] = ":".join(str(p) for p in preload)
        self.log, self.start_polls = log, start_polls
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "VllmServer":
        from service.local_process import wait_for_http

        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        why = wait_for_http(self.proc, f"{self.url}/v1/models", polls=self.start_polls, interval_s=1.0)
        if why is not None:
            self.__exit__()
            raise RuntimeError(f"vLLM did not start: {why}: {self.log.read_text()[-3000:]}")
        return self

    def __exit__(self, *exc) -> None:
        from service.local_process import stop

        if self.proc is not None:
            stop(self.proc, timeout_s=30)
        self.proc = None
