"""The three-round record's tables: per user, the served win rate at each round (bootstrap 95% over prompts), each
later round minus round 1 paired by prompt, the gate's verdict per round, labels, and the text block's weight norm.

    .venv/bin/python docs/results/2026-12-07-rounds-record/table.py [ROUND_DIR...]

ROUND_DIR: the round folders after round 1 (default: round2 here, and ../2026-12-07-rounds-record-r3/round3 when it
exists). Round 1 is ../2026-12-07-full-record-amd2-served (the same evaluation: best-of-4, seed 0, 1 reply per prompt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from learning.sim.stats import paired_difference

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
ROUND1 = RESULTS / "2026-12-07-full-record-amd2-served"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _served(report: dict) -> dict[str, dict]:
    return {u["username"]: u for u in report["users"]}


def main(dirs: list[Path]) -> str:
    rounds = [(1, json.loads((ROUND1 / "report.json").read_text()))]
    for d in dirs:
        rounds.append((int(d.name.removeprefix("round")), json.loads((d / "report.json").read_text())))
    first = _served(rounds[0][1])
    names = [u["username"] for u in rounds[-1][1]["users"]]
    head = "| user | " + " | ".join(f"round {r}" for r, _ in rounds) + " | " + " | ".join(
        f"round {r} - round 1 (paired)" for r, _ in rounds[1:]) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(rounds) - 1)]
    pooled: dict[int, tuple[list[float], list[float]]] = {r: ([], []) for r, _ in rounds[1:]}
    for name in names:
        cells, diffs = [], []
        for r, rep in rounds:
            u = _served(rep)[name]
            lo, hi = u["win_rate"]["bootstrap"]
            cells.append(f"{_pct(u['win_rate']['rate'])} ({_pct(lo)}–{_pct(hi)}) {u['adapter'] or 'base'}")
            if r > 1:
                a, b = u["win_rate"]["per_prompt"], first[name]["win_rate"]["per_prompt"]
                d = paired_difference(a, b)
                pooled[r][0].extend(a)
                pooled[r][1].extend(b)
                diffs.append(f"{100 * d['difference']:+.1f} ({100 * d['bootstrap'][0]:+.1f} to {100 * d['bootstrap'][1]:+.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    means = []
    for r, rep in rounds:
        means.append(_pct(sum(u["win_rate"]["rate"] for u in rep["users"] if u["username"] in names) / len(names)))
    tail = []
    for r, _ in rounds[1:]:
        d = paired_difference(*pooled[r])
        tail.append(f"{100 * d['difference']:+.1f} ({100 * d['bootstrap'][0]:+.1f} to {100 * d['bootstrap'][1]:+.1f})")
    lines.append("| mean | " + " | ".join(means) + " | " + " | ".join(tail) + " |")
    out = ["\n".join(lines), ""]
    # the gate's verdicts and the personal reward's held-out accuracy, per round
    out.append("| user | " + " | ".join(f"round {r}: served, candidate (gate), reward accuracy (pairs)" for r, _ in rounds) + " |")
    out.append("|" + "---|" * (1 + len(rounds)))
    for name in names:
        cells = []
        for r, rep in rounds:
            u = _served(rep)[name]
            cand = u.get("candidate")
            c = f"{cand['adapter']} {cand['status']} {_pct(cand['win_rate']['rate'])}" if cand else "none"
            rm = u.get("reward_model") or {}
            acc = f"{rm['accuracy']:.2f} ({rm['heldout_pairs']})" if rm.get("accuracy") is not None else "n/a"
            cells.append(f"{u['adapter'] or 'base'}; {c}; {acc}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    last = rounds[-1][1]
    if "harm" in last and len(last["harm"]) > 1:
        out.append("")
        served = [u["adapter"] for u in last["users"] if u["adapter"]]
        count = sum(last["harm"][a]["count"] for a in served if a in last["harm"])
        n = sum(last["harm"][a]["n"] for a in served if a in last["harm"])
        base = last["harm"]["base"]
        out.append(f"Harm as served at round {rounds[-1][0]} (set A): {count}/{n} pooled over the served policies; "
                   f"the safe base (this data dir's base) {base['count']}/{base['n']}.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    if not args:
        args = [HERE / "round2"]
        r3 = RESULTS / "2026-12-07-rounds-record-r3" / "round3"
        if (r3 / "report.json").is_file():
            args.append(r3)
    print(main(args))
