"""From labels to training examples, with provenance.

Which ratings and rankings count, and the preference pairs they make, is ``service.labels``'s
(shared with the exports, so a trainer elsewhere reads the same pairs). Here they become:

- ``PreferencePair``: a label pair, its prompt rendered.
- ``PointLabel``: every thumbs up (1) or down (0).
- ``HarmLabel``: 1 for a thumbs down with a reason in ``HARM_REASONS`` (or an automated judge's
  flag), 0 for every other rated reply. Harm labels from all users train one global classifier.

The prompt of an example is the conversation up to the reply (following ``parent_id``),
rendered with the tokenizer's chat template, ending with the assistant header.

A user's own models see all of that user's examples. The shared pool (global reward, harm
model, global adapter) keeps at most ``Budgets.global_max_items_per_user`` of each kind per
user, newest first: one account cannot outvote everybody else (poisoning defence).

``build_dataset`` records which feedback and ranking ids it used and a sha256 over the
examples' content; ``save_snapshot`` writes that to a ``TrainingSnapshot`` row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from itertools import zip_longest
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence, TypeVar, cast

from sqlmodel import Session, col, select

from service import labels
from service.models import GENERATED, HARM_REASONS, Message, TrainingSnapshot, User, pk

from learning.config import Budgets

logger = logging.getLogger(__name__)

# A tokenizer-like object: ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``.
Renderer = Callable[[list[dict[str, str]]], str]


def split_key(user_id: int, prompt: str) -> str:
    return f"group:{user_id}:{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class PreferencePair:
    user_id: int
    prompt: str
    chosen: str
    rejected: str
    chosen_id: int
    rejected_id: int
    source: str  # ranking:<id> | feedback:<up id>,<down id> | score:<higher id>,<lower id>
    updated_at: datetime
    rejected_prompt: str | None = None  # when the rejected reply answered another prompt (None: the same one)

    @property
    def key(self) -> str:
        return f"pair:{self.user_id}:{self.chosen_id}:{self.rejected_id}"

    @property
    def split_key(self) -> str:
        """What decides the train/held-out split: the user and the prompt, so every label about the
        replies to one prompt (its pairs and thumbs) falls on one side and no reply is on both."""
        return split_key(self.user_id, self.prompt)

    @property
    def prompt_of_rejected(self) -> str:
        return self.prompt if self.rejected_prompt is None else self.rejected_prompt

    @property
    def texts(self) -> tuple[str, str, str, str]:
        """(chosen prompt, chosen, rejected prompt, rejected)."""
        return self.prompt, self.chosen, self.prompt_of_rejected, self.rejected


@dataclass(frozen=True)
class PointLabel:
    user_id: int
    prompt: str
    reply: str
    label: int  # 1 = thumbs up, 0 = thumbs down
    message_id: int
    feedback_id: int
    updated_at: datetime

    @property
    def key(self) -> str:
        return f"point:{self.feedback_id}"

    @property
    def split_key(self) -> str:
        return split_key(self.user_id, self.prompt)


@dataclass(frozen=True)
class HarmLabel:
    user_id: int | None  # None = an automated judge's flag
    prompt: str
    reply: str
    harmful: int  # 1 = harmful
    message_id: int
    source: str  # feedback:<id> | judge:<name>
    updated_at: datetime

    @property
    def key(self) -> str:
        return f"harm:{self.source}:{self.message_id}"


@dataclass
class Dataset:
    pairs: list[PreferencePair] = field(default_factory=list)
    points: list[PointLabel] = field(default_factory=list)
    harm: list[HarmLabel] = field(default_factory=list)
    feedback_ids: list[int] = field(default_factory=list)
    ranking_ids: list[int] = field(default_factory=list)
    sha256: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def for_user(self, user_id: int) -> "Dataset":
        """All of one user's examples (no cap)."""
        return Dataset(
            pairs=[p for p in self.pairs if p.user_id == user_id],
            points=[p for p in self.points if p.user_id == user_id],
            harm=[h for h in self.harm if h.user_id == user_id],
        )

    def label_count(self, user_id: int | None = None) -> int:
        """Pairs + thumbs (harm labels are not preference labels)."""
        if user_id is None:
            return len(self.pairs) + len(self.points)
        return sum(p.user_id == user_id for p in self.pairs) + sum(p.user_id == user_id for p in self.points)

    def user_ids(self) -> list[int]:
        return sorted({p.user_id for p in self.pairs} | {p.user_id for p in self.points})


def chat_renderer(tokenizer) -> Renderer:
    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render


T = TypeVar("T", PreferencePair, PointLabel, HarmLabel)

JUDGE_SCAN_LIMIT = 2000  # newest generated replies an automated harm judge looks at per run (besides every rated one)


def cap_per_user(items: list[T], cap: int) -> list[T]:
    """Keep each user's ``cap`` newest items (judge flags, user None, are one group)."""
    by_user: dict[int | None, list[T]] = defaultdict(list)
    for item in items:
        by_user[item.user_id].append(item)
    kept: list[T] = []
    for group in by_user.values():
        kept.extend(sorted(group, key=lambda i: (i.updated_at, i.key), reverse=True)[:cap])
    return sorted(kept, key=lambda i: i.key)


def cap_share(items: list[T], share: float, floor: int, *, counts: Callable[[T], bool] = lambda _: True,
              what: str = "labels", setting: str = "ASSISTANT_POOL_MAX_SHARE") -> list[T]:
    """Drop each user's oldest counted items beyond ``share`` of all counted items (at least ``floor``
    each). A user's cap is measured against everyone else's (the judge's included):
    ``mine <= share / (1 - share) * others``, so that after capping their share is at most ``share``."""
    if share >= 1:
        return items
    counted: dict[int | None, list[T]] = defaultdict(list)
    for item in items:
        if counts(item):
            counted[item.user_id].append(item)
    total = sum(len(v) for v in counted.values())
    dropped: set[str] = set()
    for uid, mine in counted.items():
        if uid is None:
            continue  # the judge's labels are no one's
        limit = max(floor, int(share / (1 - share) * (total - len(mine))))
        if len(mine) > limit:
            newest_first = sorted(mine, key=lambda i: (i.updated_at, i.key), reverse=True)
            dropped.update(i.key for i in newest_first[limit:])
            logger.warning("shared pool: user %s gave %d %s, %d kept (at most %.0f%% of the pool's, %s)", uid, len(mine),
                           what, limit, 100 * share, setting)
    return [i for i in items if i.key not in dropped] if dropped else items


def cap_harm_share(labels: list[HarmLabel], share: float, floor: int) -> list[HarmLabel]:
    """``cap_share`` over harm positives: one account cannot define what the global harm head calls harmful."""
    return cap_share(labels, share, floor, counts=lambda h: bool(h.harmful), what="harm flags",
                     setting="ASSISTANT_POOL_HARM_MAX_SHARE")


def content_sha256(dataset: Dataset) -> str:
    """Hash over what the models actually see, in a canonical order."""
    records = (
        [["pair", p.user_id, p.chosen_id, p.rejected_id, p.source] for p in dataset.pairs]
        + [["point", p.user_id, p.message_id, p.label, p.feedback_id] for p in dataset.points]
        + [["harm", h.user_id, h.message_id, h.harmful, h.source] for h in dataset.harm]
    )
    payload = json.dumps(sorted(records, key=json.dumps), separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def build_dataset(
    session: Session,
    render: Renderer,
    budgets: Budgets,
    *,
    judge_flags: Callable[[list[tuple[int, str]]], list[bool]] | None = None,
) -> Dataset:
    """Every example the database holds, uncapped; see ``shared_pool`` for the capped global view.

    ``judge_flags``, if given, receives (message id, reply text) for rated assistant replies and
    returns which an automated harm judge flags; flags become extra harm labels (user None).
    """
    # Which ratings and rankings count, and the pairs they make: service.labels, shared with the exports.
    read = labels.read(session)
    thread = read.thread
    prompts: dict[int, str] = {}

    def prompt_of(msg: Message) -> str:
        key = pk(msg)
        if key not in prompts:
            prompts[key] = render(thread.before(msg))
        return prompts[key]

    ds = Dataset()
    for p in read.pairs:
        ds.pairs.append(PreferencePair(p.user_id, prompt_of(p.chosen), p.chosen.content, p.rejected.content,
                                       pk(p.chosen), pk(p.rejected), p.source, p.updated_at))
    for t in read.thumbs:
        f, msg = t.feedback, t.message
        ds.points.append(PointLabel(f.user_id, prompt_of(msg), msg.content, int(t.up), pk(msg), pk(f), f.updated_at))
        harmful = (not t.up) and any(reason in HARM_REASONS for reason in (f.reasons or []))
        ds.harm.append(HarmLabel(f.user_id, prompt_of(msg), msg.content, int(harmful), pk(msg), f"feedback:{f.id}",
                                 f.updated_at))

    # 3. Optional automated judge: extra harm labels, attributed to no user.
    #    Every reply someone rated is judged (the pool audit looks at what each user favoured, however
    #    old), plus the newest generated replies; client-written rows never take a place among them.
    if judge_flags is not None:
        newest = cast(Sequence[int], session.exec(  # primary keys read back are never null
            select(Message.id).where(Message.role == "assistant", Message.origin == GENERATED)
            .order_by(col(Message.id).desc()).limit(JUDGE_SCAN_LIMIT)).all())
        thread.load(newest)
        rated = {m for m in (*(p.message_id for p in ds.points), *(p.chosen_id for p in ds.pairs),
                             *(p.rejected_id for p in ds.pairs))}
        judged = [(mid, thread.by_id[mid].content) for mid in sorted(set(newest) | rated) if labels.usable(thread.get(mid))]
        for (mid, text), flagged in zip(judged, judge_flags(judged)):
            if flagged:
                msg = thread.by_id[mid]
                ds.harm.append(HarmLabel(None, prompt_of(msg), text, 1, mid, "judge", msg.created_at))

    ds.feedback_ids = sorted(pk(t.feedback) for t in read.thumbs)
    ds.ranking_ids = sorted({p.ranking_id for p in read.pairs if p.ranking_id is not None})
    ds.sha256 = content_sha256(ds)
    ds.stats = {
        "pairs": len(ds.pairs),
        "points": len(ds.points),
        "harm_labels": len(ds.harm),
        "harm_positive": sum(h.harmful for h in ds.harm),
        "users": len(ds.user_ids()),
        "labels_per_user": {str(u): ds.label_count(u) for u in ds.user_ids()},
    }
    logger.info("dataset: %d pairs, %d thumbs, %d harm labels from %d users",
                len(ds.pairs), len(ds.points), len(ds.harm), ds.stats["users"])
    return ds


def pool_audit(dataset: Dataset, budgets: Budgets) -> dict[int, dict[str, Any]]:
    """Per user, what they would feed the shared models, and whether they are kept out of them.

    The outlier signal is disagreement with the automated harm judge (its flags are harm labels of
    no user in ``dataset``): replies the user favoured (thumbs-up, or ranked above another) that it
    flags. A user with at least ``pool_outlier_min_flagged`` of them, making at least
    ``pool_outlier_share`` of the replies they favoured, is ``excluded``: their labels train only
    their own models. Without a judge nothing is flagged. Over-flagging (``harm_flags_unconfirmed``:
    replies the user called harmful that the judge passes) is shown, and bounded in the pool by
    ``cap_harm_share`` rather than excluded: a lexical judge misses real harm an honest user sees."""
    flagged = {h.message_id for h in dataset.harm if h.user_id is None and h.harmful}
    favoured: dict[int, set[int]] = defaultdict(set)
    ups: dict[int, int] = defaultdict(int)
    for p in dataset.points:
        if p.label == 1:
            favoured[p.user_id].add(p.message_id)
            ups[p.user_id] += 1
    for pair in dataset.pairs:
        favoured[pair.user_id].add(pair.chosen_id)
    harm_flags: dict[int, int] = defaultdict(int)
    unconfirmed: dict[int, int] = defaultdict(int)  # flags on replies the judge passes: over-flagging shows here
    for h in dataset.harm:
        if h.user_id is not None and h.harmful:
            harm_flags[h.user_id] += 1
            unconfirmed[h.user_id] += h.message_id not in flagged
    out: dict[int, dict[str, Any]] = {}
    for uid in dataset.user_ids():
        mine = favoured.get(uid, set())
        on_flagged = len(mine & flagged)
        excluded = (budgets.pool_outlier_min_flagged > 0 and on_flagged >= budgets.pool_outlier_min_flagged
                    and on_flagged >= budgets.pool_outlier_share * len(mine))
        out[uid] = {"labels": dataset.label_count(uid), "thumbs_up": ups.get(uid, 0), "favoured": len(mine),
                    "favoured_flagged": on_flagged, "harm_flags": harm_flags.get(uid, 0),
                    "harm_flags_unconfirmed": unconfirmed.get(uid, 0), "excluded": excluded,
                    "reason": (f"{on_flagged} of the {len(mine)} replies they favoured (thumbs-up or ranked first) "
                               "are flagged by the harm judge") if excluded else None}
    return out


def shared_pool(dataset: Dataset, budgets: Budgets, *, excluded: Iterable[int] = ()) -> Dataset:
    """The capped view of all users' examples that the global models train on, without the
    ``excluded`` users' (``pool_audit``); the judge's own labels stay."""
    out = set(excluded)
    cap = budgets.global_max_items_per_user
    share, floor = budgets.pool_max_share, budgets.pool_user_floor
    pooled = Dataset(
        pairs=cap_share(cap_per_user([p for p in dataset.pairs if p.user_id not in out], cap), share, floor, what="pairs"),
        points=cap_share(cap_per_user([p for p in dataset.points if p.user_id not in out], cap), share, floor, what="thumbs"),
        harm=cap_harm_share(cap_per_user([h for h in dataset.harm if h.user_id not in out], cap),
                            budgets.pool_harm_max_share, budgets.pool_harm_user_floor),
    )
    if out:
        logger.warning("shared pool: kept out the labels of users %s (they favour replies the harm judge flags)", sorted(out))
    dropped = dataset.label_count() - pooled.label_count()
    if dropped:
        logger.info("shared pool: dropped %d labels (per-user cap %d, kept-out users)", dropped, cap)
    return pooled


@dataclass
class PoolView:
    """Every label (``full``), the audit, who is kept out of the shared models (by the audit or an
    operator) and the capped ``pool`` the shared models learn from: what one run sees."""

    full: Dataset
    audit: dict[int, dict[str, Any]]
    excluded: list[int]
    pool: Dataset


def shared_view(session: Session, render: Renderer, budgets: Budgets, *,
                judge_flags: Callable[[list[tuple[int, str]]], list[bool]] | None = None) -> PoolView:
    """The training run's view of the labels; the pool-audit command and the operator's export show the same."""
    full = build_dataset(session, render, budgets, judge_flags=judge_flags)
    audit = pool_audit(full, budgets)
    by_operator = operator_excluded(session)
    for uid, row in audit.items():
        row["excluded_by_operator"] = uid in by_operator
    excluded = sorted(by_operator | {u for u, row in audit.items() if row["excluded"]})
    return PoolView(full, audit, excluded, shared_pool(full, budgets, excluded=excluded))


def save_snapshot(session: Session, dataset: Dataset, *, run_id: int | None, extra: dict[str, Any] | None = None) -> TrainingSnapshot:
    row = TrainingSnapshot(
        run_id=run_id,
        sha256=dataset.sha256,
        feedback_ids=dataset.feedback_ids,
        ranking_ids=dataset.ranking_ids,
        stats={**dataset.stats, **(extra or {})},
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def operator_excluded(session: Session) -> set[int]:
    """Users an operator keeps out of the shared models (``User.shared_pool_excluded``, issue 28 M8)."""
    excluded = session.exec(select(User.id).where(User.shared_pool_excluded == True)).all()  # noqa: E712 (SQL)
    return set(cast(Sequence[int], excluded))  # primary keys read back are never null


def pooled_prompts(session: Session, render: Renderer, per_user: int, excluded: Iterable[int] = ()) -> list[str]:
    """The global adapter's own prompts: each approved user's newest ``per_user``, taken in turns
    (every user's newest first, then every user's second, ...) so the first prompts, which the gate
    takes, come from many users and not from the lowest ids (issue 28, L5); ``excluded`` users' none."""
    out = set(excluded)
    approved = session.exec(select(User.id).where(User.approved == True).order_by(col(User.id))).all()  # noqa: E712
    ids = [u for u in cast(Sequence[int], approved) if u not in out]  # primary keys read back are never null
    lists = [recent_prompts(session, render, uid, per_user) for uid in ids]
    return [p for turn in zip_longest(*lists) for p in turn if p is not None]


def recent_prompts(session: Session, render: Renderer, user_id: int, limit: int) -> list[str]:
    """The user's newest user turns, each rendered with the conversation before it."""
    rows = session.exec(
        select(Message).where(Message.user_id == user_id, Message.role == "user").order_by(col(Message.id).desc()).limit(limit)
    ).all()
    thread = labels.Thread(session)
    thread.load(pk(m) for m in rows)
    out = []
    for m in rows:
        if not m.content.strip():
            continue
        turns = thread.before(m) + [{"role": "user", "content": m.content}]
        out.append(render(turns))
    return out


# A small built-in pool of generic prompts, so PPO has something to practise on for users
# (and a global adapter) with few conversations. Split deterministically: the last quarter
# is only ever used by the gate.
SHARED_PROMPTS: tuple[str, ...] = (
    "What is a good way to start learning to cook?",
    "Explain what a black hole is in simple terms.",
    "Give me three tips for better sleep.",
    "How do I write a polite email asking for a deadline extension?",
    "What is the difference between weather and climate?",
    "Suggest a name for a small coffee shop.",
    "How does a bicycle stay upright?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are some healthy snacks for work?",
    "How can I be more productive when working from home?",
    "Explain recursion to a beginner programmer.",
    "Write a short haiku about autumn.",
    "What should I pack for a weekend hiking trip?",
    "Why is the sky blue?",
    "How do I make a simple budget?",
    "What is photosynthesis?",
    "Give me an idea for a birthday present for a friend who likes books.",
    "How do vaccines work?",
    "What is a good stretching routine for the morning?",
    "Explain what an API is.",
    "How do I politely decline an invitation?",
    "What are the planets in our solar system?",
    "Give me a fun fact about octopuses.",
    "How can I improve my public speaking?",
    "What is the capital of Australia, and why is it not Sydney?",
    "How do I keep houseplants alive?",
    "Explain compound interest with an example.",
    "What is a good beginner workout?",
    "Write a two-line poem about the sea.",
    "How do I remove a coffee stain from a shirt?",
    "What is machine learning, briefly?",
    "Give me a tip for learning a new language.",
)


def split_shared_prompts(render: Renderer) -> tuple[list[str], list[str]]:
    """(training prompts, gate prompts) from the built-in pool, rendered."""
    rendered = [render([{"role": "user", "content": p}]) for p in SHARED_PROMPTS]
    cut = len(rendered) * 3 // 4
    return rendered[:cut], rendered[cut:]
