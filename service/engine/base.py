"""The generation engine's interface: routes enqueue, one loop generates.

A route builds a ``GenerationRequest`` (token ids of the rendered prompt, the
sampling settings, and the ``AdapterRef`` the server resolved for the user) and
calls ``engine.submit``. The engine thread owns the model; it pushes
``TokenEvent``s and one final ``EndEvent`` into the request's ``RequestStream``,
which an asyncio consumer iterates. Clients never name adapter paths: the
server maps a user to an adapter version row, the row to a directory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class QueueFull(RuntimeError):
    """The engine's waiting queue is at capacity (HTTP 429 / error frame ``busy``)."""


@dataclass(frozen=True)
class AdapterRef:
    """A resolved adapter version. ``key`` is unique per version (e.g. ``u3-v2``)."""

    key: str
    path: Path
    version_id: int | None = None


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0  # OpenAI's: subtract once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtract per occurrence in the generated tokens
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks); honoured by BatchedEngine
    logprobs: int | None = None  # OpenAI's logprobs: None = off, k >= 0 = the chosen token's and the k likeliest


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (before temperature and penalties, as
    OpenAI reports them) and the ``top`` likeliest alternatives at that position, best first."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class TokenEvent:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # when the request asked (SamplingParams.logprobs)


@dataclass
class EndEvent:
    finish_reason: str  # stop | length | cancelled | error
    completion_tokens: int
    prompt_tokens: int
    error: str | None = None


class RequestStream:
    """Thread-safe bridge from the engine thread to one asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._queue: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync: list = []
        self._cond = threading.Condition()

    def put(self, event: TokenEvent | EndEvent) -> None:
        if self._loop is not None and self._queue is not None:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except RuntimeError:  # loop closed: the consumer is gone
                pass
        else:
            with self._cond:
                self._sync.append(event)
                self._cond.notify_all()

    async def __aiter__(self) -> AsyncIterator[TokenEvent | EndEvent]:
        assert self._queue is not None, "stream created without an event loop"
        while True:
            ev = await self._queue.get()
            yield ev
            if isinstance(ev, EndEvent):
                return

    def ended(self) -> bool:
        """True once the final ``EndEvent`` was put (streams made without an event loop only)."""
        with self._cond:
            return bool(self._sync) and isinstance(self._sync[-1], EndEvent)

    def iter_sync(self, timeout: float | None = None):
        """Blocking iteration for threads, benchmarks and tests."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self._sync):
                    if not self._cond.wait(timeout):
                        raise TimeoutError("engine produced nothing in time")
                ev = self._sync[i]
            i += 1
            yield ev
            if isinstance(ev, EndEvent):
                return


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterRef | None = None  # None = base model
    cache_salt: str | None = None  # prefix-cache namespace (the server passes the user): no cross-user reuse
    stream: RequestStream = field(default_factory=RequestStream)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = 0.0  # perf_counter() when enqueued
    scheduled_at: float | None = None  # when the engine started running it (its queue time ends)


class Engine(Protocol):
    """What the service needs from a generation engine."""

    tokenizer: object

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Enqueue; raises ``QueueFull``. Never blocks on generation."""
        ...

    def cancel(self, request_id: str) -> None:
        """Stop a request at the next step; its stream ends with ``cancelled``."""
        ...

    def evict_adapter(self, key: str) -> None:
        """Drop a resident adapter once no running request uses it."""
        ...

    def stats(self) -> dict: ...
