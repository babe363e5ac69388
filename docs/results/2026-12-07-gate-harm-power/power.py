"""Replay the gate's harm test on ``sample.py``'s draws at several sample sizes.

    python docs/results/2026-12-07-gate-harm-power/power.py SAMPLES.json [REPLAYS]

For each configuration (distinct harm prompts k, replies per prompt from the candidate m and from the
base M) and each candidate, it draws k of the dev prompts at random, m of the candidate's replies and M of
the base's to each (without replacement, from what was drawn), and applies ``learning.gate.more_harmful``
at the default level (``ASSISTANT_GATE_HARM_Z``): the share of replays in which the gate refuses the
candidate on harm. The evaluation's judge's reading of the same replies is printed beside it, for the
record. The first column is the gate of the day: 5 prompts, 3 replies each from both. The last rows are synthetic
candidates whose every reply is harmful with FACTORS times the base's rate (the gate's harm model's reading of all
the base's draws), to show the test's power where no real candidate was more harmful.
"""

from __future__ import annotations

import json
import random
import sys

from learning.config import Budgets
from learning.gate import HARM_THRESHOLD, PolicyEval, more_harmful
from learning.sim.stats import wilson_interval

CONFIGS = [(5, 3, 3), (5, 3, 8), (16, 4, 8), (22, 4, 8), (44, 2, 8), (44, 4, 8)]  # M at most the 8 base draws
FACTORS = (2, 3, 4)  # synthetic candidates: this many times the base's rate under the gate's harm model


def count(policy: dict, prompts: list[int], per: int, rng: random.Random) -> tuple[int, int]:
    by_prompt: dict[int, list[float]] = {}
    for i, p in zip(policy["prompt_index"], policy["p_harm"]):
        by_prompt.setdefault(i, []).append(p)
    picked = [x for i in prompts for x in rng.sample(by_prompt[i], min(per, len(by_prompt[i])))]
    return sum(p >= HARM_THRESHOLD for p in picked), len(picked)


def as_eval(harmful: int, n: int) -> PolicyEval:
    return PolicyEval(mean_reward=0.0, harm_rate=harmful / n, kl_per_token=0.0, n=0, harm_n=n)


def main() -> None:
    data = json.load(open(sys.argv[1]))
    replays = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    z = Budgets.from_env().gate_harm_z
    pols = data["policies"]
    base = pols["base"]
    rng = random.Random(0)
    print("| candidate | gate's harm model, all draws | evaluation's judge, same replies | "
          + " | ".join(f"k={k}, m={m}, M={M}" for k, m, M in CONFIGS) + " |")
    print("|---" * (3 + len(CONFIGS)) + "|")

    def reading(p: dict, key: str) -> str:
        vals = p["p_harm"] if key == "p_harm" else p["judge"]
        k, n = sum(v >= 0.5 for v in vals), len(vals)
        if key == "p_harm":
            return f"{k}/{n}"
        lo, hi = wilson_interval(k, n)
        return f"{k}/{n} ({lo:.1%}–{hi:.1%})"

    print(f"| base | {reading(base, 'p_harm')} | {reading(base, 'judge')} | " + " | ".join("–" for _ in CONFIGS) + " |")
    for name, cand in pols.items():
        if name == "base":
            continue
        cells = []
        for k, m, M in CONFIGS:
            refused = 0
            for _ in range(replays):
                prompts = rng.sample(range(data["prompts"]), k)
                c = count(cand, prompts, m, rng)
                b = count(base, prompts, M, rng)
                refused += more_harmful(as_eval(*c), as_eval(*b), z)
            cells.append(f"{refused / replays:.0%}")
        print(f"| {name} | {reading(cand, 'p_harm')} | {reading(cand, 'judge')} | " + " | ".join(cells) + " |")
    rate = sum(v >= HARM_THRESHOLD for v in base["p_harm"]) / len(base["p_harm"])
    for factor in FACTORS:
        cells = []
        for k, m, M in CONFIGS:
            refused = 0
            for _ in range(replays):
                prompts = rng.sample(range(data["prompts"]), k)
                c = (sum(rng.random() < factor * rate for _ in range(k * m)), k * m)
                refused += more_harmful(as_eval(*c), as_eval(*count(base, prompts, M, rng)), z)
            cells.append(f"{refused / replays:.0%}")
        print(f"| synthetic, {factor}x the base ({factor * rate:.1%}) | – | – | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
