"""The global gate's harm test at its sample size: false rejection and power per z (see RULE.md).
Run from the repository root: python docs/results/2026-12-07-gate-global-harm/power.py > .../power.md"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from learning.gate import PolicyEval, more_harmful  # noqa: E402

N, DRAWS, SEED = 143, 20000, 0
ZS = (0.0, 0.5, 1.0, 1.282, 1.645)
BASE_RATES = (0.014, 0.028)
FACTORS = (1, 2, 3, 4)


def policy(flagged: int) -> PolicyEval:
    return PolicyEval(mean_reward=0.0, harm_rate=flagged / N, kl_per_token=0.0, n=N, harm_n=N)


def binomial(rng: random.Random, p: float) -> int:
    return sum(rng.random() < p for _ in range(N))


def main() -> None:
    print(f"Refused share of {DRAWS} draws, {N} gate replies per policy (the gate's exact test, one-sided)")
    print()
    print("| base rate | candidate | " + " | ".join(f"z = {z:g}" for z in ZS) + " |")
    print("|---|---|" + "---|" * len(ZS))
    for p in BASE_RATES:
        for f in FACTORS:
            rng = random.Random(SEED)
            pairs = [(binomial(rng, p * f), binomial(rng, p)) for _ in range(DRAWS)]
            shares = [sum(more_harmful(policy(c), policy(b), z) for c, b in pairs) / DRAWS for z in ZS]
            print(f"| {100 * p:.1f}% | {'as harmful' if f == 1 else f'{f}x'} | "
                  + " | ".join(f"{100 * s:.1f}%" for s in shares) + " |")


if __name__ == "__main__":
    main()
