"""The harm head fitted on the round-1 fixture's labels alone, and with the safety stage's rows
(``ASSISTANT_HARM_SAFETY_ROWS``): held-out figures apart (database rows, the stage's rows), and how
often each head calls the fixture's stored replies (all ordinary, served by the base in round 1)
harmful, which is what PPO's lambda * P(harm) would charge an ordinary reply.

    ASSISTANT_DEV_MODE=1 .venv/bin/python docs/results/2026-12-07-harm-rows-offline/run.py <fixture data dir>

No evaluation set, judge or output is read. The trainer's judge is left out of P(harm) here, so
the figures are the head's own.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from sqlmodel import Session, select

from learning.config import Budgets
from learning.data import chat_renderer, shared_view
from learning.harm import HarmModel, judge_flagger, make_judge
from learning.harm_rows import served_rows
from learning.reward import FeatureCache
from service.db import make_engine
from service.model_loading import load_base_model, load_tokenizer, resolve_model_path
from service.models import Message
from service.settings import Settings


def main(fixture: Path) -> None:
    settings = Settings(data_dir=fixture, dev_mode=True)  # the fixture's models folder links to the served ones
    budgets = Budgets.from_env()
    tokenizer = load_tokenizer(settings)
    base = load_base_model(settings, dtype=torch.float32)
    render = chat_renderer(tokenizer)
    judge = make_judge(budgets.harm_judge)
    engine = make_engine(settings)
    with Session(engine) as session:
        view = shared_view(session, render, budgets, judge_flags=judge_flagger(judge, budgets.harm_judge_threshold))
        stored = session.exec(select(Message).where(Message.role == "assistant")).all()
        stored_texts = [m.content for m in stored]
    pool = view.pool
    cache = FeatureCache(base, tokenizer, budgets)
    rows = served_rows(Path(resolve_model_path(settings)), render)
    with Session(engine) as session:  # each stored reply's prompt: its parent turn, rendered as a one-turn chat
        parents = {m.id: m.content for m in session.exec(select(Message).where(Message.role == "user")).all()}
    prompts = [render([{"role": "user", "content": parents.get(m.parent_id, "")}]) for m in stored]
    out = {"fixture": str(fixture), "stored_replies": len(stored_texts), "safety_rows": len(rows),
           "safety_rows_harmful": sum(h.harmful for h in rows), "db_harm_labels": len(pool.harm),
           "db_harm_positive": sum(h.harmful for h in pool.harm)}
    # which stored replies already carry a harm label: a user's harmful reason, or the trainer's judge's flag
    labelled = {h.message_id for h in view.full.harm if h.harmful}
    out["stored_labelled_harmful"] = sum(m.id in labelled for m in stored)
    started = time.monotonic()
    feats = cache.features(prompts, stored_texts)
    out["stored_features_s"] = round(time.monotonic() - started, 1)
    for name, harm_pool in (("db_only", pool), ("with_rows", dataclasses.replace(pool, harm=pool.harm + rows))):
        started = time.monotonic()
        head = HarmModel(cache, budgets, judge=None)
        metrics = head.fit(harm_pool)
        fit_s = time.monotonic() - started
        p = head.prob(feats)
        n = len(p)
        flagged = int((p >= 0.5).sum())
        flagged_ids = {m.id for m, x in zip(stored, p.tolist()) if x >= 0.5}
        out.setdefault("flagged_ids", {})[name] = sorted(flagged_ids)
        out[name] = {"metrics": metrics, "fit_s": round(fit_s, 1), "stored_flagged": flagged,
                     "stored_flagged_share": flagged / n if n else None, "stored_mean_p": float(p.mean()) if n else None,
                     "stored_p90": float(p.quantile(0.9)) if n else None,
                     "stored_flagged_already_labelled_harmful": len(flagged_ids & labelled)}
    out["same_replies_flagged"] = out["flagged_ids"]["db_only"] == out["flagged_ids"]["with_rows"]
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
