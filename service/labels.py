"""What counts as a label: the one reader of the feedback tables.

Training (``learning/data.py``), the exports in trainers' formats (``service/exports.py``) and the
reward curve read labels here, so a user who trains elsewhere on an export trains on the pairs and
thumbs the product's own reward model learns from. The rules, decided once:

1. **Whose labels.** Only what a person gave (``Feedback.source`` in ``PERSON_SOURCES``: this UI,
   the API, Open WebUI's thumbs); an automated judge's flags are harm labels learning adds itself.
   Accounts an operator has not approved (``ASSISTANT_REGISTRATION=approval``) add nothing to
   training or to an operator's export (``approved_only``); a user's own export holds theirs.
2. **On what.** A label counts only on a reply this server generated (``is_generated_reply``), with
   text, in the labeller's own conversation: never on text a client sent as context.
3. **Pairs.** A ranking gives every (better, worse) pair of its replies, best..worst, among replies
   to the same turn (one ``parent_id``); sibling replies of one user turn (one alternative group)
   whose thumbs differ give up-beats-down pairs; siblings scored 1-10 (Open WebUI asks for a score)
   give higher-beats-lower pairs for what neither a ranking nor the thumbs decided. A pair of
   replies counts once, in that order of precedence, whichever way round a later label puts it.
4. **Identical text.** Two replies with the same text carry no preference: no pair between them.

Each thumbs rating is a ``Thumb`` (pointwise label, and a harm label where its reasons say so).
Records hold the messages themselves; ``Thread`` renders the conversation before a reply.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeGuard, cast

from sqlmodel import Session, col, select

from service.models import PERSON_SOURCES, Feedback, Message, Ranking, Rating, User, is_generated_reply, pk


class Thread:
    """Messages by id with all their ancestors, loaded in batches (one query per tree level)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_id: dict[int, Message] = {}

    def load(self, ids: Iterable[int]) -> None:
        frontier = {i for i in ids if i not in self.by_id}
        while frontier:
            rows = self.session.exec(select(Message).where(col(Message.id).in_(sorted(frontier)))).all()
            self.by_id.update({pk(m): m for m in rows})
            frontier = {m.parent_id for m in rows if m.parent_id is not None and m.parent_id not in self.by_id}

    def get(self, message_id: int) -> Message | None:
        return self.by_id.get(message_id)

    def before(self, reply: Message) -> list[dict[str, str]]:
        """The turns that led to ``reply`` (oldest first), following ``parent_id``; the reply itself excluded."""
        chain: list[dict[str, str]] = []
        seen: set[int] = set()
        parent = reply.parent_id
        while parent is not None and parent not in seen and parent in self.by_id:
            seen.add(parent)
            m = self.by_id[parent]
            chain.append({"role": m.role, "content": m.content})
            parent = m.parent_id
        return list(reversed(chain))


@dataclass(frozen=True)
class Pair:
    user_id: int
    chosen: Message
    rejected: Message
    source: str
    """``ranking:<id>`` | ``feedback:<up id>,<down id>`` | ``score:<higher id>,<lower id>``"""
    updated_at: datetime
    ranking_id: int | None = None
    feedback_ids: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """The same key as the training example made of it (``learning.data.PreferencePair.key``)."""
        return f"pair:{self.user_id}:{self.chosen.id}:{self.rejected.id}"


@dataclass(frozen=True)
class Thumb:
    feedback: Feedback
    message: Message

    @property
    def user_id(self) -> int:
        return self.feedback.user_id

    @property
    def up(self) -> bool:
        return self.feedback.rating == Rating.up

    @property
    def key(self) -> str:
        """The same key as the training example made of it (``learning.data.PointLabel.key``)."""
        return f"point:{self.feedback.id}"


@dataclass
class Labels:
    thread: Thread
    pairs: list[Pair] = field(default_factory=list)
    thumbs: list[Thumb] = field(default_factory=list)


def usable(msg: Message | None) -> TypeGuard[Message]:
    """Rule 2, less ownership: a reply this server generated, with text."""
    return msg is not None and is_generated_reply(msg) and bool(msg.content.strip())


def approved_user_ids(session: Session) -> list[int]:
    """Accounts whose labels training and an operator's export hold."""
    ids = session.exec(select(User.id).where(User.approved == True)).all()  # noqa: E712 (SQL, not Python)
    return list(cast(Sequence[int], ids))  # primary keys: a stored row's is never NULL


def read(session: Session, *, user_ids: Sequence[int] | None = None, approved_only: bool = True) -> Labels:
    """Every label of ``user_ids`` (None: every user), by the rules above."""
    f_stmt = select(Feedback).where(col(Feedback.source).in_(PERSON_SOURCES)).order_by(col(Feedback.id))
    r_stmt = select(Ranking).order_by(col(Ranking.id))
    if user_ids is not None:
        f_stmt = f_stmt.where(col(Feedback.user_id).in_(list(user_ids)))
        r_stmt = r_stmt.where(col(Ranking.user_id).in_(list(user_ids)))
    feedback = list(session.exec(f_stmt).all())
    rankings = list(session.exec(r_stmt).all())
    if approved_only:
        waiting = set(session.exec(select(User.id).where(User.approved == False)).all())  # noqa: E712 (SQL)
        feedback = [f for f in feedback if f.user_id not in waiting]
        rankings = [r for r in rankings if r.user_id not in waiting]

    labels = Labels(Thread(session))
    labels.thread.load({f.message_id for f in feedback} | {i for r in rankings for i in r.message_ids})
    seen: set[tuple[int, int, int]] = set()

    def add(user_id: int, better: Message, worse: Message, source: str, updated_at: datetime, *,
            ranking_id: int | None = None, feedback_ids: tuple[int, ...] = ()) -> None:
        if better.content == worse.content:  # rule 4
            return
        better_id, worse_id = pk(better), pk(worse)
        if (user_id, better_id, worse_id) in seen or (user_id, worse_id, better_id) in seen:  # rule 3: once
            return
        seen.add((user_id, better_id, worse_id))
        labels.pairs.append(Pair(user_id, better, worse, source, updated_at, ranking_id, feedback_ids))

    # 1. Rankings, best..worst.
    for r in rankings:
        ranked = [labels.thread.get(i) for i in r.message_ids]
        ordered = [m for m in ranked if usable(m) and m.user_id == r.user_id]
        for i, better in enumerate(ordered):
            for worse in ordered[i + 1:]:
                if better.parent_id == worse.parent_id:
                    add(r.user_id, better, worse, f"ranking:{r.id}", r.updated_at, ranking_id=r.id)

    # 2. Thumbs, and the pairs among siblings they and their scores decide.
    groups: dict[tuple[int, int], list[Thumb]] = defaultdict(list)
    for f in feedback:
        msg = labels.thread.get(f.message_id)
        if not usable(msg) or msg.user_id != f.user_id:
            continue
        thumb = Thumb(f, msg)
        labels.thumbs.append(thumb)
        if msg.alternative_group is not None:
            groups[(f.user_id, msg.alternative_group)].append(thumb)
    for (user_id, _group), rated in groups.items():
        for up in (t for t in rated if t.up):
            for down in (t for t in rated if not t.up):
                add(user_id, up.message, down.message, f"feedback:{up.feedback.id},{down.feedback.id}",
                    max(up.feedback.updated_at, down.feedback.updated_at), feedback_ids=(pk(up.feedback), pk(down.feedback)))
        # highest score first (the filter leaves no score None)
        scored = sorted((t for t in rated if t.feedback.score is not None), key=lambda t: -(t.feedback.score or 0))
        for i, a in enumerate(scored):
            for b in scored[i + 1:]:
                if a.feedback.score != b.feedback.score:
                    add(user_id, a.message, b.message, f"score:{a.feedback.id},{b.feedback.id}",
                        max(a.feedback.updated_at, b.feedback.updated_at), feedback_ids=(pk(a.feedback), pk(b.feedback)))
    return labels
