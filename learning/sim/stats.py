"""Statistics for the evaluation: win rates (ties count half), their Wilson and bootstrap intervals, means."""

from __future__ import annotations

import math
import random
from typing import Any, NamedTuple, Sequence

from learning.sim.profiles import Profile


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927). ``successes`` may be fractional
    (wins + ties/2). n = 0 gives the uninformative (0, 1)."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(outcomes: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``outcomes``."""
    if not outcomes:
        return (0.0, 1.0)
    rng = random.Random(seed)
    n = len(outcomes)
    means = sorted(sum(rng.choices(outcomes, k=n)) / n for _ in range(resamples))
    lo = means[int(math.floor((1 - confidence) / 2 * (resamples - 1)))]
    hi = means[int(math.ceil((1 + confidence) / 2 * (resamples - 1)))]
    return (lo, hi)


class WinRate(NamedTuple):
    rate: float  # (wins + ties / 2) / n
    wins: int
    ties: int
    losses: int
    n: int
    wilson: tuple[float, float]
    bootstrap: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "wins": self.wins, "ties": self.ties, "losses": self.losses, "n": self.n,
                "wilson": list(self.wilson), "bootstrap": list(self.bootstrap)}


def win_rate(outcomes: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> WinRate:
    """``outcomes``: 1 = win, 0.5 = tie, 0 = loss."""
    n = len(outcomes)
    wins = sum(o == 1.0 for o in outcomes)
    ties = sum(o == 0.5 for o in outcomes)
    score = wins + ties / 2
    return WinRate(score / n if n else 0.5, wins, ties, n - wins - ties, n, wilson_interval(score, n, confidence),
                   bootstrap_interval(outcomes, confidence, resamples, seed))


def compare(profile: Profile, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str]) -> list[float]:
    """Per prompt: does ``candidate`` beat ``baseline`` under ``profile``? (1, 0.5 tie, 0)"""
    return [0.5 if c == b else profile.prefers(p, c, b) for p, c, b in zip(prompts, candidate, baseline)]


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else None
