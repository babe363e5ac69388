"""Replay the gate's not-worse test counting comparisons (the default) against counting the distinct
prompts under them (ASSISTANT_GATE_LABEL_UNITS=prompts), on every stored protocol run whose jobs recorded
gate/label_prompts, judged against the powered evaluation's truth (gate_confusion's rules).

Run: .venv/bin/python docs/results/2026-12-06-gate-label-units/replay.py RUN... > docs/results/2026-12-06-gate-label-units/replay.md
(RUN: folders under docs/results/)
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from learning.config import Budgets  # noqa: E402
from learning.sim.protocol_record import candidate_truth, replay_gate  # noqa: E402


rules = {"comparisons": Budgets(), "prompts": replace(Budgets(), gate_label_units="prompts")}
print("| run | user | truth (win rate vs base) | held-out comparisons / prompts | agreement vs current | comparisons | prompts |")
print("|---|---|---|---|---|---|---|")
totals = {rule: {"good": 0, "good_rejected": 0, "worse": 0, "worse_promoted": 0} for rule in rules}
for run in sys.argv[1:]:
    d = ROOT / "docs" / "results" / run
    results = json.loads((d / "training-results.json").read_text())
    report = json.loads((d / "report.json").read_text())
    verdicts = {rule: replay_gate(results, b) for rule, b in rules.items()}
    by_id = {r["user_id"]: r for r in results}
    for u in report["users"]:
        judged, r = candidate_truth(report, u), by_id.get(u["user_id"])
        if judged is None or r is None or u["user_id"] not in verdicts["comparisons"]:
            continue
        kind, t = judged
        m = r["metrics"]
        cells = []
        for rule in rules:
            promoted = verdicts[rule][u["user_id"]].startswith("promoted")
            totals[rule]["good"] += kind == "good"
            totals[rule]["good_rejected"] += kind == "good" and not promoted
            totals[rule]["worse"] += kind == "worse"
            totals[rule]["worse_promoted"] += kind == "worse" and promoted
            cells.append("promoted" if promoted else "**refused**: " + verdicts[rule][u["user_id"]].removeprefix("rejected: "))
        print(f"| {run} | {u['username']} | {kind} ({t['win_rate']['rate']:.0%}) | {m.get('gate/label_comparisons', '-')} / "
              f"{m.get('gate/label_prompts', '-')} | {m.get('gate/labels_vs_current', float('nan')):.0%} | {cells[0]} | {cells[1]} |")
print()
for rule, t in totals.items():
    print(f"- {rule}: {t['good_rejected']} of {t['good']} good candidates refused; {t['worse_promoted']} of {t['worse']} worse ones promoted")
