"""A library of synthetic raters drawn by a program, for tuning the text reward (issue 26, item 2).

Hand-written profiles describe what their authors thought of; the users this product meets prefer
other things too. To tune the reward model's text features without tuning on anyone's evaluation
profile, raters are drawn at random: each likes or dislikes one to three text indicators
(``service.text_features.tokens``: a word, a bigram, a word in the first sentence or the last line,
a punctuation mark, a line shape) that between ``min_share`` and ``max_share`` of the stored replies
show, with weights drawn from +-[0.5, 1.5]. A rater's score of a reply is the sum of the weights of
the indicators it shows; its votes are noisy like a simulated user's (``noise``).

These raters measure and tune (``assistant reward-curve --raters N``); they never label anything a
training run or the gate sees, and the evaluation's profiles (``learning.sim.profiles``) are never
among them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.text_features import tokens


@dataclass(frozen=True)
class RaterBehaviour:
    noise: float = 0.1
    """Share of votes that are a coin flip (as ``learning.sim.profiles.Behaviour.noise``)."""


@dataclass(frozen=True)
class SyntheticRater:
    name: str
    likes: tuple[tuple[str, float], ...]  # (indicator, weight): negative weights are dislikes
    behaviour: RaterBehaviour = field(default_factory=RaterBehaviour)

    def score(self, prompt: str, reply: str) -> float:
        """The hidden preference over ``reply``'s text (the prompt is not read)."""
        shown = set(tokens(reply))
        return sum(w for indicator, w in self.likes if indicator in shown)


def draw(replies: Sequence[str], count: int, *, seed: int = 0, noise: float = 0.1, min_share: float = 0.1,
         max_share: float = 0.6) -> list[SyntheticRater]:
    """``count`` raters over the indicators ``min_share``..``max_share`` of ``replies`` show."""
    if not replies:
        raise ValueError("synthetic raters need stored replies to draw their indicators from")
    shown = Counter(t for r in replies for t in set(tokens(r)))
    candidates = sorted(t for t, n in shown.items() if min_share <= n / len(replies) <= max_share)
    if not candidates:
        raise ValueError(f"no text indicator is shown by {min_share:.0%}-{max_share:.0%} of the {len(replies)} replies")
    rng = random.Random(seed)
    raters = []
    for i in range(count):
        picked = rng.sample(candidates, k=min(len(candidates), rng.randint(1, 3)))
        likes = tuple((t, rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5)) for t in picked)
        raters.append(SyntheticRater(f"rater{i}", likes, RaterBehaviour(noise)))
    return raters
