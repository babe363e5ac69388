"""API schemas, in families (XCreate for input, XPublic for output)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.models import REASONS, Rating
from service.passwords import password_problem

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
# Row ids are SQL INTEGER: PostgreSQL's is 32-bit, so a larger id is refused (422) before it reaches a query.
ID_MAX = 2**31 - 1
DbId = Annotated[int, Field(ge=1, le=ID_MAX)]
IdPath = Annotated[int, Path(ge=1, le=ID_MAX)]  # the same bound on a path parameter ({message_id}, {user_id})
# Stored text may not contain NUL: PostgreSQL text columns cannot hold it.
NO_NUL = r"^[^\x00]*$"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN, description="3-32 characters: letters, digits, _ . -")
    password: str = Field(min_length=12, max_length=128, description="12-128 characters, not a common password, not the username")

    @model_validator(mode="after")
    def _strong_enough(self) -> "UserCreate":
        if self.username.lower().startswith("owui-"):
            raise ValueError("usernames starting with owui- are reserved for users of a trusted proxy (service/proxy.py)")
        problem = password_problem(self.password, self.username)
        if problem:
            raise ValueError(problem)
        return self


class UserPublic(BaseModel):
    id: int
    username: str
    role: str
    approved: bool = True  # False: signed in, waiting for an operator (ASSISTANT_REGISTRATION=approval)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"


class ConversationPublic(BaseModel):
    id: int
    title: str
    updated_at: datetime
    snippet: str | None = None  # search results: the first matching message's text, around the match


Theme = Literal["light", "dark", "system"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    prefix: str  # the key's first characters
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str  # shown once: only its hash is stored


class PreferencesPublic(BaseModel):
    instructions: str
    temperature: float | None
    max_new_tokens: int | None
    theme: Theme
    max_instructions_chars: int  # the caps, so a client can say them before the server refuses
    max_new_tokens_limit: int


class PreferencesUpdate(BaseModel):
    """PUT /api/me/preferences: fields left out keep their value; null clears a reply default."""

    model_config = ConfigDict(extra="forbid")
    instructions: str | None = Field(default=None, pattern=NO_NUL)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_new_tokens: int | None = Field(default=None, ge=1)
    theme: Theme | None = None


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Rating
    # The schema lists the vocabulary; the validator says the fix when a client sends something else.
    reasons: list[str] = Field(default_factory=list, max_length=len(REASONS),
                               json_schema_extra={"items": {"type": "string", "enum": list(REASONS)}})
    comment: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    score: int | None = Field(default=None, ge=1, le=10, strict=True, description="1-10 beside the thumbs: between two replies to one "
                              "turn, the higher score is preferred (even when both are thumbs-up)")

    @field_validator("reasons")
    @classmethod
    def _known_reasons(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(REASONS))
        if unknown:
            raise ValueError(f"unknown reasons {unknown}; allowed: {list(REASONS)} (GET /api/feedback/reasons)")
        return list(dict.fromkeys(v))  # dedupe, keep order


class FeedbackPublic(BaseModel):
    id: int
    message_id: int
    rating: Rating
    reasons: list[str]
    comment: str | None
    updated_at: datetime
    score: int | None = None


class FeedbackBrief(BaseModel):
    rating: Rating
    reasons: list[str]
    comment: str | None
    score: int | None = None


class RankingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_ids: list[DbId] = Field(min_length=2, max_length=8, description="best first",
                                    json_schema_extra={"uniqueItems": True})

    @field_validator("message_ids")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("message_ids must be distinct")
        return v


class RankingPublic(BaseModel):
    id: int
    message_ids: list[int]
    alternative_group: int


class MessagePublic(BaseModel):
    id: int
    role: str
    content: str
    parent_id: int | None
    adapter_version: str | None
    feedback: FeedbackBrief | None
    alternative_group: int | None
    alternative_index: int
    finish_reason: str | None
    created_at: datetime
    origin: str = "generated"  # generated (by this server's model) | client (sent as context: not rateable)
    best_of: dict | None = None  # personal best-of-n: {"n", "block", "choices", "dropped"}; None = sampled once


class ConversationDetail(BaseModel):
    id: int
    title: str
    messages: list[MessagePublic]


class ChatFrame(BaseModel):
    """client → server ``chat`` frame on /api/chat."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["chat"]
    conversation_id: DbId | None = None
    content: str = Field(min_length=1, pattern=NO_NUL)
    alternatives: int = Field(default=1, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    parent_id: DbId | None = None
    # Edit and resend: this turn replaces user message ``edit_of`` (a new branch from the same point;
    # the old one stays). Excludes parent_id.
    edit_of: DbId | None = None


class CancelFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"]
    message_id: DbId


class RegenerateFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["regenerate"]
    message_id: DbId
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


class AuthFrame(BaseModel):
    type: Literal["auth"]
    token: str


# server → client frames on /api/chat (a fixed contract: fields are added, never renamed or dropped)


class FrameUser(BaseModel):
    id: int
    username: str
    role: str
    approved: bool


class ReadyFrame(BaseModel):
    """Sent once the connection is signed in."""

    type: Literal["ready"] = "ready"
    user: FrameUser


class StartFrame(BaseModel):
    """A reply began: its message id, which alternative it is, and the policy writing it."""

    type: Literal["start"] = "start"
    conversation_id: int
    user_message_id: int
    message_id: int
    alternative: int
    adapter_version: str | None  # the adapter's label, e.g. u7-v2 / global-v3; None = the base
    policy: str  # user | global | base


class TokenFrame(BaseModel):
    type: Literal["token"] = "token"
    message_id: int
    text: str


class FrameUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class EndFrame(BaseModel):
    """A reply ended (stored by then); ``detail`` only when generation failed."""

    type: Literal["end"] = "end"
    message_id: int
    finish_reason: str
    adapter_version: str | None
    usage: FrameUsage
    detail: str | None = None
    best_of: dict | None = None  # how personal best-of-n chose the reply (MessagePublic.best_of); None = sampled once


class ErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    code: str
    detail: str


class PongFrame(BaseModel):
    type: Literal["pong"] = "pong"


ServerFrame = ReadyFrame | StartFrame | TokenFrame | EndFrame | ErrorFrame | PongFrame


def frame_json(frame: ServerFrame) -> dict:
    """A server frame as the JSON object sent (an ``end`` frame's ``detail`` only when it has one)."""
    data = frame.model_dump(mode="json")
    if isinstance(frame, EndFrame) and frame.detail is None:
        del data["detail"]
    return data


# --- OpenAI-compatible ----------------------------------------------------------

class OAIContentPart(BaseModel):
    """One part of a content array. Only text parts are served; others are refused by name (400)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = Field(default=None, pattern=NO_NUL)


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, …: accepted, not used
    # "developer" is OpenAI's newer name for the system role; "tool" turns carry tool results (refused)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[OAIContentPart] | None = None

    def text(self) -> str:
        """The message's text: a string, or the text parts of an array joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content)

    @field_validator("content")
    @classmethod
    def _no_nul(cls, v):
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("content must not contain NUL characters")
        return v


class OAIStreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class OAIChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are accepted; known unsupported ones get a 400
    model: str | None = None
    messages: list[OAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: OAIStreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)  # and at most ASSISTANT_MAX_ALTERNATIVES (checked in the route)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # torch seeds are 64-bit
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if isinstance(v, list) and any(len(s) > 200 for s in v) or isinstance(v, str) and len(v) > 200:
            raise ValueError("stop sequences are limited to 200 characters")
        return v


# OpenAI's response shapes (chat.completion, chat.completion.chunk, model list), plus this
# server's own fields: each choice's ``message_id`` (rate or rank it), ``adapter_version`` and
# ``conversation_id``.


class OAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OAITopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class OAITokenLogprob(OAITopLogprob):
    top_logprobs: list[OAITopLogprob]


class OAILogprobs(BaseModel):
    content: list[OAITokenLogprob]
    refusal: None = None


class OAIAssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class OAIChoice(BaseModel):
    index: int
    message: OAIAssistantMessage
    finish_reason: str
    logprobs: OAILogprobs | None
    message_id: int


class OAIChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[OAIChoice]
    usage: OAIUsage
    adapter_version: str | None
    conversation_id: int


class OAIDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class OAIChunkChoice(BaseModel):
    index: int
    delta: OAIDelta
    finish_reason: str | None = None
    logprobs: OAILogprobs | None = None  # sent only when asked for
    message_id: int | None = None  # on each choice's first chunk


class OAIChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[OAIChunkChoice]
    adapter_version: str | None
    conversation_id: int
    usage: OAIUsage | None = None  # only on the last chunk, with stream_options.include_usage


def chunk_json(chunk: OAIChatCompletionChunk) -> dict:
    """A chunk as sent: OpenAI's optional fields (a delta's role/content, a choice's logprobs and
    message_id, the usage) appear only when they have a value."""
    data = chunk.model_dump(mode="json")
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        for key in ("logprobs", "message_id"):
            if choice[key] is None:
                del choice[key]
    if data["usage"] is None:
        del data["usage"]
    return data


class OAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "assistant"


class OAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OAIModel]


# --- the learning loop: operator routes (service.routes.admin) and a user's view (service.routes.me) ---


class TrainingRunCreate(BaseModel):
    user_ids: list[DbId] | None = Field(None, max_length=10_000,
                                        description="Users to train; null = the global adapter and everyone with enough feedback.")


class TrainingRunQueued(BaseModel):
    id: int
    status: str


class TrainingResultPublic(BaseModel):
    user_id: int | None
    adapter_version: int | None
    promoted: bool
    reason: str | None
    metrics: dict[str, Any]


class TrainingRunPublic(BaseModel):
    id: int
    status: str
    trigger: str
    user_ids: list[int] | None
    progress: float
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[TrainingResultPublic]


class AdapterVersionPublic(BaseModel):
    version: int
    label: str
    status: str
    reason: str | None
    created_at: datetime
    metrics: dict[str, Any]


class AdapterScopePublic(BaseModel):
    user_id: int | None
    username: str | None
    active_version: int | None
    versions: list[AdapterVersionPublic]


class MyAdapterPublic(BaseModel):
    policy: str  # user | global | base: what serves you now
    active_version: int | None
    active_label: str | None
    versions: list[AdapterVersionPublic]


class SchedulePublic(BaseModel):
    cron: str
    enabled: bool
    last_fired_at: datetime | None = None


class ScheduleUpdate(BaseModel):
    cron: str = Field(..., max_length=64, description="Five-field crontab, local time, e.g. '0 2 * * *'.")
    enabled: bool = True


class StatsPublic(BaseModel):
    feedback_per_day: list[dict[str, Any]]
    reward_model: dict[str, Any] | None
    # the newest run's audit of who fed the shared models: per user, labels, thumbs-up on replies
    # the harm judge flags, and whether their labels were kept out of the shared pool
    pool_audit: list[dict[str, Any]] | None = None


class LabelCounts(BaseModel):
    up: int
    down: int
    rankings: int


class RoundPublic(BaseModel):
    """One training round of this user's adapter: the labels it could use, and what its gate measured."""

    version: int | None  # None: the ratings since the last round, not trained on yet
    label: str | None
    status: str | None
    created_at: datetime | None
    new_labels: LabelCounts  # ratings given in this round (after the previous version, up to this one)
    reward_labels: int | None  # labels the reward model fitted for this user
    heldout_accuracy: float | None  # the user's held-out pairs the reward model ordered right
    win_rate_vs_base: float | None  # gate: share of prompts where this adapter's reply out-scored the base's
    reward: float | None  # gate: the adapter's mean reward under this round's reward model
    base_reward: float | None  # gate: the base's mean reward, same prompts, same reward model
    reason: str | None


class LearnedPublic(BaseModel):
    policy: str  # user | global | base: what serves you now
    served_label: str | None
    totals: LabelCounts
    traits: list[dict[str, Any]]  # the reply traits that move this user's reward most, with direction
    traits_from: str | None  # the adapter version whose reward model they come from
    rounds: list[RoundPublic]  # oldest first; the last is the ratings not yet trained on


# --- operator user management (service.routes.users) ---


class UserAdminPublic(BaseModel):
    id: int
    username: str
    role: str
    approved: bool
    created_at: str
    feedback: int
    rankings: int
    shared_pool_excluded: bool = False


class SharedPoolUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    excluded: bool = Field(strict=True, description="true: the user's labels and prompts stay out of the shared models")
