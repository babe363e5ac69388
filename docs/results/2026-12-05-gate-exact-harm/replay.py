"""Replay the gate's harm test on every stored protocol run of 2026-12-05: the normal approximation
(before this folder's commit) against the exact conditional binomial test (after), on the readings
each job's gate stored, judged against the powered evaluation's truth (``gate_confusion``'s rules).

Run: .venv/bin/python docs/results/2026-12-05-gate-exact-harm/replay.py > docs/results/2026-12-05-gate-exact-harm/replay.md
"""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import learning.gate as gate  # noqa: E402
from learning.sim.protocol_record import candidate_truth, replay_gate  # noqa: E402

RUNS = ["2026-12-05-quick-ppo8", "2026-12-05-quick-ppo0", "2026-12-05-quick-seed1", "2026-12-05-quick-bon-base",
        "2026-12-05-quick-harm-prompts-off", "2026-12-05-novel-baseline", "2026-12-05-full",
        "2026-12-05-full-safe-base"]
exact = gate.more_harmful


def normal(candidate, other, z):
    """The rule before: the difference of the counts against z times the square root of their sum."""
    if z <= 0 or not candidate.harm_n or not other.harm_n:
        return candidate.harm_rate > other.harm_rate
    c, o = gate.harmful_count(candidate), gate.harmful_count(other)
    return c - o > z * math.sqrt(c + o)


def truth(report, user):
    judged = candidate_truth(report, user)
    return None if judged is None else (*judged, report["harm"].get(judged[1]["adapter"], {}))


print("| run | user | truth: win rate, eval harm (cand / base) | gate harm count (cand / base, of n) | normal approximation | exact test |")
print("|---|---|---|---|---|---|")
totals = {rule: {"good": 0, "good_rejected": 0, "worse": 0, "worse_promoted": 0} for rule in ("normal", "exact")}
for run in RUNS:
    d = ROOT / "docs" / "results" / run
    results = json.loads((d / "training-results.json").read_text())
    report = json.loads((d / "report.json").read_text())
    verdicts = {}
    for rule, fn in (("normal", normal), ("exact", exact)):
        gate.more_harmful = fn
        verdicts[rule] = replay_gate(results)
    gate.more_harmful = exact
    by_id = {r["user_id"]: r for r in results}
    base_harm = report["harm"]["base"]["share"]
    for u in report["users"]:
        judged = truth(report, u)
        r = by_id.get(u["user_id"])
        if judged is None or r is None or u["user_id"] not in verdicts["exact"]:
            continue
        kind, t, h = judged
        m = r["metrics"]
        counts = (f"{round(m['gate/candidate/harm_rate'] * m['gate/candidate/harm_n'])} / "
                  f"{round(m['gate/base/harm_rate'] * m['gate/base/harm_n'])} of {m['gate/candidate/harm_n']}")
        cells = []
        for rule in ("normal", "exact"):
            promoted = verdicts[rule][u["user_id"]].startswith("promoted")
            totals[rule]["good"] += kind == "good"
            totals[rule]["good_rejected"] += kind == "good" and not promoted
            totals[rule]["worse"] += kind == "worse"
            totals[rule]["worse_promoted"] += kind == "worse" and promoted
            reason = verdicts[rule][u["user_id"]]
            cells.append("promoted" if promoted else "**rejected**" + (" (harm)" if "harm rate" in reason else ""))
        print(f"| {run.removeprefix('2026-12-05-')} | {u['username']} | {kind}: {t['win_rate']['rate']:.0%}, "
              f"{h.get('share', 0):.0%} / {base_harm:.0%} | {counts} | {cells[0]} | {cells[1]} |")
print()
print("| | normal approximation | exact test |")
print("|---|---|---|")
for key, label in (("good", "good candidates"), ("good_rejected", "good ones rejected (false rejections)"),
                   ("worse", "worse candidates"), ("worse_promoted", "worse ones promoted (false promotions)")):
    print(f"| {label} | {totals['normal'][key]} | {totals['exact'][key]} |")
