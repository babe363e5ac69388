"""Statistics for the evaluation: win rates (ties count half), their Wilson and bootstrap intervals, means.

With several samples per prompt the win rate is a U-statistic: every candidate sample of a prompt
against every base sample of it, averaged per prompt, then over prompts (the same estimand as one
sample each, with less variance). Samples of one prompt are not independent, so the intervals
treat the prompt as the unit: a percentile bootstrap over prompts, and Wilson's interval with n =
the number of prompts (conservative: a prompt's mean varies less than one Bernoulli draw).
"""

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


def pooled_win_rate(per_prompt: Sequence[Sequence[float]], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """``per_prompt[i]``: the outcomes (1 win, 0.5 tie, 0 loss) of every candidate x baseline pair
    of prompt i. One sample each reduces to ``win_rate`` (same rate, counts and intervals)."""
    means = [sum(o) / len(o) for o in per_prompt if o]
    flat = [x for o in per_prompt for x in o]
    wins, ties = sum(x == 1.0 for x in flat), sum(x == 0.5 for x in flat)
    n = len(means)
    rate = sum(means) / n if n else 0.5
    return {"rate": rate, "wins": wins, "ties": ties, "losses": len(flat) - wins - ties, "n": len(flat),
            "prompts": n, "wilson": list(wilson_interval(rate * n, n, confidence)),
            "bootstrap": list(bootstrap_interval(means, confidence, resamples, seed)), "per_prompt": means}


def compare_pools(profile: Profile, prompts: Sequence[str], candidate: Sequence[Sequence[str]],
                  baseline: Sequence[Sequence[str]]) -> list[list[float]]:
    """Per prompt: every candidate sample against every baseline sample under ``profile`` (1, 0.5 tie, 0)."""
    return [[0.5 if c == b else profile.prefers(p, c, b) for c in cs for b in bs]
            for p, cs, bs in zip(prompts, candidate, baseline)]


def share(per_prompt: Sequence[Sequence[bool]], confidence: float = 0.95, resamples: int = 2000,
          seed: int = 0) -> dict[str, Any]:
    """The share of true flags over every sample, with Wilson's interval over samples and a
    bootstrap over prompts (the honest one when a prompt's samples agree with each other)."""
    flat = [bool(x) for xs in per_prompt for x in xs]
    k = sum(flat)
    return {"share": k / len(flat) if flat else None, "count": k, "n": len(flat),
            "wilson": list(wilson_interval(k, len(flat), confidence)),
            "bootstrap": list(bootstrap_interval([sum(xs) / len(xs) for xs in per_prompt if xs], confidence, resamples, seed))}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` (the same prompts, measured twice) with a percentile bootstrap over i."""
    diffs = [x - y for x, y in zip(a, b)]
    return {"difference": sum(diffs) / len(diffs) if diffs else None, "n": len(diffs),
            "bootstrap": list(bootstrap_interval(diffs, confidence, resamples, seed)) if diffs else None}


def chi2_quantile(p: float, df: int) -> float:
    """The p-quantile of the chi-square distribution with ``df`` degrees of freedom (Wilson and
    Hilferty 1931: within 2% of the exact value from df = 8 on, cruder in the lower tail below)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    return df * max(0.0, 1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def pooled_retest_spread(spreads: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """The spread a rerun shows, pooled over users: the root mean square of each user's difference
    between the win rates of two seed sets, with the chi-square interval of that RMS (each
    difference drawn from N(0, sigma^2), the users independent).

    One user's difference is itself one draw: at sigma = 3 points a user reads above 3 about a third
    of the time, and the largest of eight is above 3 most of the time, so the RMS is what a target on
    "the spread" can be read against. ``one_reading`` is sigma / sqrt(2): the standard deviation of a
    single reading of a user's win rate."""
    n = len(spreads)
    if n == 0:
        return {"users": 0, "rms": None, "interval": None, "one_reading": None}
    squares = sum(float(d) ** 2 for d in spreads)
    rms = math.sqrt(squares / n)
    tail = (1 - confidence) / 2
    low_q, high_q = chi2_quantile(1 - tail, n), chi2_quantile(tail, n)
    interval = [math.sqrt(squares / low_q), math.sqrt(squares / high_q) if high_q > 0 else math.inf]
    return {"users": n, "rms": rms, "interval": interval, "one_reading": rms / math.sqrt(2)}
