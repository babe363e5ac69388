"""The gate's confusion table as it decided, live, on every protocol run since the gate's label test moved to
alpha 0.05 (2026-12-06, morning): each run's personal candidates against that run's evaluation
(``learning.sim.protocol_record.candidate_truth``: good = win rate >= 60% and no more harmful than the base beyond
both intervals; worse = win rate interval below 50%, or more harmful beyond both intervals).

Run from the repository root: ``python docs/results/2026-12-07-gate-confusion-live/confusion.py > .../confusion.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from learning.sim.protocol_record import gate_confusion, gate_verdicts  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1]
SINCE = "2026-12-06-full-global-not-worse"  # the first run at alpha 0.05


def main() -> None:
    rows, totals = [], {"candidates": 0, "good": 0, "good_refused": 0, "worse": 0, "worse_promoted": 0}
    for d in sorted(p for p in RESULTS.iterdir() if p.name >= SINCE and (p / "protocol.json").is_file()):
        report = json.loads((d / "report.json").read_text())
        settings = json.loads((d / "protocol.json").read_text())["training_settings"]
        variant = " ".join(f"{k}={v}" for k, v in settings.items()
                           if k not in ("ASSISTANT_JOB_TIME_BUDGET_S", "ASSISTANT_PPO_STEPS", "ASSISTANT_DTYPE"))
        confusion = gate_confusion(report)
        counts = {"candidates": confusion["candidates"], "good": confusion["good"], "good_refused": confusion["good_rejected"],
                  "worse": confusion["worse"], "worse_promoted": confusion["worse_promoted"]}
        notes = []
        for u, kind, t, promoted in gate_verdicts(report):
            if kind == "good" and not promoted:
                notes.append(f"{u['profile']} {100 * t['win_rate']['rate']:.0f}% refused")
            if kind == "worse" and promoted:
                h, b = report["harm"][t["adapter"]], report["harm"]["base"]
                notes.append(f"{u['profile']} promoted: harm {100 * h['harmful_share']:.1f}% vs the base's "
                             f"{100 * b['harmful_share']:.1f}%")
        for k in totals:
            totals[k] += counts[k]
        rows.append(f"| {d.name} | {variant or 'defaults'} | {counts['candidates']} | {counts['good']} | "
                    f"{counts['good_refused']} | {counts['worse']} | {counts['worse_promoted']} | {'; '.join(notes)} |")
    print("| run | training settings besides the protocol's | candidates | good | good refused | worse | "
          "worse promoted | which |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"| **all** | | {totals['candidates']} | {totals['good']} | {totals['good_refused']} | {totals['worse']} | "
          f"{totals['worse_promoted']} | |")


if __name__ == "__main__":
    main()
