"""The text block's 2x2 (A = defaults, B = text block 256 + evidence; training seeds 0 and 1), decided by the rule of
2026-12-06 14:22 UTC: mean over the two seeds of (B_s - A_s) over the five tuning users and 40 prompts, bootstrap over
prompts of the seed-averaged per-prompt differences; lower 95% bound above -3 points and no tuning user's
seed-averaged difference entirely below 0 -> the text block becomes the default."""
import json, random, sys
from pathlib import Path
R = Path("docs/results")
runs = {"A0": "2026-12-06-quick-safe-default", "A1": "2026-12-06-quick-safe-default-seed1",
        "B0": "2026-12-06-quick-safe-text-evidence", "B1": "2026-12-06-quick-safe-text-evidence-seed1"}
def served(name):
    rep = json.loads((R / name / "report.json").read_text())
    out = {}
    for u in rep["users"]:
        t = u["candidate"] or {"win_rate": u["win_rate"]}
        out[u["username"]] = t["win_rate"]["per_prompt"]
    return out
pp = {k: served(v) for k, v in runs.items()}
users = sorted(pp["A0"])
P = len(pp["A0"][users[0]])
d = {u: [((pp["B0"][u][p] - pp["A0"][u][p]) + (pp["B1"][u][p] - pp["A1"][u][p])) / 2 for p in range(P)] for u in users}
rng = random.Random(0)
def boot(f):
    xs = sorted(f([rng.randrange(P) for _ in range(P)]) for _ in range(2000))
    return xs[50], xs[1949]
mean = lambda idx, us: sum(d[u][p] for u in us for p in idx) / (len(idx) * len(us))
print("| user | A0 | A1 | B0 | B1 | seed-averaged B - A | 95% interval (prompts) |\n|---|---|---|---|---|---|---|")
bad = []
for u in users:
    lo, hi = boot(lambda idx: mean(idx, [u]))
    m = mean(range(P), [u])
    if hi < 0: bad.append(u)
    cells = " | ".join(f"{100 * sum(pp[k][u]) / P:.0f}%" for k in ("A0", "A1", "B0", "B1"))
    print(f"| {u} | {cells} | {100 * m:+.1f} pts | {100 * lo:+.1f} to {100 * hi:+.1f} |")
lo, hi = boot(lambda idx: mean(idx, users))
m = mean(range(P), users)
print(f"| all ({len(users)} users x {P} prompts) | | | | | {100 * m:+.1f} pts | {100 * lo:+.1f} to {100 * hi:+.1f} |")
a_noise = [sum(pp["A1"][u][p] - pp["A0"][u][p] for p in range(P)) / P for u in users]
print(f"\nA1 - A0 (training noise of the defaults), per user: " + ", ".join(f"{u.split('-')[1]} {100 * x:+.1f}" for u, x in zip(users, a_noise)))
print(f"\nRule: lower bound {100 * lo:+.1f} > -3 -> {lo > -0.03}; users entirely below 0: {bad or 'none'} -> "
      f"{'text block becomes the default' if lo > -0.03 and not bad else 'the text block stays off'}")
