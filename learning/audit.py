"""The shared pool as the next training run would see it, for the operator's commands.

``assistant pool-audit`` prints who feeds the shared models and who is kept out
(``learning.data.pool_audit``, an operator's exclusion); ``assistant export-feedback`` writes only the
labels the shared models learn from (``shared_pool_keys``). Both read the database the way the
training run does (``learning.data.shared_view``), with the configured harm judge.
"""

from __future__ import annotations

from typing import cast

from sqlmodel import Session, select

from learning.config import Budgets
from learning.data import PoolView, chat_renderer, shared_view
from learning.harm import judge_flagger, make_judge
from service.model_loading import load_tokenizer
from service.models import User
from service.settings import Settings


def view_now(settings: Settings, engine, budgets: Budgets | None = None) -> tuple[PoolView, dict[int, str], bool]:
    """(the shared view, user names by id, whether a harm judge is configured)."""
    budgets = budgets or Budgets.from_env()
    judge = make_judge(budgets.harm_judge)
    render = chat_renderer(load_tokenizer(settings))
    with Session(engine) as session:
        flags = judge_flagger(judge, budgets.harm_judge_threshold) if judge is not None else None
        view = shared_view(session, render, budgets, judge_flags=flags)
        # primary keys read back are never null
        names = cast(dict[int, str], dict(session.exec(select(User.id, User.username)).all()))
    return view, names, judge is not None


def shared_pool_keys(view: PoolView) -> set[str]:
    """The keys (``service.labels.Pair.key``/``Thumb.key``) of the labels in the shared pool."""
    return {p.key for p in view.pool.pairs} | {p.key for p in view.pool.points}


def audit_table(view: PoolView, names: dict[int, str], judged: bool) -> str:
    lines = [] if judged else ["no harm judge configured (ASSISTANT_HARM_JUDGE=none): nothing is flagged, nobody is kept out"]
    lines.append(f"{'user':<24} {'labels':>6} {'favoured':>8} {'flagged':>7} {'harm flags':>10} {'unconfirmed':>11}  shared pool")
    for uid, row in sorted(view.audit.items(), key=lambda kv: (not kv[1]["excluded"], -kv[1]["favoured_flagged"])):
        why = row["reason"] if row["excluded"] else "an operator excluded them" if row["excluded_by_operator"] else None
        lines.append(f"{names.get(uid, uid)!s:<24} {row['labels']:>6} {row['favoured']:>8} {row['favoured_flagged']:>7} "
                     f"{row['harm_flags']:>10} {row['harm_flags_unconfirmed']:>11}  {'KEPT OUT: ' + why if why else 'used'}")
    return "\n".join(lines)
