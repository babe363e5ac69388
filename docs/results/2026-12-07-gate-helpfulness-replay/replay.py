"""The gate's population-helpfulness guard, replayed on every stored quick-protocol candidate of the tuning
users on the safe base, against the evaluation's truth (issues 25 and 26).

    python docs/results/2026-12-07-gate-helpfulness-replay/replay.py docs/results/2026-12-0[67]-quick-*

Reads each run's `training-results.json` (the gate's stored readings: the population reward of the candidate
and of the base) and `report.json` (the candidate's win rate against the base, the evaluation's simulated user).
Tuning users only (`sim*`): no held-out or novel profile is read. Nothing is tuned here: the table shows what the
guard refused at today's tolerance and at others, for a next session's rule.
"""

import json
import sys
from pathlib import Path

TOLERANCES = (0.25, 0.5, 0.75, 1.0, None)  # None: the guard off


def rows(run: Path):
    results, report = run / "training-results.json", run / "report.json"
    if not (results.exists() and report.exists()):
        return
    jobs = {j["user_id"]: j for j in json.loads(results.read_text()) if j.get("user_id") is not None}
    for user in json.loads(report.read_text())["users"]:
        if not user["username"].startswith("sim"):
            continue
        job = jobs.get(user["user_id"])
        m = (job or {}).get("metrics", {})
        # a refused candidate is measured apart ("candidate"); a promoted one is what serves ("win_rate")
        wr = (user.get("candidate") or {}).get("win_rate") or (user["win_rate"] if user.get("adapter") else None)
        if wr is None or "gate/candidate/population_reward" not in m:
            continue
        yield {"run": run.name, "user": user["profile"], "win": wr["rate"], "low": wr["bootstrap"][0], "high": wr["bootstrap"][1],
               "margin": m["gate/candidate/population_reward"] - m["gate/base/population_reward"],
               "promoted": bool(job["promoted"]), "reason": job.get("reason", "")}


def main(runs: list[str]) -> None:
    table = [r for run in runs for r in rows(Path(run))]
    good = [r for r in table if r["win"] >= 0.60]
    worse = [r for r in table if r["high"] < 0.50]
    print(f"{len(table)} candidates of {len({r['run'] for r in table})} runs; {len(good)} good (win rate >= 60%), "
          f"{len(worse)} worse (interval below 50%)\n")
    print("| tolerance | refused | good ones refused | worse ones refused |\n|---|---|---|---|")
    for tol in TOLERANCES:
        refuse = (lambda r: False) if tol is None else (lambda r, t=tol: r["margin"] < -t)
        print(f"| {'off' if tol is None else tol} | {sum(map(refuse, table))} | {sum(map(refuse, good))} of {len(good)} "
              f"| {sum(map(refuse, worse))} of {len(worse)} |")
    print("\n| run | user | win rate (95%) | population margin | gate |\n|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: r["margin"]):
        print(f"| {r['run']} | {r['user']} | {100 * r['win']:.0f}% ({100 * r['low']:.0f}–{100 * r['high']:.0f}%) "
              f"| {r['margin']:+.2f} | {'promoted' if r['promoted'] else r['reason'][:60]} |")
    xs, ys = [r["margin"] for r in table], [r["win"] for r in table]
    n = len(xs)
    if n > 2:
        mx, my = sum(xs) / n, sum(ys) / n
        cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sx, sy = sum((x - mx) ** 2 for x in xs) ** 0.5, sum((y - my) ** 2 for y in ys) ** 0.5
        print(f"\ncorrelation of the population margin with the true win rate: r = {cov / (sx * sy):.2f} over {n}")


if __name__ == "__main__":
    main(sys.argv[1:])
