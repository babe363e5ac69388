"""Replay the promotion gate's "not-worse" rule on the 16 stored personal candidates of 2026-12-03.

Reads the two runs' gate-analysis.md tables (the gate's own readings: held-out label agreement and
its count, the gate's harm rates of ~31 replies) and each run's report.json (the evaluation's truth:
the candidate's win rate against the base, 40 prompts, and its red-team harm against the base's),
then decides each candidate with ``learning.gate.decide`` under the new default rule and compares
with what the gate of the day decided. Run from the project root:

    .venv/bin/python docs/results/2026-12-05-gate/replay.py > docs/results/2026-12-05-gate/README.md

Approximations (the stored readings lack them): KL and the population reward are taken as passing
(every candidate's KL was 0.06-0.15 against the 0.3 budget, and no candidate of either run was
refused on helpfulness); the morning run had no trained harm judge (gate harm 0 for all).
"""

from __future__ import annotations

import json
from pathlib import Path

from learning.config import Budgets
from learning.gate import LabelCheck, PolicyEval, decide, wilson_upper

RUNS = {"AM (labels rule)": Path("docs/results/2026-12-03-round1-labels"),
        "PM (either rule, harm z=0)": Path("docs/results/2026-12-03-round1-harm-judge")}
GATE_N = 31  # 16 ordinary + 5 harm-inviting x 3 gate replies
GOOD = 0.60


def rows(md: str):
    table = [line for line in md.split("\n\n")[0].splitlines() if line.startswith("|")]
    head = [h.strip() for h in table[0].strip("|").split("|")]
    for line in table[2:]:
        yield dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))


def pct(s: str) -> float:
    return float(s.rstrip("%")) / 100


def main() -> None:
    budgets = Budgets()
    out = ["# The gate's \"not-worse\" rule replayed on the stored candidates of 2026-12-03", "",
           "Command: `.venv/bin/python docs/results/2026-12-05-gate/replay.py` (no model run; the gate's stored "
           "readings and each run's evaluation). Truth: the evaluation's win rate of the candidate against the base "
           f"(40 prompts, one sample each, so itself +-7 points), \"good\" = win rate >= {GOOD:.0%} and red-team harm "
           "no higher than the base's. Rule: `ASSISTANT_GATE_PREFERENCE=not-worse`, "
           f"`ASSISTANT_GATE_WORSE_ALPHA={budgets.gate_worse_alpha}`, `ASSISTANT_GATE_HARM_Z={budgets.gate_harm_z}`.", "",
           "| run | user | candidate win (truth) | eval harm cand / base | labels vs current (n) | upper bound | gate harm cand / base | gate then | not-worse |",
           "|---|---|---|---|---|---|---|---|---|"]
    counts = {"good": 0, "then_rejected_good": 0, "now_rejected_good": 0, "then_promoted_bad": 0, "now_promoted_bad": 0}
    for run, d in RUNS.items():
        md = (d / "gate-analysis.md").read_text()
        report = json.loads((d / "report.json").read_text())
        harm = {k: v["harmful_share"] for k, v in report["harm"].items()}
        for row in rows(md):
            user = next(u for u in report["users"] if u["username"] == row["user"])
            label = user["adapter"] or (user["candidate"] or {}).get("adapter")
            win = pct(row["candidate win"])
            share, n = pct(row["labels vs current"]), int(row["comparisons"])
            gh = row.get("gate harm: cand/base/current")
            c_h, b_h = (float(x) for x in gh.split("/")[:2]) if gh else (0.0, 0.0)
            cand = PolicyEval(mean_reward=0.0, harm_rate=c_h, kl_per_token=0.1, n=16, harm_n=GATE_N)
            base = PolicyEval(mean_reward=0.0, harm_rate=b_h, kl_per_token=0.0, n=16, harm_n=GATE_N)
            now = decide(cand, base, base, budgets, personal=True, labels=LabelCheck(share, share, n))
            then = row["served"] != "None"
            good = win >= GOOD and harm.get(label, 0) <= harm["base"]
            upper = wilson_upper(share, n, budgets.gate_worse_alpha)
            counts["good"] += good
            counts["then_rejected_good"] += good and not then
            counts["now_rejected_good"] += good and not now.promote
            counts["then_promoted_bad"] += (not good) and then
            counts["now_promoted_bad"] += (not good) and now.promote
            out.append(f"| {run} | {row['user']} | {win:.0%} | {harm.get(label, 0):.0%} / {harm['base']:.0%} | "
                       f"{share:.0%} ({n}) | {upper:.0%} | {c_h * GATE_N:.0f} / {b_h * GATE_N:.0f} | "
                       f"{'promoted' if then else '**rejected**'} | {'promoted' if now.promote else '**rejected**'} |")
    bad = 16 - counts["good"]
    out += ["", "| | gate of the day | not-worse |", "|---|---|---|",
            f"| good candidates (of {counts['good']}) rejected: false rejections | {counts['then_rejected_good']} | "
            f"{counts['now_rejected_good']} |",
            f"| other candidates (of {bad}) promoted: false promotions | {counts['then_promoted_bad']} | "
            f"{counts['now_promoted_bad']} |", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
