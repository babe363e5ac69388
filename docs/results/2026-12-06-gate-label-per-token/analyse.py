"""The rule of README.md applied to replay.py's rows: python analyse.py rows.jsonl > output.md"""

from __future__ import annotations

import json
import math
import random
import sys

from learning.gate import wilson_upper

GROUPS = {"sim": "tuning", "held": "held-out", "novel": "held-out, no trait measures it"}
ALPHA = 0.05


def corr(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def r_of(rows: list[dict], reading: str) -> float:
    return corr([r[f"{reading}_vs_base"] for r in rows], [r["win_rate"] for r in rows])


def refused(row: dict, reading: str) -> bool:
    return wilson_upper(row[f"{reading}_vs_base"], row["comparisons"], ALPHA) < 0.5


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1])]
    mismatched = [r for r in rows if r["stored_sum_vs_base"] is not None and abs(r["sum_vs_base"] - r["stored_sum_vs_base"]) > 1e-3]
    print(f"Replay check: the summed reading reproduces the stored gate/labels_vs_base on "
          f"{len(rows) - len(mismatched)} of {len(rows)} candidates" + (f" (mismatches: {[(r['run'], r['user']) for r in mismatched]})" if mismatched else "") + ".\n")
    print("| group | candidates | r(sum) | r(per token) | r(per token) − r(sum), 95% interval (bootstrap over candidates) "
          "| refused vs base at alpha 0.05, sum | per token | their win rates |")
    print("|---|---|---|---|---|---|---|---|")
    rng = random.Random(0)
    intervals: dict[str, tuple[float, float]] = {}
    for prefix, label in GROUPS.items():
        rs = [r for r in rows if r["user"].startswith(prefix)]
        if len(rs) < 3:
            continue
        diffs = []
        for _ in range(2000):
            b = [rng.choice(rs) for _ in rs]
            diffs.append(r_of(b, "per_token") - r_of(b, "sum"))
        diffs.sort()
        intervals[prefix] = (diffs[50], diffs[1949])
        ref = {k: [r for r in rs if refused(r, k)] for k in ("sum", "per_token")}
        wins = sorted({f"{r['win_rate']:.0%}" for k in ref for r in ref[k]})
        print(f"| {label} | {len(rs)} | {r_of(rs, 'sum'):.2f} | {r_of(rs, 'per_token'):.2f} | "
              f"{r_of(rs, 'per_token') - r_of(rs, 'sum'):+.2f} ({diffs[50]:+.2f} to {diffs[1949]:+.2f}) | "
              f"{len(ref['sum'])} | {len(ref['per_token'])} | {', '.join(wins) or '–'} |")
    tuning = [r for r in rows if r["user"].startswith("sim")]
    low = intervals["sim"][0]
    better = low > 0
    none_refused = not any(refused(r, "per_token") and r["win_rate"] >= 0.5 for r in tuning)
    print(f"\nRule (tuning only): r(per token) − r(sum) lower bound {low:+.2f} > 0: {better}; per token refuses no "
          f"tuning candidate at ≥ 50%: {none_refused} → "
          f"{'per-token becomes the default' if better and none_refused else 'sum stays the default'}.\n")
    print("| run | user | comparisons | win rate vs base | sum | per token |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run'].removeprefix('2026-12-06-')} | {r['user']} | {r['comparisons']} | {r['win_rate']:.0%} | "
              f"{r['sum_vs_base']:.0%} | {r['per_token_vs_base']:.0%} |")


if __name__ == "__main__":
    main()
