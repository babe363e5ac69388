"""Does the gate's held-out-label yardstick track the truth? Over every stored run in docs/results with both a
training-results.json (the readings each job's gate decided on) and a report.json (the evaluation's truth), pair each
personal candidate's `gate/labels_vs_base` (the share of the user's held-out comparisons its log-probabilities moved
toward, relative to the base) with its measured win rate vs the base, by profile group; then replay this commit's gate
and alternatives of its not-worse test on the same readings. Decisions may rest on the tuning group ("sim") only.

Run from the repository root: python docs/results/2026-12-06-gate-label-validity/analyse.py"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from learning.config import Budgets
from learning.sim.protocol_record import candidate_truth, replay_gate, trained_policy

RESULTS = Path("docs/results")
GROUPS = {"sim": "tuning", "held": "held-out", "novel": "held-out, no trait measures it"}


def runs():
    for d in sorted(RESULTS.iterdir()):
        if (d / "training-results.json").is_file() and (d / "report.json").is_file():
            yield d, json.loads((d / "training-results.json").read_text()), json.loads((d / "report.json").read_text())


def corr(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def group(username: str) -> str:
    return next(g for g in GROUPS if username.startswith(g))


def main() -> None:
    rows = []
    for d, results, report in runs():
        by_id = {r["user_id"]: r for r in results if r["user_id"] is not None}
        for u in report["users"]:
            r, t = by_id.get(u["user_id"]), trained_policy(u)
            if r and t and "gate/labels_vs_base" in r["metrics"]:
                m = r["metrics"]
                rows.append({"run": d.name, "user": u["username"], "labels_vs_base": m["gate/labels_vs_base"],
                             "labels_vs_current": m["gate/labels_vs_current"], "comparisons": int(m["gate/label_comparisons"]),
                             "win_rate": t["win_rate"]["rate"]})
    print("## The label yardstick against the truth (per candidate)\n")
    print("| group | candidates | r(labels vs base, win rate vs base) | labels < 50% | their win rates | truly worse (win < 50%) |")
    print("|---|---|---|---|---|---|")
    for g, label in GROUPS.items():
        rs = [r for r in rows if group(r["user"]) == g]
        low = [r["win_rate"] for r in rs if r["labels_vs_base"] < 0.5]
        print(f"| {label} | {len(rs)} | {corr([r['labels_vs_base'] for r in rs], [r['win_rate'] for r in rs]):.2f} "
              f"| {len(low)} | {min(low):.0%}–{max(low):.0%} | {sum(r['win_rate'] < 0.5 for r in rs)} |")
    before = dataclasses.replace(Budgets(), gate_worse_alpha=0.1)
    variants = {"alpha 0.10 (the default until 2026-12-06)": before,
                "alpha 0.05 (the default since)": dataclasses.replace(Budgets(), gate_worse_alpha=0.05),
                "alpha 0.01": dataclasses.replace(Budgets(), gate_worse_alpha=0.01),
                "no label test (gate_min_labels huge)": dataclasses.replace(Budgets(), gate_min_labels=10**6)}
    print("\n## The gate's verdicts replayed on the stored readings, against the evaluation's truth\n")
    print("| variant | group | candidates | good | good refused | worse | worse promoted |")
    print("|---|---|---|---|---|---|---|")
    refused = []
    for name, budgets in variants.items():
        tally: dict[str, dict[str, int]] = {}
        for d, results, report in runs():
            users = {u["user_id"]: u for u in report["users"]}
            for uid, reason in replay_gate(results, budgets).items():
                u = users.get(uid)
                judged = candidate_truth(report, u) if u else None
                if judged is None:
                    continue
                kind, t = judged
                promoted = reason.startswith("promoted")
                c = tally.setdefault(group(u["username"]), {"n": 0, "good": 0, "good_refused": 0, "worse": 0, "worse_promoted": 0})
                c["n"] += 1
                c["good"] += kind == "good"
                c["good_refused"] += kind == "good" and not promoted
                c["worse"] += kind == "worse"
                c["worse_promoted"] += kind == "worse" and promoted
                if not promoted and budgets == before:
                    refused.append(f"- {d.name} {u['username']} ({kind}, win rate {t['win_rate']['rate']:.0%}): {reason}")
        for g, label in GROUPS.items():
            c = tally.get(g)
            if c:
                print(f"| {name} | {label} | {c['n']} | {c['good']} | {c['good_refused']} | {c['worse']} | {c['worse_promoted']} |")
    print("\nRefused at alpha 0.10:\n")
    print("\n".join(refused))


if __name__ == "__main__":
    main()
