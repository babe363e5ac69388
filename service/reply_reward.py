"""A user's reward, as serving reads it: what personal best-of-n chooses by.

The learning job fits each user's reward (``learning.reward``: named reply traits, standardised,
and per user a Laplace posterior over their weights) and, when the basis is the traits alone,
writes the part serving needs beside the adapter it publishes (``REWARD_FILE``): the traits'
standardisation, the user's weights and the population's. Serving scores a candidate reply as

    score = (the user's reward - k * its standard deviation) + the population's reward

(the issue's rule: the user's lower bound, so a reply the user's few labels cannot vouch for is not
chosen on a guess, plus what everyone agrees on). Nothing here touches the model: traits are
computed from the text, so scoring n candidates costs well under a millisecond each; so are the
hashed text features (``service.text_features``) when the trainer's basis has them.

A basis with backbone directions (``ASSISTANT_REWARD_COMPONENTS`` > 0) needs the model's hidden
states; the trainer writes no file for it and serving falls back to one candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from service import traits as T
from service.adapter_store import REWARD_FILE
from service.text_features import projection_from_state, projection_to_state, text_block

logger = logging.getLogger(__name__)


@dataclass
class Preference:
    """One scope's reward ``(w . (z - center)) / scale`` with its Laplace posterior over ``w``."""

    weight: torch.Tensor  # (D,) MAP weights
    cov: torch.Tensor  # (D, D) posterior covariance of the weights
    thumbs_bias: float  # logit of a thumbs up at the average reply
    center: torch.Tensor  # (D,) mean z of the training replies: rewards are relative to it
    scale: float  # std of w . z over the training replies: rewards are in those units
    labels: int  # labels this scope's own likelihood used

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.center) @ self.weight) / self.scale  # (N, D) -> (N,)

    def std(self, z: torch.Tensor) -> torch.Tensor:
        d = z - self.center  # (N, D)
        return ((d @ self.cov) * d).sum(1).clamp(min=0).sqrt() / self.scale  # (N,)

    def lower(self, z: torch.Tensor, k: float) -> torch.Tensor:
        """The conservative reward ``mean - k std``."""
        return self.mean(z) - k * self.std(z)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.tolist(), "cov": self.cov.tolist(), "thumbs_bias": self.thumbs_bias,
                "center": self.center.tolist(), "scale": self.scale, "labels": self.labels}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "Preference":
        return cls(torch.tensor(s["weight"]), torch.tensor(s["cov"]), float(s["thumbs_bias"]), torch.tensor(s["center"]),
                   float(s["scale"]), int(s["labels"]))


@dataclass
class ReplyReward:
    """The text-only reward of one user: trait standardisation, their weights, the population's."""

    trait_mu: torch.Tensor  # (T,)
    trait_sd: torch.Tensor  # (T,)
    user: Preference
    population: Preference
    k: float  # standard deviations below the user's mean (the trainer's ``reward_uncertainty_k``)
    text_mu: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (H,) hashed text features' mean; H = 0: none
    text_proj: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0)))  # (H, K) the text basis; K = 0: buckets

    def z(self, prompt: str, replies: Sequence[str]) -> torch.Tensor:
        """(N, T + H or K) standardised traits of ``replies`` to ``prompt``, then their text block (``text_block``)."""
        traits = (T.trait_matrix([T.user_text(prompt)] * len(replies), replies) - self.trait_mu) / self.trait_sd
        if not self.text_mu.shape[0]:
            return traits
        return torch.cat([traits, text_block(replies, self.text_mu, self.text_proj)], dim=1)

    def score(self, prompt: str, replies: Sequence[str], population_weight: float = 1.0) -> list[float]:
        """Best-of-n's choice criterion per reply: the user's lower bound plus ``population_weight`` times the
        population's mean (the user's weights already shrink toward the population's, their prior: weight 0 counts
        the population once, through that prior)."""
        if not replies:
            return []
        z = self.z(prompt, replies)
        lower = self.user.lower(z, self.k)
        return (lower + population_weight * self.population.mean(z)).tolist() if population_weight else lower.tolist()

    def population_score(self, prompt: str, replies: Sequence[str]) -> list[float]:
        """The population's reward alone (reranking without personalisation, for the evaluation)."""
        return self.population.mean(self.z(prompt, replies)).tolist() if replies else []

    def population_key(self) -> str:
        """What ``population_score`` depends on, as a digest: rewards fitted in one training run share it,
        so an evaluation reranks the base by the population's reward once for all of them."""
        state = self.state_dict()
        del state["user"], state["k"]
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def state_dict(self) -> dict[str, Any]:
        return {"trait_names": list(T.NAMES), "trait_mu": self.trait_mu.tolist(), "trait_sd": self.trait_sd.tolist(),
                "user": self.user.state_dict(), "population": self.population.state_dict(), "k": self.k,
                "text_mu": self.text_mu.tolist(), "text_proj": projection_to_state(self.text_proj)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ReplyReward":
        if state.get("trait_names") != list(T.NAMES):
            raise ValueError("the reward was fitted with another trait set; the next training run writes a new one")
        text_mu = torch.tensor(state.get("text_mu", []), dtype=torch.float32)
        return cls(torch.tensor(state["trait_mu"]), torch.tensor(state["trait_sd"]), Preference.from_state(state["user"]),
                   Preference.from_state(state["population"]), float(state["k"]), text_mu,
                   projection_from_state(state.get("text_proj"), len(text_mu)))

    def save(self, adapter_dir: Path) -> None:
        (adapter_dir / REWARD_FILE).write_text(json.dumps(self.state_dict()))

    @classmethod
    def load(cls, adapter_dir: Path) -> "ReplyReward | None":
        """The reward stored beside an adapter; None when it has none (an older adapter, a backbone basis)."""
        path = adapter_dir / REWARD_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_state(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring the reward stored at %s (%s): this adapter is served with one candidate", path, e)
            return None
