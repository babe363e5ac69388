"""Replay the gate's held-out label test on the kept adapters of stored protocol runs, reading each reply's
likelihood two ways: summed over its tokens (the gate until now) and per token (``ASSISTANT_GATE_LABEL_LOGPROB``).

For every results folder given (each kept with ``--keep-adapters``: ``work/`` holds the run's database and
adapters): rebuild each user's held-out labels from the run's database exactly as its shared stage did
(``build_dataset`` + ``heldout_labels``), load the base it trained on and every personal candidate, and compute
the label agreement vs the base under both readings. The truth is the evaluation's win rate of that candidate
against the base (``report.json``). The summed reading must reproduce the gate's stored ``gate/labels_vs_base``:
that is this replay's own check.

Run from the repository root, nothing else running:
    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-06-gate-label-per-token/replay.py --models /work/safety-data/models \
        docs/results/<run> ... > rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def replay(run: Path, models: Path) -> list[dict]:
    from peft import PeftModel
    from sqlmodel import Session, select

    from learning.config import Budgets
    from learning.data import build_dataset, chat_renderer
    from learning.gate import label_agreement, reply_logprobs
    from learning.shared import heldout_labels
    from learning.sim.protocol_record import trained_policy
    from service.adapter_store import label_of
    from service.db import make_engine
    from service.model_loading import load_base_model, load_tokenizer
    from service.models import AdapterVersion
    from service.settings import Settings

    protocol = json.loads((run / "protocol.json").read_text())
    report = json.loads((run / "report.json").read_text())
    stored = {r["user_id"]: r["metrics"] for r in json.loads((run / "training-results.json").read_text())}
    budgets = Budgets.from_env(protocol.get("training_settings", {}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "models").symlink_to(models.resolve())
        (data / "adapters").symlink_to((run / "work" / "adapters").resolve())
        shutil.copy(run / "work" / "assistant.db", data / "assistant.db")
        settings = Settings(data_dir=data, dev_mode=True)
        tokenizer = load_tokenizer(settings)
        render = chat_renderer(tokenizer)
        db = make_engine(settings)
        with Session(db) as session:
            labels = heldout_labels(build_dataset(session, render, budgets), budgets.heldout_fraction)
            paths = {label_of(v): settings.adapters_dir / v.path for v in session.exec(select(AdapterVersion)).all()}
        db.dispose()
        model = load_base_model(settings, dtype=torch.float32)
        peft = None
        for user in report["users"]:
            trained, held = trained_policy(user), labels.get(user["user_id"])
            if trained is None or held is None or held.comparisons() == 0 or trained["adapter"] not in paths:
                continue
            name = trained["adapter"]
            if peft is None:
                peft = PeftModel.from_pretrained(model, str(paths[name]), adapter_name=name, is_trainable=False)
                peft.eval()
            else:
                peft.load_adapter(str(paths[name]), adapter_name=name, is_trainable=False)
            peft.set_adapter(name)
            row = {"run": run.name, "user": user["username"], "profile": user["profile"], "adapter": name,
                   "comparisons": held.comparisons(), "win_rate": trained["win_rate"]["rate"],
                   "win_low": trained["win_rate"]["bootstrap"][0], "win_high": trained["win_rate"]["bootstrap"][1],
                   "stored_sum_vs_base": stored.get(user["user_id"], {}).get("gate/labels_vs_base")}
            for reading, per_token in (("sum", False), ("per_token", True)):
                base_lp = reply_logprobs(peft, tokenizer, held.replies(), budgets, reference=True, per_token=per_token)
                cand_lp = reply_logprobs(peft, tokenizer, held.replies(), budgets, per_token=per_token)
                row[f"{reading}_vs_base"] = label_agreement(held, cand_lp, base_lp)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=Path, required=True, help="the models folder the runs trained on (their safe base)")
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    for run in args.runs:
        for row in replay(run, args.models):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
