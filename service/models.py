"""Database tables (SQLModel). Nothing SQLite-only: the same models run on PostgreSQL.

The data flows one way: message rows -> feedback/ranking rows -> training
snapshots -> adapter versions. Every assistant reply records the adapter
version that produced it (``adapter_version_id``; null = base model).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy import true as sa_true
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Keyed(Protocol):
    @property
    def id(self) -> int | None: ...


def pk(row: _Keyed) -> int:
    """The primary key of a row read from or flushed to the database (tables declare ``id: int | None``
    because a row built in Python has none until it is flushed; reading it earlier is a bug, said here)."""
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has no id yet: flush it to the database first")
    return row.id


class Role(str, Enum):
    user = "user"
    operator = "operator"


class Rating(str, Enum):
    up = "up"
    down = "down"


# The reason vocabulary. Harm reasons feed the harm model (learning/data.py).
NEGATIVE_REASONS = ("harmful", "offensive", "inaccurate", "unhelpful", "too_long", "too_short", "refused", "off_topic", "rude")
POSITIVE_REASONS = ("helpful", "accurate", "concise", "detailed", "well_formatted", "friendly", "creative")
REASONS = NEGATIVE_REASONS + POSITIVE_REASONS
HARM_REASONS = ("harmful", "offensive", "rude")


class RunStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class AdapterStatus(str, Enum):
    candidate = "candidate"  # published, not yet judged
    promoted = "promoted"  # passed the gate (may or may not be the active one)
    rejected = "rejected"  # failed the gate; kept for inspection
    retired = "retired"  # rolled back past / reset by the user


# SQLite hands a new row max(id) + 1, reusing a deleted newest id; these tables' ids are named by
# tokens, keys or provenance, so they never reuse one (AUTOINCREMENT; migration 0009, issue 28 H1).
NEVER_REUSED_IDS = {"sqlite_autoincrement": True}


class User(SQLModel, table=True):
    __table_args__ = NEVER_REUSED_IDS
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=64)
    password_hash: str = Field(max_length=255)
    role: Role = Field(default=Role.user)
    created_at: datetime = Field(default_factory=utcnow)
    # False while an operator has not approved a self-registered account (ASSISTANT_REGISTRATION=approval):
    # it can sign in, but neither chat nor rate, and none of its labels reach training. Migration 0005.
    approved: bool = Field(default=True, sa_column_kwargs={"server_default": sa_true()})
    # Carried in every session token; signing out or a new password bumps it, which ends every
    # session at once (a token with an older version is refused). Migration 0005.
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # When the user last deleted all their ratings (DELETE /api/me/feedback): importers of ratings kept
    # elsewhere (Open WebUI's export) skip ratings made before it. Migration 0008.
    ratings_deleted_at: datetime | None = None
    # Random per account and carried in its tokens: a token names this row, not merely its id, so it
    # can never sign in as a later account that got the same id (issue 28, H1). Migration 0009.
    token_salt: str = Field(default_factory=lambda: secrets.token_hex(8), max_length=32,
                            sa_column_kwargs={"server_default": ""})
    # An operator keeps this user's labels and prompts out of the shared models (issue 28, M8;
    # migration 0013); their own adapter still learns from them.
    shared_pool_excluded: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})


class UserPreference(SQLModel, table=True):
    """A user's own settings: custom instructions (the system prompt of their new conversations),
    reply defaults used when a request does not say, and the UI theme. One row per user, made on
    first save."""

    user_id: int = Field(foreign_key="user.id", primary_key=True)
    instructions: str = Field(default="", sa_column=Column(Text, nullable=False, default="", server_default=""))
    temperature: float | None = None
    max_new_tokens: int | None = None
    theme: str = Field(default="system", max_length=16, sa_column_kwargs={"server_default": "system"})
    updated_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A user's API key for ``/v1`` and ``/api`` (``Authorization: Bearer``). Only its SHA-256 is
    stored: a key is 256 random bits, so a fast hash is as safe as a slow one and costs nothing per
    request. Deleting the row revokes the key at once."""

    __table_args__ = NEVER_REUSED_IDS
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16)  # the key's first characters, to tell keys apart
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None


class Conversation(SQLModel, table=True):
    __table_args__ = NEVER_REUSED_IDS
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    title: str = Field(default="New chat", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    # The client's own id of this chat (Open WebUI's chat id; migration 0011): its later requests
    # extend this conversation's tree instead of starting a new one. Null for this server's own chats.
    external_id: str | None = Field(default=None, max_length=128, index=True)


GENERATED = "generated"  # Message.origin of a reply this server's model produced
OPENWEBUI_SOURCE = "openwebui"  # Feedback.source of a rating imported from Open WebUI (a person's, like "human")
PERSON_SOURCES = ("human", OPENWEBUI_SOURCE)  # Feedback.source values a person gave (not a judge)


def is_generated_reply(msg: "Message | None") -> bool:
    """A reply the model produced here: the only kind a user may rate or rank, or training may use."""
    return msg is not None and msg.role == "assistant" and msg.origin == GENERATED


class Message(SQLModel, table=True):
    __table_args__ = NEVER_REUSED_IDS
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)  # owner, denormalized for access checks
    role: str = Field(max_length=16)  # system | user | assistant
    content: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    parent_id: int | None = Field(default=None, foreign_key="message.id", index=True)
    # Sibling replies to one user turn share a group (the user message id) and differ by index.
    alternative_group: int | None = Field(default=None, index=True)
    alternative_index: int = Field(default=0)
    # Which policy produced an assistant reply. adapter_version_id null = base model.
    # Indexed (migration 0002): replies per adapter version, and PostgreSQL does not index FKs itself.
    adapter_version_id: int | None = Field(default=None, foreign_key="adapterversion.id", index=True)
    adapter_label: str | None = Field(default=None, max_length=64)
    policy: str | None = Field(default=None, max_length=32)  # user | global | base | explore:<what>
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    finish_reason: str | None = Field(default=None, max_length=16)  # stop | length | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    # Who wrote the content: "generated" = this server's model (the only replies that can be rated,
    # ranked or trained on), "client" = sent by a client (a user's turn, or the earlier assistant turns
    # an OpenAI client sends as context). Migration 0004.
    origin: str = Field(default="client", max_length=16, sa_column_kwargs={"server_default": "client"})
    # Personal best-of-n (migration 0010): {"n", "block", "choices": chosen index per block, "dropped"}; null = one sample.
    best_of: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Feedback(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("user_id", "message_id", name="uq_feedback_user_message"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    rating: Rating
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    source: str = Field(default="human", max_length=32)  # human | judge:<name>
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    score: int | None = None  # 1-10 beside the thumbs (Open WebUI asks for one; migration 0012)


class Ranking(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("user_id", "alternative_group", name="uq_ranking_user_group"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    alternative_group: int = Field(index=True)  # the user message id
    message_ids: list[int] = Field(sa_column=Column(JSON, nullable=False))  # best .. worst
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AdapterVersion(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("user_id", "version", name="uq_adapter_user_version"), NEVER_REUSED_IDS)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)  # null = global adapter
    version: int
    status: AdapterStatus = Field(default=AdapterStatus.candidate)
    path: str = Field(max_length=1024)  # relative to the adapter store root
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    training_run_id: int | None = Field(default=None, foreign_key="trainingrun.id")
    created_at: datetime = Field(default_factory=utcnow)


class ActiveAdapter(SQLModel, table=True):
    """Which version serves a scope ("global" or "user:<id>"). Flipped last when publishing."""

    scope: str = Field(primary_key=True, max_length=64)
    adapter_version_id: int | None = Field(default=None, foreign_key="adapterversion.id")
    updated_at: datetime = Field(default_factory=utcnow)


class TrainingRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    status: RunStatus = Field(default=RunStatus.queued, index=True)
    trigger: str = Field(default="manual", max_length=32)  # manual | schedule | cli
    user_ids: list[int] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    requested_by: int | None = Field(default=None, foreign_key="user.id")
    progress: float = 0.0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    worker_id: str | None = Field(default=None, max_length=128)
    heartbeat_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TrainingResult(SQLModel, table=True):
    """One per user (or the global adapter, user_id null) trained in a run; also that user's job.

    A queued result is a job in the database queue: any worker takes it with one conditional
    UPDATE (``learning.worker.claim_job``), records its ``worker_id`` and beats ``heartbeat_at``.
    """

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="trainingrun.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id")
    status: RunStatus = Field(default=RunStatus.queued, index=True)
    adapter_version_id: int | None = Field(default=None, foreign_key="adapterversion.id")
    promoted: bool = False
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # The job's columns (migration 0003, appended so upgraded and fresh databases agree).
    worker_id: str | None = Field(default=None, max_length=128)
    progress: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None


class TrainingSnapshot(SQLModel, table=True):
    """Provenance: exactly which feedback a run trained on."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="trainingrun.id", index=True)
    sha256: str = Field(max_length=64)
    feedback_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ranking_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    stats: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Schedule(SQLModel, table=True):
    id: int = Field(default=1, primary_key=True)
    cron: str = Field(default="0 2 * * *", max_length=64)
    enabled: bool = True
    last_fired_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
