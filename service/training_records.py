"""The records learning writes into an adapter version's ``metrics`` and the service reads back.

``AdapterVersion.metrics`` is a JSON column of flat slash keys (``reward/accuracy``,
``gate/candidate/mean_reward``, ...): the charts and every stored row use them. The keys that cross
from learning to the service are defined here, once: learning builds ``UserRewardSummary`` for each
user's reward model (``learning/reward.py``) and names the gate's comparisons with the constants
below (``learning/gate.py``); "what the assistant learned" (``service/routes/me.py``) reads them
with ``Readings.of``. A rename on one side fails ``tests/service/test_training_records.py``, not a
user's page. Nothing is migrated: the stored format is the one older rows already have.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

REWARD = "reward/"
GATE_CANDIDATE = "gate/candidate"
GATE_BASE = "gate/base"
GATE_WIN_RATE_VS_BASE = "gate/win_rate_vs_base"
"""Share of the gate's prompts where the candidate's reply out-scored the base's."""
MEAN_REWARD = "mean_reward"
"""``PolicyEval.mean_reward``, under ``<gate policy prefix>/``."""


class TraitWeight(BaseModel):
    """One reply trait and how much it moves this scope's reward (per standard deviation)."""

    model_config = ConfigDict(extra="forbid")
    trait: str
    description: str
    weight: float
    likes: bool


class UserRewardSummary(BaseModel):
    """What one user's reward model learned; stored as ``reward/<field>`` on their adapter version."""

    model_config = ConfigDict(extra="forbid")
    personalized: bool = False
    labels: int = 0  # labels the reward model fitted for this user
    top_traits: list[TraitWeight] = []
    heldout_pairs: int | None = None
    accuracy: float | None = None  # the user's held-out pairs their reward ordered right
    global_accuracy: float | None = None  # the same pairs under the population's reward
    length_baseline_accuracy: float | None = None  # the same pairs under "the longer reply wins"

    def flat(self) -> dict[str, Any]:
        return {REWARD + k: v for k, v in self.model_dump(exclude_none=True).items()}


class Readings(BaseModel):
    """What the service shows of one adapter version's training round."""

    reward: UserRewardSummary | None = None  # None: a row without a personal reward summary (older, or global)
    win_rate_vs_base: float | None = None
    mean_reward: float | None = None
    base_mean_reward: float | None = None

    @classmethod
    def of(cls, metrics: dict[str, Any] | None) -> "Readings":
        m = metrics or {}
        reward = {k[len(REWARD):]: v for k, v in m.items()
                  if k.startswith(REWARD) and k[len(REWARD):] in UserRewardSummary.model_fields}
        try:
            summary = UserRewardSummary.model_validate(reward) if reward else None
        except ValidationError:
            summary = None  # a row some older release wrote differently: shown without it, never a 500
        return cls(reward=summary, win_rate_vs_base=m.get(GATE_WIN_RATE_VS_BASE),
                   mean_reward=m.get(f"{GATE_CANDIDATE}/{MEAN_REWARD}"), base_mean_reward=m.get(f"{GATE_BASE}/{MEAN_REWARD}"))
