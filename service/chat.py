"""A chat turn, shared by the WebSocket and OpenAI-compatible routes.

Routes validate and call ``ChatService``; it stores the rows (off the event
loop), resolves which adapter serves the user, renders the prompt with the chat
template, enqueues on the engine and relays the engine's events, storing the
finished reply with the adapter version that produced it. No route calls the
model itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from anyio import CapacityLimiter, to_thread
from sqlalchemy.engine import Engine as DBEngine
from sqlmodel import Session

from service import crud, external_chats
from service.best_of_n import ChoiceRun, ReplyChoice, ServingRewards
from service.adapter_store import Policy, Resolved, active_version, resolve_for_user
from service.content_filter import FINISH_REASON as FILTERED, ReplyFilter
from service.engine.base import EndEvent, Engine, GenerationRequest, QueueFull, RequestStream, SamplingParams, TokenEvent
from service.metrics import Metrics
from service.models import GENERATED, Conversation, Message, pk
from service.ratelimit import SlidingWindow
from service.settings import Settings

logger = logging.getLogger(__name__)


class ChatError(Exception):
    """A client-facing error with a code (bad_frame, not_found, too_many, busy, too_large)."""

    def __init__(self, code: str, detail: str, http_status: int = 400) -> None:
        super().__init__(detail)
        self.code, self.detail, self.http_status = code, detail, http_status


@dataclass
class PlannedReply:
    """One assistant reply about to be generated: its stored row and what produces it."""

    message: Message
    prompt_ids: list[int]
    params: SamplingParams
    resolved: Resolved
    request: GenerationRequest | None = None  # once submitted: the engine stamps its queue time on it
    choice: ReplyChoice | None = None  # personal best-of-n, when it produces this reply
    background: bool = False  # a front end's background call: held in the user's background slots
    prefix: str = ""  # a reply continued (OpenAI's partial last assistant message): stored before the new text


@dataclass
class Turn:
    conversation_id: int
    user_message_id: int
    replies: list[PlannedReply]


class ChatService:
    def __init__(self, settings: Settings, db: DBEngine, engine: Engine, metrics: Metrics) -> None:
        self.settings, self.db, self.engine, self.metrics = settings, db, engine, metrics
        self.reply_filter = ReplyFilter.from_settings(settings)  # None: ASSISTANT_SERVING_FILTER=none
        self._active: dict[tuple[int, bool], int] = defaultdict(int)  # (user id, background) -> running generations
        self._requests: dict[int, tuple[int, str]] = {}  # message id -> (user id, engine request id)
        self._runs: dict[int, ChoiceRun] = {}  # message id -> its best-of-n driver
        self._tasks: set[asyncio.Task] = set()  # the drivers' tasks (held, or asyncio may collect them)
        self._rewards = ServingRewards(settings)
        self._rng = random.Random()
        self._rate = SlidingWindow(settings.request_limit, 60.0)  # turns started per user per minute
        self._chars: dict[int, tuple[int, float]] = {}  # user id -> (stored characters, when counted): the byte quota
        # Storing rows and rendering prompts run in threads of their own, a bounded few, so a burst of
        # long prompts waits here instead of taking the threads every other route needs.
        self._planning = CapacityLimiter(settings.prompt_workers)

    # --- validation ---------------------------------------------------------------
    def sampling(self, *, max_new_tokens: int | None, temperature: float | None, top_p: float | None = None, seed: int | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None) -> SamplingParams:
        s = self.settings
        n = s.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        if n > s.max_new_tokens_limit:
            raise ChatError("too_large", f"max_new_tokens {n} is over the limit of {s.max_new_tokens_limit}", 422)
        return SamplingParams(
            max_new_tokens=n,
            temperature=s.default_temperature if temperature is None else temperature,
            top_p=s.default_top_p if top_p is None else top_p,
            seed=seed,
            presence_penalty=presence_penalty or 0.0,
            frequency_penalty=frequency_penalty or 0.0,
        )

    async def user_sampling(self, user_id: int, *, max_new_tokens: int | None, temperature: float | None,
                            top_p: float | None = None, seed: int | None = None, presence_penalty: float | None = None,
                            frequency_penalty: float | None = None) -> SamplingParams:
        """``sampling`` with the user's own reply defaults (their settings panel) where the request
        does not say. A saved length over a since-lowered limit is clamped, not refused."""
        def read():
            with Session(self.db) as session:
                return crud.get_preferences(session, user_id=user_id)

        prefs = await to_thread.run_sync(read, limiter=self._planning)
        if max_new_tokens is None and prefs.max_new_tokens is not None:
            max_new_tokens = min(prefs.max_new_tokens, self.settings.max_new_tokens_limit)
        if temperature is None:
            temperature = prefs.temperature
        return self.sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)

    def instructions(self, session: Session, user_id: int) -> str:
        """The user's custom instructions (empty: none, or the feature is off)."""
        cap = self.settings.max_instructions_chars
        return crud.get_preferences(session, user_id=user_id).instructions.strip()[:cap] if cap else ""

    def check_content(self, content: str) -> None:
        if not content.strip():
            raise ChatError("bad_frame", "content must not be empty", 422)
        if len(content) > self.settings.max_message_chars:
            raise ChatError("too_large", f"message is {len(content)} characters; the limit is {self.settings.max_message_chars}", 413)

    def reserve(self, user_id: int, n: int, background: bool = False) -> None:
        """Hold ``n`` of the user's generation slots: their chat slots (ASSISTANT_MAX_CONCURRENT_PER_USER),
        or for a front end's background calls (titles, tags, follow-ups) a budget of their own
        (ASSISTANT_MAX_BACKGROUND_PER_USER), so those never take the slots of the user's replies."""
        limit = self.settings.max_background_per_user if background else self.settings.max_concurrent_per_user
        if self._active[(user_id, background)] + n > limit:
            self.metrics.refusals.labels(reason="too_many").inc()
            what = "background calls (titles, tags)" if background else "generations"
            raise ChatError("too_many", f"at most {limit} {what} at once per user; wait for one to finish", 429)
        self._active[(user_id, background)] += n

    def release(self, user_id: int, n: int = 1, background: bool = False) -> None:
        self._active[(user_id, background)] = max(0, self._active[(user_id, background)] - n)

    # --- prompt -------------------------------------------------------------------
    def render_prompt(self, messages: list[dict]) -> list[int]:
        """Chat-template token ids of the newest turns that fit ``max_input_tokens``.

        Dropping the oldest turn never makes the prompt longer, so the fewest turns to drop is found
        by bisection: O(log n) template renderings of at most n turns, not one per dropped turn
        (that was quadratic: 2,000 tiny turns took minutes of CPU)."""
        tok: Any = self.engine.tokenizer  # a Hugging Face tokenizer: the Engine protocol leaves its type open
        budget = self.settings.max_input_tokens
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]

        rendered: dict[int, list[int]] = {}

        def render(drop: int) -> list[int]:
            if drop not in rendered:
                ids = tok.apply_chat_template(system + turns[drop:], add_generation_prompt=True, tokenize=True)
                rendered[drop] = list(ids if isinstance(ids, list) else ids["input_ids"])
            return rendered[drop]

        ids = render(0)
        if len(ids) > budget and len(turns) > 1:
            lo, hi = 1, len(turns) - 1  # the fewest turns to drop lies in [lo, hi]; hi keeps only the last turn
            while lo < hi:
                mid = (lo + hi) // 2
                if len(render(mid)) <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            ids = render(lo)
        if len(ids) > budget:  # one message alone is too long: keep its end, and the generation prompt
            ids = ids[-budget:]
        return list(ids)

    def _continuing(self, prompt_ids: list[int], partial: str) -> list[int]:
        """The prompt followed by a partial reply's tokens (no end of turn), the newest ``max_input_tokens``."""
        tok: Any = self.engine.tokenizer  # a Hugging Face tokenizer, as in render_prompt
        ids = prompt_ids + list(tok.encode(partial, add_special_tokens=False))
        return ids[-self.settings.max_input_tokens:]

    def _history(self, session: Session, leaf: Message) -> list[dict]:
        thread = crud.thread(session, leaf=leaf, limit=self.settings.max_messages)
        return [{"role": m.role, "content": m.content} for m in thread if m.content or m.role != "assistant"]

    # --- policies -----------------------------------------------------------------
    def _explore(self, session: Session, user_id: int, main: Resolved, params: SamplingParams) -> tuple[Resolved, SamplingParams]:
        """Another policy for one alternative, so rankings double as live A/B tests."""
        options: list[tuple[Resolved, SamplingParams]] = []
        glob = active_version(session, None)
        if main.policy == Policy.USER and glob is not None:
            options.append((Resolved.of(self.settings, glob, Policy.explore("global")), params))
        if main.policy != Policy.BASE:
            options.append((Resolved.base(Policy.explore("base")), params))
        hot = dataclasses.replace(params, temperature=min(2.0, max(params.temperature, 0.7) * 1.5))
        options.append((dataclasses.replace(main, policy=Policy.explore("temperature")), hot))
        return self._rng.choice(options)

    # --- turns --------------------------------------------------------------------
    def _plan_turn(self, *, user_id: int, conversation_id: int | None, content: str, alternatives: int,
                   params: SamplingParams, parent_id: int | None, edit_of: int | None = None) -> Turn:
        with Session(self.db, expire_on_commit=False) as session:
            anchor = parent_id if parent_id is not None else edit_of
            if conversation_id is None and anchor is not None:  # the message's own conversation, never a new empty one
                msg = crud.get_message(session, user_id=user_id, message_id=anchor)
                if msg is None:
                    raise ChatError("not_found", f"message {anchor} not found", 404)
                conversation_id = msg.conversation_id
            conv: Conversation | None
            if conversation_id is None:
                conv = crud.create_conversation(session, user_id=user_id, title=content.strip().splitlines()[0][:60])
                # A new conversation starts under the user's custom instructions, stored as its root
                # system message: what the model was told stays visible, and later edits to the
                # instructions apply to later conversations, not to this one behind its back.
                instructions = self.instructions(session, user_id)
                if instructions:
                    crud.add_message(session, conversation_id=conv.id, user_id=user_id, role="system", content=instructions)
            else:
                conv = crud.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
                if conv is None:
                    raise ChatError("not_found", f"conversation {conversation_id} not found", 404)
            conv_id = pk(conv)
            if edit_of is not None:  # edit and resend: a sibling of the edited turn, under the same parent
                if parent_id is not None:
                    raise ChatError("bad_frame", "send parent_id or edit_of, not both", 422)
                edited = crud.get_message(session, user_id=user_id, message_id=edit_of)
                if edited is None or edited.role != "user" or edited.conversation_id != conv_id:
                    raise ChatError("not_found", f"user message {edit_of} not found in this conversation", 404)
                parent = session.get(Message, edited.parent_id) if edited.parent_id is not None else None
            elif parent_id is not None:
                parent = crud.get_message(session, user_id=user_id, message_id=parent_id)
                if parent is None or parent.conversation_id != conv_id:
                    raise ChatError("not_found", f"message {parent_id} not found in this conversation", 404)
            else:
                parent = crud.default_parent(session, conversation_id=conv_id)
            user_msg = crud.add_message(session, conversation_id=conv_id, user_id=user_id, role="user", content=content,
                                        parent_id=parent.id if parent else None)
            prompt_ids = self.render_prompt(self._history(session, user_msg))
            main = resolve_for_user(self.settings, session, user_id)
            replies = []
            explore_at = alternatives - 1 if alternatives > 1 and self._rng.random() < self.settings.exploration_share else -1
            for k in range(alternatives):
                resolved, p = (main, params) if k != explore_at else self._explore(session, user_id, main, params)
                replies.append(self._plan_reply(session, user_id, conv_id, user_msg, k, prompt_ids, p, resolved))
            return Turn(conv_id, pk(user_msg), replies)

    def _plan_reply(self, session: Session, user_id: int, conversation_id: int, user_msg: Message, index: int,
                    prompt_ids: list[int], params: SamplingParams, resolved: Resolved, *, origin: str = GENERATED) -> PlannedReply:
        msg = crud.add_message(
            session, conversation_id=conversation_id, user_id=user_id, role="assistant", content="", origin=origin,
            parent_id=user_msg.id, alternative_group=user_msg.id, alternative_index=index,
            adapter_version_id=resolved.version_id, adapter_label=resolved.label, policy=resolved.policy,
            temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
            prompt_tokens=len(prompt_ids),
        )
        return PlannedReply(msg, prompt_ids, params, resolved)

    def _plan_regenerate(self, *, user_id: int, message_id: int, params: SamplingParams) -> Turn:
        with Session(self.db, expire_on_commit=False) as session:
            msg = crud.get_message(session, user_id=user_id, message_id=message_id)
            if msg is None or msg.role != "assistant" or msg.parent_id is None:
                raise ChatError("not_found", f"assistant message {message_id} not found", 404)
            user_msg = session.get(Message, msg.parent_id)
            if user_msg is None:
                raise LookupError(f"message {msg.parent_id}, the parent of {message_id}, no longer exists")
            user_msg_id = pk(user_msg)
            prompt_ids = self.render_prompt(self._history(session, user_msg))
            resolved = resolve_for_user(self.settings, session, user_id)
            index = crud.next_alternative_index(session, group=user_msg_id)
            reply = self._plan_reply(session, user_id, msg.conversation_id, user_msg, index, prompt_ids, params, resolved)
            return Turn(msg.conversation_id, user_msg_id, [reply])

    async def _reserved(self, user_id: int, n: int, plan, background: bool = False) -> Turn:
        """Hold ``n`` of the user's generation slots, then store the rows (off the event loop).
        The slots are given back by ``relay`` as each reply ends, or here if planning fails.
        Refused first if the user is over their request rate or storage quota."""
        wait = self._rate.hit(str(user_id))
        if wait is not None:
            self.metrics.refusals.labels(reason="rate_limited").inc()
            raise ChatError("rate_limited", f"at most {self.settings.request_limit} requests per minute; "
                                            f"try again in {int(wait) + 1} s", 429)
        self.reserve(user_id, n, background)

        def guarded() -> Turn:
            with Session(self.db) as session:
                held = crud.count_messages(session, user_id=user_id)
                chars = self._stored_chars(session, user_id)
            if held >= self.settings.max_messages_per_user:
                self.metrics.refusals.labels(reason="quota").inc()
                raise ChatError("quota", f"you store {held} messages, the limit is {self.settings.max_messages_per_user}: "
                                         "delete conversations you no longer need", 413)
            if chars >= self.settings.max_stored_chars_per_user:
                self.metrics.refusals.labels(reason="quota").inc()
                raise ChatError("quota", f"you store {chars} characters of messages, the limit is "
                                         f"{self.settings.max_stored_chars_per_user}: delete conversations you no longer need", 413)
            return plan()

        try:
            return await to_thread.run_sync(guarded, limiter=self._planning)
        except BaseException:
            self.release(user_id, n, background)
            raise

    def _stored_chars(self, session: Session, user_id: int) -> int:
        """The user's stored characters, counted at most once a minute (the count reads every row of theirs)."""
        cached = self._chars.get(user_id)
        now = time.monotonic()
        if cached is None or now - cached[1] > 60.0:
            cached = (crud.stored_chars(session, user_id=user_id), now)
            self._chars[user_id] = cached
        return cached[0]

    async def start_turn(self, *, user_id: int, conversation_id: int | None, content: str, alternatives: int = 1,
                         params: SamplingParams, parent_id: int | None = None, edit_of: int | None = None) -> Turn:
        self.check_content(content)
        if not 1 <= alternatives <= self.settings.max_alternatives:
            raise ChatError("bad_frame", f"alternatives must be between 1 and {self.settings.max_alternatives}", 422)
        return await self._reserved(user_id, alternatives, lambda: self._plan_turn(
            user_id=user_id, conversation_id=conversation_id, content=content, alternatives=alternatives,
            params=params, parent_id=parent_id, edit_of=edit_of))

    async def start_regenerate(self, *, user_id: int, message_id: int, params: SamplingParams) -> Turn:
        return await self._reserved(user_id, 1, lambda: self._plan_regenerate(user_id=user_id, message_id=message_id, params=params))

    def resolve(self, session: Session, user_id: int, policy: str | None) -> Resolved:
        """What serves a request: the user's own policy (None), or explicitly "base" or "global"
        (the global adapter, or the base while none is promoted)."""
        return resolve_for_user(self.settings, session, user_id, policy)

    async def add_plain_conversation(self, *, user_id: int, messages: list[dict], params: SamplingParams, n: int = 1,
                                     policy: str | None = None, background: bool = False,
                                     chat_id: str | None = None) -> Turn:
        """For the OpenAI route: store the given history as a new conversation, plan ``n`` replies
        (one alternative group, so they can be ranked) from ``policy`` (see ``resolve``).
        ``background``: a front end's background call (title, tags), with instructions of its own
        (the user's are not added) and slots of its own (``reserve``). ``chat_id``: the front end's own
        id of the chat (``service.external_chats``): the history joins that chat's conversation,
        and a regenerated reply joins the alternatives it regenerates.

        A last assistant message is a reply to continue (Open WebUI's Continue): the model goes on
        from its text, the client gets the new text only, and the stored reply is the whole (a new
        alternative beside the one continued). It is this server's, and can be rated and trained on,
        only when its start is a reply generated here in that chat (``external_chats.generated_start``);
        a text the client wrote or edited is stored as the client's."""
        partial = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None

        def work() -> Turn:
            with Session(self.db, expire_on_commit=False) as session:
                instructions = "" if background else self.instructions(session, user_id)
                if instructions:  # the user's own instructions come first, before a client's system prompt
                    if messages[0]["role"] == "system":
                        messages[0] = {"role": "system", "content": f"{instructions}\n\n{messages[0]['content']}"}
                    else:
                        messages.insert(0, {"role": "system", "content": instructions})
                last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
                title = last_user.strip()[:60] or "API chat"
                if chat_id is not None:
                    conv, parent = external_chats.attach(session, user_id=user_id, chat_id=chat_id, messages=messages, title=title)
                else:
                    conv, parent = crud.create_conversation(session, user_id=user_id, title=title), None
                    for m in messages:
                        parent = crud.add_message(session, conversation_id=conv.id, user_id=user_id, role=m["role"],
                                                  content=m["content"], parent_id=parent.id if parent else None)
                assert parent is not None  # the route refuses an empty history
                prompt_ids = self.render_prompt([{"role": m["role"], "content": m["content"]} for m in messages])
                origin = GENERATED
                if partial is not None:  # the model goes on from the partial reply, as if it had written it
                    prompt_ids = self._continuing(prompt_ids, partial)
                    ours = chat_id is not None and external_chats.generated_start(session, parent, partial)
                    origin = GENERATED if ours else "client"
                resolved = self.resolve(session, user_id, policy)
                conv_id, parent_id = pk(conv), pk(parent)
                first = crud.next_alternative_index(session, group=parent_id)
                replies = [self._plan_reply(session, user_id, conv_id, parent, first + k, prompt_ids, params, resolved,
                                            origin=origin) for k in range(n)]
                for reply in replies:
                    reply.background = background
                    reply.prefix = partial or ""
                return Turn(conv_id, parent_id, replies)

        if len(messages) > self.settings.max_messages:
            raise ChatError("too_large", f"{len(messages)} messages is over the limit of {self.settings.max_messages} "
                                         "(ASSISTANT_MAX_MESSAGES); send the newest turns only", 413)
        for text in [m["content"] for m in messages] + ([partial] if partial is not None else []):
            if len(text) > self.settings.max_message_chars:
                raise ChatError("too_large", f"a message is over {self.settings.max_message_chars} characters", 413)
        if not 1 <= n <= self.settings.max_alternatives:
            raise ChatError("bad_frame", f"n must be between 1 and {self.settings.max_alternatives} (ASSISTANT_MAX_ALTERNATIVES)", 400)
        return await self._reserved(user_id, n, work, background)

    # --- generation -----------------------------------------------------------------
    async def submit_turn(self, user_id: int, turn: Turn) -> tuple[list[tuple[PlannedReply, RequestStream]], ChatError | None]:
        """Enqueue a turn's replies in order. If the engine's queue fills up, the replies not enqueued
        are abandoned (their empty rows removed, their slots given back) and the error is returned
        beside the ones that did start."""
        started: list[tuple[PlannedReply, RequestStream]] = []
        for k, reply in enumerate(turn.replies):
            message_id = pk(reply.message)
            req_id = f"m{message_id}-{uuid.uuid4().hex[:8]}"
            stream = RequestStream(asyncio.get_running_loop())
            request = GenerationRequest(req_id, reply.prompt_ids, reply.params, reply.resolved.adapter, stream=stream,
                                        cache_salt=f"user:{user_id}")  # prefix reuse never crosses users
            run = self._best_of(reply, request) if len(turn.replies) == 1 else None
            try:
                if run is None:
                    self.engine.submit(request)
                else:
                    self._runs[message_id] = run
                    task = asyncio.create_task(run.run())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except QueueFull:
                self.metrics.refusals.labels(reason="busy").inc()
                rest = turn.replies[k:]
                self.release(user_id, len(rest), reply.background)
                await to_thread.run_sync(lambda: self._drop_rows([pk(r.message) for r in rest]))
                return started, ChatError("busy", "the server is busy; try again in a few seconds", 429)
            reply.request = request
            self._requests[message_id] = (user_id, req_id)
            started.append((reply, stream))
        return started, None

    async def forget_conversation(self, user_id: int, conversation_id: int) -> None:
        """Delete a conversation that was only a means (a front end's background call)."""
        def work() -> None:
            with Session(self.db) as session:
                conv = crud.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
                if conv is not None:
                    crud.delete_conversation(session, conv=conv)

        await to_thread.run_sync(work, limiter=self._planning)

    def _drop_rows(self, message_ids: list[int]) -> None:
        with Session(self.db) as session:
            for message_id in message_ids:
                msg = session.get(Message, message_id)
                if msg is not None:
                    session.delete(msg)
            session.commit()

    def cancel(self, *, user_id: int, message_id: int) -> bool:
        entry = self._requests.get(message_id)
        if entry is None or entry[0] != user_id:
            return False
        run = self._runs.get(message_id)
        if run is not None:
            run.cancel()
        else:
            self.engine.cancel(entry[1])
        return True

    def _best_of(self, reply: PlannedReply, request: GenerationRequest) -> ChoiceRun | None:
        """A best-of-n driver for ``reply`` when it is on (``ASSISTANT_BEST_OF_N``), the reply is the
        user's own or the global policy's with a stored reward, and the engine has ``n`` idle rows."""
        n = self.settings.best_of_n
        if n <= 1 or reply.resolved.adapter is None or reply.resolved.policy not in (Policy.USER, Policy.GLOBAL):
            return None
        if reply.params.temperature == 0:  # greedy: every candidate would be the same reply
            return None
        reward = self._rewards.get(reply.resolved.adapter)
        if reward is None:  # an adapter trained before rewards were stored, or on backbone directions
            return None
        stats = self.engine.stats()
        idle = stats.get("max_batch_size", 0) - stats.get("running", 0) - stats.get("queued", 0)
        if idle < n:  # counted only where best-of-n was possible and load declined it
            self.metrics.best_of.labels(n="1").inc()
            return None
        seed = reply.params.seed if reply.params.seed is not None else self._rng.getrandbits(63)
        tok: Any = self.engine.tokenizer  # a Hugging Face tokenizer, as in render_prompt
        reply.choice = ReplyChoice(
            prompt=tok.decode(reply.prompt_ids), n=n, block=self.settings.best_of_n_block,
            first_block=self.settings.best_of_n_first_block,
            max_new_tokens=reply.params.max_new_tokens, seed=seed,
            score=partial(reward.score, population_weight=self.settings.best_of_n_population_weight), harmful=self._rewards.harmful,
            decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
        self.metrics.best_of.labels(n=str(n)).inc()
        return ChoiceRun(self.engine, request, reply.choice)

    async def relay(self, user_id: int, reply: PlannedReply, stream: RequestStream,
                    stop: Sequence[str] = ()) -> AsyncIterator[TokenEvent | EndEvent]:
        """Yield the engine's events; store the finished reply before yielding the end event.

        ``stop``: strings that end the reply (OpenAI's ``stop``). The text is cut before the first
        one and generation is cancelled; text that could be the start of a stop string is held back
        until it is known not to be, so a stream never shows what the stored reply does not hold."""
        started = time.perf_counter()
        message_id = pk(reply.message)
        last: float | None = None  # when the previous token came
        text = ""  # the reply so far (cut at a stop string)
        sent = 0  # how much of it has been yielded
        hold = max((len(s) for s in stop), default=1) - 1
        stopped = False
        flt = self.reply_filter
        checked = 0  # with the serving filter: how much of the text its judge has passed
        filtered = False
        pending_ids: list[int] = []  # token ids and logprobs of text not yet yielded, sent with it
        pending_lp: list = []
        try:
            async for ev in stream:
                if isinstance(ev, TokenEvent):
                    now = time.perf_counter()
                    if last is None:
                        self.metrics.ttft.observe(now - started)
                    else:
                        self.metrics.inter_token.observe(now - last)
                    last = now
                    self.metrics.tokens.inc()
                    if stopped:
                        continue  # the tokens decoded before the cancel landed
                    text += ev.text
                    pending_ids += ev.token_ids
                    pending_lp += ev.logprobs or []
                    upto = len(text)
                    if stop:
                        hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in stop) if i >= 0]
                        if hits:
                            text, stopped = text[:min(hits)], True
                            self.cancel(user_id=user_id, message_id=message_id)
                        upto = len(text) if stopped else max(sent, len(text) - hold)
                    if flt is not None:  # only whole words the judge has passed are sent
                        whole = len(text) if stopped else flt.complete(text[:upto])
                        if whole > checked and flt.flags(text[:whole], checked):
                            text, stopped, filtered = flt.replace(text[:sent]), True, True
                            self.cancel(user_id=user_id, message_id=message_id)
                            whole = len(text)
                        checked = max(checked, whole)
                        upto = whole if filtered else max(sent, min(upto, whole))
                    if upto > sent:
                        yield TokenEvent(text[sent:upto], pending_ids, pending_lp or None)
                        sent, pending_ids, pending_lp = upto, [], []
                else:
                    if flt is not None and not filtered and len(text) > checked and flt.flags(text, checked):
                        text, filtered = flt.replace(text[:sent]), True  # the last word, held back, was flagged
                    if filtered:
                        ev = EndEvent(FILTERED, ev.completion_tokens, ev.prompt_tokens, ev.error)
                        self.metrics.filtered.inc()
                        logger.info("reply %s cut by the serving filter", message_id)
                    elif stopped:
                        ev = EndEvent("stop", ev.completion_tokens, ev.prompt_tokens, ev.error)
                    if sent < len(text):  # held back (a possible stop string, a word still open) or the redirect
                        yield TokenEvent(text[sent:], pending_ids, pending_lp or None)
                        sent, pending_ids, pending_lp = len(text), [], []
                    await to_thread.run_sync(lambda: self._store(reply, text, ev))
                    self.metrics.latency.observe(time.perf_counter() - started)
                    self.metrics.prompt_tokens.inc(ev.prompt_tokens)
                    self.metrics.generation_tokens.inc(ev.completion_tokens)
                    req = reply.request
                    if req is not None and req.scheduled_at is not None:
                        self.metrics.queue_time.observe(max(0.0, req.scheduled_at - req.submitted_at))
                    self.metrics.generations.labels(finish_reason=ev.finish_reason).inc()
                    yield ev
        finally:
            self._requests.pop(message_id, None)
            self._runs.pop(message_id, None)
            self.release(user_id, 1, reply.background)

    def _store(self, reply: PlannedReply, content: str, ev: EndEvent) -> None:
        with Session(self.db) as session:
            crud.finish_message(session, message_id=pk(reply.message), content=reply.prefix + content, finish_reason=ev.finish_reason,
                                prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                                best_of=reply.choice.record() if reply.choice is not None else None)
