"""The typed hand-off from a run's shared stage to its jobs, written to the adapter store.

The worker that runs the shared stage fits the reward and harm models once; every job (on any
worker sharing the data dir) reads them back from ``<adapters>/.runs/run-<id>.json``. JSON only
(each model's own ``state_dict``/``from_state``), written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from learning.config import Budgets

if TYPE_CHECKING:
    from learning.harm import HarmModel
    from learning.reward import RewardModel


@dataclass(frozen=True)
class HeldoutLabels:
    """One user's held-out labels as texts: ranked pairs (chosen prompt, chosen, rejected prompt,
    rejected) and thumbs (prompt, reply, 1 = up)."""

    pairs: tuple[tuple[str, str, str, str], ...] = ()
    points: tuple[tuple[str, str, int], ...] = ()

    def comparisons(self) -> int:
        """How many comparisons they make: each pair, plus min(ups, downs) for the thumbs."""
        ups = sum(label == 1 for _, _, label in self.points)
        return len(self.pairs) + min(ups, len(self.points) - ups)

    def prompts(self) -> int:
        """How many distinct prompts their comparisons rest on: the independent units. Three ranked
        pairs from one ranking of three replies share their replies and their prompt; counted as three
        comparisons, a test reads them as three times the evidence they are."""
        return len({p for pc, _, pr, _ in self.pairs for p in (pc, pr)} | {p for p, _, _ in self.points})

    def replies(self) -> list[tuple[str, str]]:
        """Every distinct (prompt, reply) they mention, in first-seen order."""
        items = [x for pc, c, pr, r in self.pairs for x in ((pc, c), (pr, r))] + [(p, r) for p, r, _ in self.points]
        return list(dict.fromkeys(items))

    def as_json(self) -> dict:
        return {"pairs": [list(x) for x in self.pairs], "points": [list(x) for x in self.points]}

    @classmethod
    def from_json(cls, data: dict) -> "HeldoutLabels":
        return cls(tuple(tuple(x) for x in data.get("pairs", [])), tuple((p, r, int(y)) for p, r, y in data.get("points", [])))


@dataclass
class SharedModels:
    reward: "RewardModel"
    harm: "HarmModel"
    harm_prompts: list[str] = field(default_factory=list)
    """Rendered prompts whose replies users (or the judge) flagged as harmful, newest last."""
    preferred: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    """Per user: (rendered prompt, reply) the user preferred (ranked above another, or thumbs up),
    training split only, oldest first: the warm start's own-label targets."""
    heldout: dict[int, "HeldoutLabels"] = field(default_factory=dict)
    """Per user: their held-out labels (never trained on), which the gate reads directly."""
    pairs: dict[int, list[tuple[str, str, str, str]]] = field(default_factory=dict)
    """Per user: their ranked pairs (chosen prompt, chosen, rejected prompt, rejected), training
    split only, oldest first: the warm start's DPO pairs."""
    excluded: list[int] = field(default_factory=list)
    """Users kept out of the shared pool (the audit's outliers and the operator's exclusions):
    their prompts do not train the global adapter either."""

    def save(self, path: Path) -> None:
        data = {"reward": self.reward.state_dict(), "harm": self.harm.state_dict(), "harm_prompts": self.harm_prompts,
                "preferred": {str(u): [list(x) for x in xs] for u, xs in self.preferred.items()},
                "heldout": {str(u): h.as_json() for u, h in self.heldout.items()},
                "pairs": {str(u): [list(x) for x in xs] for u, xs in self.pairs.items()}, "excluded": self.excluded}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, budgets: Budgets) -> "SharedModels":
        from learning.harm import HarmModel
        from learning.reward import RewardModel

        data = json.loads(path.read_text())
        return cls(RewardModel.from_state(data["reward"], budgets), HarmModel.from_state(data["harm"], budgets),
                   list(data.get("harm_prompts", [])),
                   {int(u): [(p, r) for p, r in xs] for u, xs in data.get("preferred", {}).items()},
                   {int(u): HeldoutLabels.from_json(h) for u, h in data.get("heldout", {}).items()},
                   {int(u): [tuple(x) for x in xs] for u, xs in data.get("pairs", {}).items()},
                   [int(u) for u in data.get("excluded", [])])


def preferred_replies(dataset, heldout_fraction: float) -> dict[int, list[tuple[str, str]]]:
    """Each user's preferred (prompt, reply), from the training split of their pairs and thumbs."""
    from learning.reward import is_heldout

    out: dict[int, list[tuple[str, str]]] = {}
    items = [(p.updated_at, p.user_id, p.prompt, p.chosen) for p in dataset.pairs if not is_heldout(p.split_key, heldout_fraction)]
    items += [(p.updated_at, p.user_id, p.prompt, p.reply) for p in dataset.points
              if p.label == 1 and not is_heldout(p.split_key, heldout_fraction)]
    for _, uid, prompt, reply in sorted(items, key=lambda x: x[0]):
        if (prompt, reply) not in out.setdefault(uid, []):
            out[uid].append((prompt, reply))
    return out


def training_pairs(dataset, heldout_fraction: float) -> dict[int, list[tuple[str, str, str, str]]]:
    """Each user's ranked pairs outside the held-out split, oldest first."""
    from learning.reward import is_heldout

    out: dict[int, list[tuple[str, str, str, str]]] = {}
    for p in sorted(dataset.pairs, key=lambda p: p.updated_at):
        if not is_heldout(p.split_key, heldout_fraction) and p.chosen.strip() and p.rejected.strip():
            out.setdefault(p.user_id, []).append(p.texts)
    return out


GATE_MAX_HELDOUT = 64  # the gate reads at most the newest 64 held-out pairs and 64 thumbs of a user


def heldout_labels(dataset, heldout_fraction: float, limit: int = GATE_MAX_HELDOUT) -> dict[int, HeldoutLabels]:
    """Each user's held-out split (``is_heldout`` by prompt: what the reward model and the warm start
    never see, reply for reply), the newest ``limit`` pairs and ``limit`` thumbs."""
    from learning.reward import is_heldout

    pairs: dict[int, list] = {}
    points: dict[int, list] = {}
    for p in sorted(dataset.pairs, key=lambda p: p.updated_at):
        if is_heldout(p.split_key, heldout_fraction):
            pairs.setdefault(p.user_id, []).append(p.texts)
    for p in sorted(dataset.points, key=lambda p: p.updated_at):
        if is_heldout(p.split_key, heldout_fraction):
            points.setdefault(p.user_id, []).append((p.prompt, p.reply, int(p.label)))
    return {u: HeldoutLabels(tuple(pairs.get(u, ())[-limit:]), tuple(points.get(u, ())[-limit:]))
            for u in sorted(set(pairs) | set(points))}
