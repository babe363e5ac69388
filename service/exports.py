"""Labels in the formats trainers read (TRL's conversational datasets), and a user's conversations.

    preference  one row per ranked pair: {"prompt": [messages], "chosen": [reply], "rejected": [reply]}
                (TRL's DPO/RLOO/reward trainers), every ordered pair of a ranking best → worst
    kto         one row per thumbs rating: {"prompt": [messages], "completion": [reply], "label": bool}
                (TRL's KTOTrainer, its unpaired preference format)

Each row also says which adapter and policy wrote each reply (``chosen_adapter``/``chosen_policy``,
``adapter``/``policy``), the user, and the row ids, so a trainer can filter. Only replies this
server generated appear (never text a client sent as context), only human labels, and only what
still exists: deleted feedback, conversations and accounts are gone from the rows they fed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import combinations
from typing import Any, Literal

from sqlmodel import Session, col, select

from service.adapter_store import label_of
from service.models import PERSON_SOURCES, AdapterVersion, Feedback, Message, Ranking, User, is_generated_reply

Format = Literal["preference", "kto"]
FORMATS: tuple[str, ...] = ("preference", "kto")


class _Messages:
    """Messages by id with their ancestors, loaded in batches (one query per tree level)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_id: dict[int, Message] = {}
        self.labels: dict[int, str] = {}

    def load(self, ids: Sequence[int]) -> None:
        frontier = {i for i in ids if i not in self.by_id}
        while frontier:
            rows = self.session.exec(select(Message).where(col(Message.id).in_(sorted(frontier)))).all()
            self.by_id.update({m.id: m for m in rows})
            frontier = {m.parent_id for m in rows if m.parent_id is not None and m.parent_id not in self.by_id}
        versions = {m.adapter_version_id for m in self.by_id.values() if m.adapter_version_id} - set(self.labels)
        if versions:
            for v in self.session.exec(select(AdapterVersion).where(col(AdapterVersion.id).in_(sorted(versions)))).all():
                self.labels[v.id] = label_of(v)

    def prompt(self, reply: Message) -> list[dict[str, str]]:
        chain, seen, parent = [], set(), reply.parent_id
        while parent is not None and parent not in seen and parent in self.by_id:
            seen.add(parent)
            m = self.by_id[parent]
            chain.append({"role": m.role, "content": m.content})
            parent = m.parent_id
        return list(reversed(chain))

    def adapter(self, m: Message) -> str | None:
        return self.labels.get(m.adapter_version_id, m.adapter_label) if m.adapter_version_id else None


def _reply(m: Message) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": m.content}]


def preference_rows(session: Session, *, user_ids: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    stmt = select(Ranking).order_by(col(Ranking.id))
    if user_ids is not None:
        stmt = stmt.where(col(Ranking.user_id).in_(list(user_ids)))
    rankings = session.exec(stmt).all()
    msgs = _Messages(session)
    msgs.load([i for r in rankings for i in r.message_ids])
    for r in rankings:
        replies = [msgs.by_id.get(i) for i in r.message_ids]
        replies = [m for m in replies if m is not None and m.user_id == r.user_id and is_generated_reply(m)]
        for better, worse in combinations(replies, 2):
            if better.content == worse.content:
                continue  # no preference to learn between two identical replies
            yield {"prompt": msgs.prompt(better), "chosen": _reply(better), "rejected": _reply(worse),
                   "chosen_adapter": msgs.adapter(better), "chosen_policy": better.policy,
                   "rejected_adapter": msgs.adapter(worse), "rejected_policy": worse.policy,
                   "user_id": r.user_id, "ranking_id": r.id, "chosen_id": better.id, "rejected_id": worse.id}


def kto_rows(session: Session, *, user_ids: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    stmt = select(Feedback).where(col(Feedback.source).in_(PERSON_SOURCES)).order_by(col(Feedback.id))
    if user_ids is not None:
        stmt = stmt.where(col(Feedback.user_id).in_(list(user_ids)))
    feedback = session.exec(stmt).all()
    msgs = _Messages(session)
    msgs.load([f.message_id for f in feedback])
    for f in feedback:
        m = msgs.by_id.get(f.message_id)
        if m is None or m.user_id != f.user_id or not is_generated_reply(m):
            continue
        yield {"prompt": msgs.prompt(m), "completion": _reply(m), "label": f.rating.value == "up",
               "reasons": f.reasons, "adapter": msgs.adapter(m), "policy": m.policy,
               "user_id": f.user_id, "feedback_id": f.id, "message_id": m.id}


def rows(session: Session, fmt: Format, *, user_ids: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    return preference_rows(session, user_ids=user_ids) if fmt == "preference" else kto_rows(session, user_ids=user_ids)


def jsonl(rows_: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in rows_:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def approved_user_ids(session: Session) -> list[int]:
    """Whose labels an operator export holds: approved accounts (what training counts)."""
    return list(session.exec(select(User.id).where(User.approved == True)).all())  # noqa: E712 (SQL, not Python)
