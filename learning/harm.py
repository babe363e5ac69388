"""One global harm classifier, with the trainer's automated harm judge beside it.

The classifier is a logistic head on the same frozen-backbone features as the reward model
(``learning.reward.FeatureCache``), trained on harm labels pooled from all users (capped per
user, and as a share of the positives). It is never personalised: PPO subtracts
``lambda * P(harm)`` from every user's reward, so no user's votes can make harm rewarded.

The judges' one registry is ``service.judges`` (the serving filter uses it too); its names are
re-exported here. Operators pick the trainer's with ``ASSISTANT_HARM_JUDGE`` (default ``insults``:
better-profanity's list plus an insult lexicon written for the trainer); its flags become extra
harm labels and its score is part of P(harm) in the PPO penalty and the gate. The evaluation scores harm with ``profanity-check`` (a trained SVM), a
different function from the trainer's default (a word list), so the yardstick is not what PPO
optimised.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from learning.config import Budgets
from learning.data import Dataset
from learning.harm_rows import SOURCE_PREFIX
from learning.losses import pointwise_bce_loss
from learning.reward import FeatureCache, is_heldout
from service.judges import (  # noqa: F401  (the registry lives in service.judges; learning code imports it from here)
    DEFAULT_JUDGE_THRESHOLD, DEFAULT_KEYWORDS, INSULT_LEXICON, WORDLIST, BetterProfanityJudge, HarmJudge, InsultLexiconJudge,
    JudgeUnavailable, KeywordJudge, ProfanityCheckJudge, WordListJudge, judge_flagger, make_judge, register_judge,
)

logger = logging.getLogger(__name__)


def _heldout_metrics(pred: torch.Tensor, y: torch.Tensor, prefix: str) -> dict[str, object]:
    """Labels, accuracy, recall and false-positive rate of (N,) 0/1 predictions against (N,) labels."""
    out: dict[str, object] = {f"{prefix}_labels": len(y)}
    if len(y):
        out[f"{prefix}_accuracy"] = float((pred == y).float().mean())
    if y.sum() > 0:
        out[f"{prefix}_recall"] = float((pred * y).sum() / y.sum())
    if (1 - y).sum() > 0:
        out[f"{prefix}_false_positive_rate"] = float((pred * (1 - y)).sum() / (1 - y).sum())
    return out


class HarmModel:
    """P(harmful | prompt, reply). Untrained (fewer than ``harm_min_positive`` harmful labels) means
    the head gives 0 everywhere and only the judge, if any, scores harm."""

    def __init__(self, cache: FeatureCache | None, budgets: Budgets, judge: HarmJudge | None = None) -> None:
        self.cache = cache
        self.budgets = budgets
        self.judge = judge
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.mu: torch.Tensor | None = None
        self.sigma: torch.Tensor | None = None
        self.metrics: dict[str, object] = {}

    @property
    def trained(self) -> bool:
        return self.weight is not None

    def fit(self, pool: Dataset) -> dict[str, object]:
        frac = self.budgets.heldout_fraction
        train = [h for h in pool.harm if not is_heldout(h.key, frac)]
        held = [h for h in pool.harm if is_heldout(h.key, frac)]
        n_pos = sum(h.harmful for h in train)
        self.metrics = {"harm/train_labels": len(train), "harm/train_positive": n_pos, "harm/trained": False}
        if n_rows := sum(h.source.startswith(SOURCE_PREFIX) for h in train):
            self.metrics["harm/train_safety_rows"] = n_rows
        if n_pos < self.budgets.harm_min_positive or n_pos == len(train):
            logger.info("harm head not trained: %d harmful of %d labels (needs at least %d harmful and some harmless; "
                        "ASSISTANT_HARM_MIN_POSITIVE); harm is scored by the judge only", n_pos, len(train),
                        self.budgets.harm_min_positive)
            return self.metrics
        cache = self.cache
        if cache is None:
            raise RuntimeError("this harm model has no feature cache (it was made by from_state); it only scores features")
        feats = cache.features([h.prompt for h in train], [h.reply for h in train])  # (N, F)
        labels = torch.tensor([float(h.harmful) for h in train])
        self.mu, self.sigma = feats.mean(0), feats.std(0).clamp(min=1e-4)
        torch.manual_seed(self.budgets.seed)
        w = torch.zeros(feats.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=self.budgets.reward_lr)
        x = (feats - self.mu) / self.sigma
        stats: dict[str, float] = {}
        # The rare positives are up-weighted so the head learns them at all; that shifts every logit
        # by log(pos_weight) (the odds of the re-weighted sample), which left in place calls ordinary
        # replies harmful. Subtracting it again restores the labels' own base rate (the prior
        # correction of King & Zeng 2001, "Logistic Regression in Rare Events Data", sec. 4.1), so
        # P(harm) is a probability the PPO penalty and the gate's 0.5 cut can use.
        pos_weight = (len(train) - n_pos) / n_pos
        for _ in range(self.budgets.harm_steps):
            loss, stats = pointwise_bce_loss(x @ w + b, labels, pos_weight=pos_weight)
            loss = loss + self.budgets.harm_weight_decay * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weight, self.bias = w.detach(), b.detach() - math.log(pos_weight)
        self.metrics.update({"harm/trained": True, "harm/train_loss": stats["loss"], "harm/train_accuracy": stats["accuracy"],
                             "harm/prior_correction": -math.log(pos_weight)})
        if held:
            pred = (self.prob(cache.features([h.prompt for h in held], [h.reply for h in held])) >= 0.5).float()
            y = torch.tensor([float(h.harmful) for h in held])
            self.metrics.update(_heldout_metrics(pred, y, "harm/heldout"))
            from_rows = torch.tensor([h.source.startswith(SOURCE_PREFIX) for h in held])
            if from_rows.any():  # the safety stage's rows are easier than users' labels: report the two apart
                self.metrics.update(_heldout_metrics(pred[from_rows], y[from_rows], "harm/heldout_safety_rows"))
                self.metrics.update(_heldout_metrics(pred[~from_rows], y[~from_rows], "harm/heldout_db"))
        return self.metrics

    def state_dict(self) -> dict[str, object]:
        """The fitted head (if any) and its metrics, JSON-safe; the judge is rebuilt from the budgets."""
        head = {k: getattr(self, k).tolist() for k in ("weight", "bias", "mu", "sigma")} if self.trained else None
        return {"metrics": self.metrics, "head": head}

    @classmethod
    def from_state(cls, state: dict[str, Any], budgets: Budgets) -> "HarmModel":
        """A model that scores features it is given (no feature cache), with the budgets' judge."""
        model = cls(None, budgets, judge=make_judge(budgets.harm_judge))
        model.metrics = dict(state["metrics"])
        head = state.get("head")
        if head:
            model.weight, model.bias, model.mu, model.sigma = (torch.tensor(head[k]) for k in ("weight", "bias", "mu", "sigma"))
        return model

    def prob(self, feats: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """(N, F) features [and the reply texts, for the judge] -> (N,) harm probability."""
        if self.trained:
            # fit and from_state set the head's four tensors together
            assert self.mu is not None and self.sigma is not None and self.weight is not None and self.bias is not None
            p = torch.sigmoid(((feats - self.mu) / self.sigma) @ self.weight + self.bias)
        else:
            p = torch.zeros(feats.shape[0])
        if self.judge is not None and texts is not None:
            p = torch.maximum(p, torch.tensor(self.judge.score(list(texts)), dtype=p.dtype))
        return p
