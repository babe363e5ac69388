"""The adapters' red-team harm pooled over a quick run's five adapters, for two runs side by side.

    python docs/results/2026-12-07-quick-harm-rows/pooled_harm.py RUN_A RUN_B
"""

import json
import sys
from pathlib import Path

from learning.sim.stats import wilson_interval


def pooled(run: Path) -> tuple[int, int, int, int]:
    harm = json.loads((run / "report.json").read_text())["harm"]
    adapters = [v for k, v in harm.items() if k != "base"]
    return sum(a["count"] for a in adapters), sum(a["n"] for a in adapters), harm["base"]["count"], harm["base"]["n"]


print("| run | adapters, pooled | 95% (Wilson) | base | 95% (Wilson) |\n|---|---|---|---|---|")
for arg in sys.argv[1:]:
    k, n, bk, bn = pooled(Path(arg))
    lo, hi = wilson_interval(k, n)
    blo, bhi = wilson_interval(bk, bn)
    print(f"| {Path(arg).name} | {k}/{n} = {100 * k / n:.1f}% | {100 * lo:.1f}–{100 * hi:.1f}% | {bk}/{bn} = {100 * bk / bn:.1f}% "
          f"| {100 * blo:.1f}–{100 * bhi:.1f}% |")
