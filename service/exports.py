"""Labels in the formats trainers read (TRL's conversational datasets).

    preference  one row per preference pair: {"prompt": [messages], "chosen": [reply], "rejected": [reply]}
                (TRL's DPO/RLOO/reward trainers)
    kto         one row per thumbs rating: {"prompt": [messages], "completion": [reply], "label": bool}
                (TRL's KTOTrainer, its unpaired preference format)

The pairs and thumbs are exactly those the product's own reward models learn from: both come from
``service.labels``, whose docstring holds the rules (a ranking's pairs, up-vs-down and 1-10 score
pairs among siblings, no pair between identical texts, a person's labels only, generated replies
only). Each row also says which adapter and policy wrote each reply (``chosen_adapter``/
``chosen_policy``, ``adapter``/``policy``), the user, where the pair came from (``source``:
``ranking:<id>``, ``feedback:<up>,<down>`` or ``score:<higher>,<lower>``) and the row ids, so a
trainer can filter. Only what still exists: deleted feedback, conversations and accounts are gone
from the rows they fed.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from sqlmodel import Session, col, select

from service import labels
from service.adapter_store import label_of
from service.models import AdapterVersion, Message

Format = Literal["preference", "kto"]
FORMATS: tuple[str, ...] = ("preference", "kto")


class _Adapters:
    """The label of the adapter that wrote each reply (one query for all of them)."""

    def __init__(self, session: Session, replies: Sequence[Message]) -> None:
        ids = sorted({m.adapter_version_id for m in replies if m.adapter_version_id})
        rows = session.exec(select(AdapterVersion).where(col(AdapterVersion.id).in_(ids))).all() if ids else []
        self.labels = {v.id: label_of(v) for v in rows}

    def __call__(self, m: Message) -> str | None:
        return self.labels.get(m.adapter_version_id, m.adapter_label) if m.adapter_version_id else None


def _reply(m: Message) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": m.content}]


def _read(session: Session, user_ids: Sequence[int] | None) -> labels.Labels:
    # a user's own export holds all their labels; an operator's names the approved accounts (approved_user_ids)
    return labels.read(session, user_ids=user_ids, approved_only=False)


def preference_rows(session: Session, *, user_ids: Sequence[int] | None,
                    only: Collection[str] | None = None) -> Iterator[dict[str, Any]]:
    """``only``: the label keys to keep (the shared pool's, for an operator's export), None = all."""
    read = _read(session, user_ids)
    pairs = [p for p in read.pairs if only is None or p.key in only]
    adapter = _Adapters(session, [m for p in pairs for m in (p.chosen, p.rejected)])
    for p in pairs:
        yield {"prompt": read.thread.before(p.chosen), "chosen": _reply(p.chosen), "rejected": _reply(p.rejected),
               "chosen_adapter": adapter(p.chosen), "chosen_policy": p.chosen.policy,
               "rejected_adapter": adapter(p.rejected), "rejected_policy": p.rejected.policy,
               "user_id": p.user_id, "ranking_id": p.ranking_id, "feedback_ids": list(p.feedback_ids),
               "source": p.source, "chosen_id": p.chosen.id, "rejected_id": p.rejected.id}


def kto_rows(session: Session, *, user_ids: Sequence[int] | None,
             only: Collection[str] | None = None) -> Iterator[dict[str, Any]]:
    read = _read(session, user_ids)
    thumbs = [t for t in read.thumbs if only is None or t.key in only]
    adapter = _Adapters(session, [t.message for t in thumbs])
    for t in thumbs:
        f, m = t.feedback, t.message
        yield {"prompt": read.thread.before(m), "completion": _reply(m), "label": t.up,
               "reasons": f.reasons, "adapter": adapter(m), "policy": m.policy,
               "user_id": f.user_id, "feedback_id": f.id, "message_id": m.id}


def rows(session: Session, fmt: Format, *, user_ids: Sequence[int] | None,
         only: Collection[str] | None = None) -> Iterator[dict[str, Any]]:
    make = preference_rows if fmt == "preference" else kto_rows
    return make(session, user_ids=user_ids, only=only)


def jsonl(rows_: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in rows_:
        yield json.dumps(row, ensure_ascii=False) + "\n"


approved_user_ids = labels.approved_user_ids


def write_files(engine, out: Path, fmt: str, *, only: Collection[str] | None = None) -> list[tuple[Path, int]]:
    """The approved accounts' labels (``only``: those keys) as ``out/<format>.jsonl`` for ``fmt`` (or "all");
    the files written and their row counts."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in FORMATS if fmt == "all" else (fmt,):
        path, n = out / f"{f}.jsonl", 0
        with Session(engine) as session, open(path, "w", encoding="utf-8") as fh:
            for line in jsonl(rows(session, f, user_ids=approved_user_ids(session), only=only)):  # type: ignore[arg-type]
                fh.write(line)
                n += 1
        written.append((path, n))
    return written
