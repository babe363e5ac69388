"""Personal best-of-n: a reply chosen, block by block, among n sampled continuations (issue 26).

The user's reward (``service.reply_reward``: their weights over reply traits, written by the
learning job beside their adapter) picks among n candidates; any candidate the harm judge flags is
dropped first. The choice is made every ``block`` tokens, so the reply still streams: each block's
n continuations fork from the chosen text so far (the engine's prefix cache holds it, so a fork
prefills a token or two, not the reply), and only the chosen block is shown. This is blockwise
best-of-n (Mudgal et al. 2023, "Controlled Decoding from Language Models", choose among sampled
blocks by a prefix score); the reward scores the reply so far, so each block is judged as part of
the reply it extends. ``block`` 0 chooses once among n whole replies (nothing streams until the
chosen one is done: the better choice for replies judged on their whole shape, the worse for the
first token's wait). ``first_block`` (when set) sizes the first block alone: the first token waits
for n candidates of that many tokens, not of ``block``.

``ReplyChoice`` is the logic alone, with no engine in it: the server (``service.chat``) drives it
with engine requests, the evaluation (``learning.sim.policies``) with batched sampling, so what is
measured is what is served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from service.engine.base import AdapterRef, EndEvent, Engine, GenerationRequest, RequestStream
    from service.reply_reward import ReplyReward
    from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draw:
    """One candidate to sample for the next block: from the reply so far, this many tokens, this seed."""

    max_new_tokens: int
    seed: int


@dataclass
class Candidate:
    """A sampled continuation: its tokens and whether the model ended its turn within them."""

    token_ids: list[int]
    ended: bool


def draw_seed(seed: int, block: int, index: int) -> int:
    """Candidate ``index``'s seed in block ``block``. The first candidate of the first block uses
    ``seed`` itself, so best-of-1 over whole replies samples exactly the reply one request would."""
    if block == 0 and index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}\0{block}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class ReplyChoice:
    """One reply chosen among ``n`` candidates every ``block`` tokens (0: among whole replies); the
    first choice every ``first_block`` tokens instead when that is set (0: ``block``).

    ``score(prompt, texts)``: the choice criterion of each candidate reply-so-far (higher is better);
    ``harmful(texts)``: which candidates to drop (when every one is flagged, the first is kept: the
    reply goes on as one request would have sampled it, and the serving filter, when on, still
    applies); ``decode(ids)``: token ids to text."""

    prompt: str
    n: int
    block: int
    max_new_tokens: int
    seed: int
    score: Callable[[str, Sequence[str]], Sequence[float]]
    harmful: Callable[[Sequence[str]], Sequence[bool]]
    decode: Callable[[list[int]], str]
    first_block: int = 0
    token_ids: list[int] = field(default_factory=list)  # the chosen reply so far
    choices: list[int] = field(default_factory=list)  # per block, the chosen candidate's index (0: the first draw)
    drawn: list[int] = field(default_factory=list)  # per block, how many candidates were drawn
    dropped: int = 0  # candidates the harm judge flagged, over all blocks
    finished: str | None = None  # "stop" (the model ended its turn) or "length"

    def draws(self, n: int | None = None) -> list[Draw]:
        """The next block's candidates (``n`` of them, at most ``self.n``: the server draws fewer when
        load arrives mid-reply); empty once the reply is finished."""
        if self.finished is not None:
            return []
        left = self.max_new_tokens - len(self.token_ids)
        b = len(self.choices)
        block = self.first_block if b == 0 and self.first_block > 0 else self.block
        size = left if block <= 0 else min(block, left)
        k = self.n if n is None else max(1, min(n, self.n))
        return [Draw(size, draw_seed(self.seed, b, i)) for i in range(k)]

    def choose(self, candidates: Sequence[Candidate]) -> int:
        """Keep the best candidate of this block; return its index."""
        if not candidates:
            raise ValueError("choose() needs the candidates of draws()")
        texts = [self.decode(self.token_ids + c.token_ids) for c in candidates]
        flagged = list(self.harmful(texts)) if len(candidates) > 1 else [False]
        self.dropped += sum(flagged)
        allowed = [i for i, f in enumerate(flagged) if not f] or [0]
        scores = self.score(self.prompt, [texts[i] for i in allowed]) if len(allowed) > 1 else [0.0]
        best = allowed[max(range(len(allowed)), key=lambda j: (scores[j], -allowed[j]))]
        chosen = candidates[best]
        self.token_ids += chosen.token_ids
        self.choices.append(best)
        self.drawn.append(len(candidates))
        if chosen.ended:
            self.finished = "stop"
        elif len(self.token_ids) >= self.max_new_tokens or not chosen.token_ids:
            self.finished = "length"
        return best

    def record(self) -> dict[str, object]:
        """What the message stores: n, the block size, per block the chosen index and the candidates
        drawn (fewer than n once load arrived), candidates dropped."""
        return {"n": self.n, "block": self.block, "first_block": self.first_block or self.block, "choices": list(self.choices), "drawn": list(self.drawn),
                "dropped": self.dropped}


def summarise_choices(records: Sequence[dict]) -> dict[str, object]:
    """How often best-of-n changed a reply: replies, blocks, the share of blocks where a candidate
    other than the first draw won, candidates the judge dropped."""
    blocks = [c for r in records for c in r["choices"]]
    return {"replies": len(records), "blocks": len(blocks),
            "changed_share": round(sum(c != 0 for c in blocks) / len(blocks), 3) if blocks else None,
            "dropped": sum(int(r["dropped"]) for r in records)}


class ChoiceRun:
    """The server's driver of one ``ReplyChoice``: samples each block's candidates as engine requests
    (forked from the reply so far; the request's user salt keeps the prefix cache per user) and
    puts the chosen blocks into ``request.stream`` as the engine would put one request's tokens,
    so ``ChatService.relay`` treats both alike."""

    def __init__(self, engine: "Engine", request: "GenerationRequest", choice: ReplyChoice) -> None:
        self.engine, self.request, self.choice = engine, request, choice
        self._current: list[str] = []  # engine request ids of the block being sampled

    def _affordable(self, n: int) -> int:
        """Candidates for the next block: n while nothing waits and n rows are free beside those this
        reply gives back, else 1 (issue 26: best-of-n uses idle rows only, so a burst that arrives
        mid-reply takes the rows back within one block)."""
        stats = self.engine.stats()
        if stats.get("queued", 0):
            return 1
        idle = stats.get("max_batch_size", 0) - stats.get("running", 0)
        return n if idle >= n else max(1, idle)

    def cancel(self) -> None:
        self.request.cancelled.set()
        for rid in list(self._current):
            self.engine.cancel(rid)

    async def run(self) -> None:
        import asyncio

        from service.engine.base import EndEvent, GenerationRequest, QueueFull, RequestStream, TokenEvent

        req, choice, loop = self.request, self.choice, asyncio.get_running_loop()
        tokenizer: Any = self.engine.tokenizer  # a Hugging Face tokenizer: the Engine protocol leaves its type open
        shown = ""
        finish, error = None, None
        try:
            while not req.cancelled.is_set():
                draws = choice.draws(self._affordable(choice.n) if choice.choices else choice.n)
                if not draws:
                    finish = choice.finished
                    break
                subs = []
                for i, d in enumerate(draws):
                    sub = GenerationRequest(f"{req.request_id}-b{len(choice.choices)}c{i}", req.prompt_ids + choice.token_ids,
                                            dataclasses.replace(req.params, max_new_tokens=d.max_new_tokens, seed=d.seed),
                                            req.adapter, cache_salt=req.cache_salt, stream=RequestStream(loop))
                    try:
                        self.engine.submit(sub)
                    except QueueFull:
                        break  # the queue filled meanwhile: choose among those that started
                    subs.append(sub)
                    if req.scheduled_at is None:
                        req.submitted_at = req.submitted_at or sub.submitted_at
                if not subs:
                    finish, error = "error", "the server is busy; try again in a few seconds"
                    break
                self._current = [s.request_id for s in subs]
                results = await asyncio.gather(*(_collect(s.stream) for s in subs))
                self._current = []
                if req.scheduled_at is None:
                    req.scheduled_at = min((s.scheduled_at for s in subs if s.scheduled_at is not None), default=None)
                ends = [end for _, _, end in results]
                if req.cancelled.is_set() or any(e.finish_reason == "cancelled" for e in ends):
                    finish = "cancelled"
                    break
                failed = next((e for e in ends if e.finish_reason == "error"), None)
                if failed is not None:
                    finish, error = "error", failed.error
                    break
                best = choice.choose([Candidate(ids, end.finish_reason == "stop") for ids, _, end in results])
                text = tokenizer.decode(choice.token_ids, skip_special_tokens=True)
                upto = len(text.rstrip("\ufffd")) if choice.finished is None else len(text)  # a character still open
                if upto > len(shown):
                    ids, logprobs, _ = results[best]
                    req.stream.put(TokenEvent(text[len(shown):upto], ids, logprobs or None))
                    shown = text[:upto]
            else:
                finish = "cancelled"
        except Exception as exc:  # the stream must end whatever went wrong, or its consumer waits forever
            logger.exception("best-of-n reply %s failed", req.request_id)
            finish, error = "error", str(exc)
            self.cancel()
        req.stream.put(EndEvent(finish or "cancelled", len(choice.token_ids), len(req.prompt_ids), error))


async def _collect(stream: "RequestStream") -> tuple[list[int], list, "EndEvent"]:
    from service.engine.base import EndEvent

    ids: list[int] = []
    logprobs: list = []
    async for ev in stream:
        if isinstance(ev, EndEvent):
            return ids, logprobs, ev
        ids += ev.token_ids
        logprobs += ev.logprobs or []
    raise RuntimeError("an engine stream ended without its end event")


class ServingRewards:
    """The stored rewards of the adapters being served (read once per adapter version) and the judge
    that drops candidates (``ASSISTANT_BEST_OF_N_JUDGE``)."""

    _CAPACITY = 256

    def __init__(self, settings: "Settings") -> None:
        from service.judges import DEFAULT_JUDGE_THRESHOLD, make_judge

        self._judge = make_judge(settings.best_of_n_judge)
        self._threshold = DEFAULT_JUDGE_THRESHOLD
        self._cache: dict[str, "ReplyReward | None"] = {}

    def get(self, adapter: "AdapterRef") -> "ReplyReward | None":
        from service.reply_reward import ReplyReward

        if adapter.key not in self._cache:
            if len(self._cache) >= self._CAPACITY:
                self._cache.pop(next(iter(self._cache)))
            self._cache[adapter.key] = ReplyReward.load(adapter.path)
        return self._cache[adapter.key]

    def harmful(self, texts: Sequence[str]) -> list[bool]:
        if self._judge is None:
            return [False] * len(texts)
        return [s >= self._threshold for s in self._judge.score(list(texts))]
