"""Personal reward model: a shared, low-dimensional basis of preference directions and, per user,
a few weights with a prior, fitted in milliseconds from the labels users actually give.

Why this shape (measured with ``assistant reward-curve``): a 1,152-input linear head per user,
fitted from ~20 pairs, stayed at 0.55-0.68 held-out accuracy and gained little with 600 pairs.
Personalised reward models that work at that label count (PReF, LoRe, PAL) share a basis of K
preference directions across users and give each user only K weights. Here the basis is

    z(prompt, reply) = [ traits (``service.traits``: ~20 named style traits, standardised),
                         optionally K principal directions of the frozen backbone's features
                         (over the replies labels mention: unsupervised, shared by everyone),
                         optionally the pooled reward direction (a ridge-logistic head on the
                         backbone's features fitted on every user's labels) ]

(both optional parts are off by default: ``assistant reward-curve`` measured that they cost
accuracy at the label counts users give -- see ``Budgets.reward_components``)

and a user's reward is ``r_u = w_u . z``. Fitting (``learning.preference_fit``: Newton's method on the
exact log-posterior, so no step size or step count to tune):

- population: Bradley-Terry on all pooled pairs + logistic on all pooled thumbs (a thumbs bias
  ``b`` absorbs how generous raters are), with a Gaussian prior N(0, 1/(2 reward_weight_decay));
- per user: the same likelihood on the user's own labels with the prior N(w_pop, 1/(2 user_head_l2)),
  so a user with 3 labels sits near the population and one with 100 is their own; their own
  thumbs bias. Thumbs are unpaired labels (KTO: nearly as informative as pairs) and count here.
- uncertainty: the Laplace approximation (the inverse Hessian at the optimum) gives each reward a
  standard deviation; PPO and the gate use the lower bound ``mean - k std`` (Coste et al. 2023
  use an ensemble's ``mean - k std`` for the same reason: an optimiser finds a reward model's
  errors, and the errors are largest where it is least certain).

Rewards are standardised (zero mean over the training replies, unit spread of ``w . z`` there) so
the PPO penalties (KL, harm, no end-of-turn) mean the same for every user.

The model serialises itself (``state_dict``/``from_state``, JSON-safe) for the hand-off from the
shared stage to the jobs. ``evaluate`` reports held-out pairwise accuracy next to "longer wins".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import torch

from learning.config import Budgets
from learning.data import Dataset, PointLabel, PreferencePair
from learning.losses import bradley_terry_loss, pointwise_bce_loss
from learning.preference_fit import fit_preferences_with_evidence
from service import traits as T
from service.reply_reward import Preference, ReplyReward
from service.text_features import hashed_matrix, projection_from_state, projection_to_state, text_block, text_directions
from service.training_records import TraitWeight, UserRewardSummary

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def reference_mode(model) -> contextlib.AbstractContextManager:
    """The frozen base: ``model.disable_adapter()`` on a PEFT model, nothing otherwise."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, L)


def reply_features(hidden_states: Sequence[torch.Tensor], reply_mask: torch.Tensor) -> torch.Tensor:
    """The final layer at the last reply token, concatenated with the middle layer's mean over
    the reply tokens.

    ``hidden_states``: the model's per-layer outputs (embeddings first), each (B, L, H);
    ``reply_mask``: (B, L) 1.0 on reply tokens. Returns (B, 2H).
    """
    final, middle = hidden_states[-1], hidden_states[len(hidden_states) // 2]
    mask = reply_mask.to(final.device, final.dtype)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(1).values.clamp(min=0)  # (B,)
    h_last = final[torch.arange(final.shape[0]), last]  # (B, H)
    h_mean = (middle * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)  # (B, H)
    return torch.cat([h_last, h_mean], dim=-1).float()


class FeatureCache:
    """Frozen-backbone features of (prompt, reply) pairs, computed in batches and memoised."""

    def __init__(self, model: "PreTrainedModel", tokenizer, budgets: Budgets, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.budgets = budgets
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _key(prompt: str, reply: str) -> str:
        return hashlib.sha256(f"{prompt}\x00{reply}".encode()).hexdigest()

    def _encode(self, prompt: str, reply: str) -> tuple[list[int], int]:
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids[-self.budgets.max_prompt_tokens:]
        reply_ids = tok(reply, add_special_tokens=False).input_ids[: self.budgets.max_reply_tokens - 1]
        reply_ids = reply_ids + [tok.eos_token_id]  # stored replies ended their turn, as PPO samples do
        return prompt_ids + reply_ids, len(prompt_ids)

    @torch.no_grad()
    def features(self, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        """(N, 2H) features for N (prompt, reply) pairs."""
        keys = [self._key(p, r) for p, r in zip(prompts, replies)]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        inputs = {k: (p, r) for k, p, r in zip(keys, prompts, replies)}
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            encoded = [self._encode(*inputs[k]) for k in chunk]
            L = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(chunk), L), pad, dtype=torch.long)  # (B, L) right-padded
            attention = torch.zeros((len(chunk), L), dtype=torch.long)
            reply_mask = torch.zeros((len(chunk), L))
            for i, (ids, n_prompt) in enumerate(encoded):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = 1
                reply_mask[i, n_prompt: len(ids)] = 1.0
            device = next(self.model.parameters()).device
            with reference_mode(self.model):
                out = self.model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    position_ids=position_ids_for(attention).to(device),
                    output_hidden_states=True,
                    logits_to_keep=1,
                )
            feats = reply_features(out.hidden_states, reply_mask).cpu()  # (B, 2H): two layers used, only they move
            for k, f in zip(chunk, feats):
                self._cache[k] = f
        if not keys:
            return torch.zeros((0, self.dim))
        return torch.stack([self._cache[k] for k in keys])

    @property
    def dim(self) -> int:
        return 2 * self.model.config.hidden_size


@dataclass
class RewardHead:
    """A ridge-logistic head on the backbone's features: ``logits(x) = w . (x - mu) / sigma + b``.

    The pooled reward direction of the basis; unstandardised logits (the BCE logit for thumbs)."""

    weight: torch.Tensor  # (F,)
    bias: torch.Tensor  # ()
    mu: torch.Tensor  # (F,)
    sigma: torch.Tensor  # (F,)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mu) / self.sigma) @ self.weight + self.bias  # (N, F) -> (N,)


def fit_head(
    pair_feats: tuple[torch.Tensor, torch.Tensor] | None,
    point_feats: tuple[torch.Tensor, torch.Tensor] | None,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    budgets: Budgets,
) -> tuple[RewardHead, dict[str, float]]:
    """Full-batch Adam on BT(pairs) + bce_weight * BCE(thumbs) + reward_weight_decay * |w|^2."""
    torch.manual_seed(budgets.seed)
    dim = mu.shape[0]
    w = torch.zeros(dim, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=budgets.reward_lr)
    stats: dict[str, float] = {}
    for _ in range(budgets.reward_steps):
        head = RewardHead(w, b, mu, sigma)
        loss = budgets.reward_weight_decay * w.pow(2).sum()
        if pair_feats is not None:
            bt, bt_stats = bradley_terry_loss(head.logits(pair_feats[0]), head.logits(pair_feats[1]))
            loss = loss + bt
            stats.update({f"bt_{k}": v for k, v in bt_stats.items()})
        if point_feats is not None:
            bce, bce_stats = pointwise_bce_loss(head.logits(point_feats[0]), point_feats[1])
            loss = loss + budgets.reward_bce_weight * bce
            stats.update({f"bce_{k}": v for k, v in bce_stats.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return RewardHead(w.detach(), b.detach(), mu, sigma), stats


@dataclass
class Basis:
    """``z = [standardised traits, K backbone principal directions, the pooled reward direction]``."""

    trait_mu: torch.Tensor  # (T,)
    trait_sd: torch.Tensor  # (T,)
    lm_mu: torch.Tensor  # (F,)
    lm_sd: torch.Tensor  # (F,)
    components: torch.Tensor  # (F, K) orthonormal directions of the standardised backbone features
    pc_sd: torch.Tensor  # (K,)
    pooled: RewardHead | None  # the pooled reward direction on the backbone's features
    pooled_mu: float = 0.0
    pooled_sd: float = 1.0
    text_mu: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (H,) mean hashed text features; H = 0: off
    text_proj: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0)))  # (H, K) text basis; K = 0: the buckets

    @property
    def text_dim(self) -> int:
        """The text block's width in ``z``: K directions of the text basis, else H buckets (0: off)."""
        return int(self.text_proj.shape[1]) if self.text_proj.numel() else int(self.text_mu.shape[0])

    @property
    def names(self) -> list[str]:
        text = "text_pc" if self.text_proj.numel() else "text_h"
        return list(T.NAMES) + [f"{text}{i}" for i in range(self.text_dim)] + \
            [f"backbone_pc{i + 1}" for i in range(self.components.shape[1])] + \
            (["pooled_reward"] if self.pooled is not None else [])

    def text_slice(self) -> slice:
        """Where the hashed text features sit in ``z`` (right after the traits)."""
        return slice(len(T.NAMES), len(T.NAMES) + self.text_dim)

    @property
    def dim(self) -> int:
        return len(self.names)

    def __call__(self, feats: torch.Tensor, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        """(N, F) backbone features and the N texts -> (N, D)."""
        traits = (T.trait_matrix([T.user_text(p) for p in prompts], replies) - self.trait_mu) / self.trait_sd  # (N, T)
        text = text_block(replies, self.text_mu, self.text_proj)  # (N, H or K)
        x = (feats.float() - self.lm_mu) / self.lm_sd  # (N, F)
        parts = [traits, text, (x @ self.components) / self.pc_sd]  # (N, K)
        if self.pooled is not None:
            parts.append(((self.pooled.logits(feats.float()) - self.pooled_mu) / self.pooled_sd).unsqueeze(1))  # (N, 1)
        return torch.cat(parts, dim=1)

    @classmethod
    def fit(cls, feats: torch.Tensor, prompts: Sequence[str], replies: Sequence[str], k: int,
            pooled: RewardHead | None, text_dim: int = 0, text_basis: int = 0) -> "Basis":
        """Statistics of the training replies; the top-``k`` principal directions of their features;
        ``text_dim`` hashed text features (``service.text_features``; 0 = none), projected on their top-``text_basis``
        principal directions over the training replies when ``text_basis`` > 0."""
        traits = T.trait_matrix([T.user_text(p) for p in prompts], replies)  # (N, T)
        trait_mu, trait_sd = traits.mean(0), traits.std(0).clamp(min=0.05) if len(traits) > 1 else torch.ones(traits.shape[1])
        lm_mu = feats.mean(0)
        lm_sd = feats.std(0).clamp(min=1e-4) if len(feats) > 1 else torch.ones(feats.shape[1])
        x = (feats - lm_mu) / lm_sd  # (N, F)
        k = max(0, min(k, len(feats) - 1))
        if k:
            _, _, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: directions, by variance
            components = v[:k].T.contiguous()  # (F, K)
            pc_sd = (x @ components).std(0).clamp(min=1e-4)
        else:
            components, pc_sd = torch.zeros((feats.shape[1], 0)), torch.ones(0)
        text_mu = hashed_matrix(replies, text_dim).mean(0) if text_dim and len(replies) else torch.zeros(text_dim)
        text_proj = text_directions(replies, text_mu, text_basis) if text_dim and text_basis else torch.zeros((text_dim, 0))
        basis = cls(trait_mu, trait_sd, lm_mu, lm_sd, components, pc_sd, None, text_mu=text_mu, text_proj=text_proj)
        if pooled is not None:
            with torch.no_grad():
                s = pooled.logits(feats)
            basis.pooled, basis.pooled_mu = pooled, float(s.mean())
            basis.pooled_sd = float(s.std()) if len(s) > 1 and float(s.std()) > 1e-6 else 1.0
        return basis

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trait_names": list(T.NAMES), "trait_mu": self.trait_mu.tolist(), "trait_sd": self.trait_sd.tolist(),
                               "lm_mu": self.lm_mu.tolist(), "lm_sd": self.lm_sd.tolist(),
                               "components": self.components.tolist(), "pc_sd": self.pc_sd.tolist(),
                               "pooled_mu": self.pooled_mu, "pooled_sd": self.pooled_sd, "pooled": None,
                               "text_mu": self.text_mu.tolist(), "text_proj": projection_to_state(self.text_proj)}
        if self.pooled is not None:
            out["pooled"] = {k: getattr(self.pooled, k).tolist() for k in ("weight", "bias", "mu", "sigma")}
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Basis":
        if state["trait_names"] != list(T.NAMES):
            raise ValueError("the stored reward model was fitted with another trait set; queue a new training run")
        t = lambda k: torch.tensor(state[k], dtype=torch.float32)  # noqa: E731
        comps = t("components")
        pooled = None if state["pooled"] is None else RewardHead(
            *(torch.tensor(state["pooled"][k], dtype=torch.float32) for k in ("weight", "bias", "mu", "sigma")))
        text_mu = torch.tensor(state.get("text_mu", []), dtype=torch.float32)  # a model from before the text features: none
        return cls(t("trait_mu"), t("trait_sd"), t("lm_mu"), t("lm_sd"), comps.reshape(len(state["lm_mu"]), -1),
                   t("pc_sd"), pooled, state["pooled_mu"], state["pooled_sd"], text_mu,
                   projection_from_state(state.get("text_proj"), len(text_mu)))


def is_heldout(key: str, fraction: float) -> bool:
    """Stable train/held-out split by a hash of the example's ids."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def length_baseline_accuracy(pairs: Sequence[PreferencePair]) -> float | None:
    """"Longer reply wins", ties count half."""
    if not pairs:
        return None
    wins = [1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs]
    return sum(wins) / len(wins)


THUMBS_BIAS_PRECISION = 0.1  # a weak prior on how generous a rater's thumbs are (logit scale)
# The text block's prior precisions (times the traits') a scope's evidence chooses among with
# ``reward_text_evidence``; the last is "no text" (weights pinned at the prior mean).
REWARD_TEXT_PRECISION_GRID = (1.0, 4.0, 16.0, 64.0, 1e6)


_Part = TypeVar("_Part")


def _fitted(part: _Part | None) -> _Part:
    if part is None:
        raise RuntimeError("reward model not fitted; call fit() first")
    return part


class RewardModel:
    """The shared basis, the population's weights and each user's; scores features + texts."""

    def __init__(self, cache: FeatureCache | None, budgets: Budgets) -> None:
        self.cache = cache
        self.budgets = budgets
        self.basis: Basis | None = None
        self.population: Preference | None = None
        self.users: dict[int, Preference] = {}
        self.text_precisions: dict[str, float] = {}  # scope -> the text block's prior precision its fit used
        self.train_z: torch.Tensor | None = None  # (N, D) the fit's training replies, centred: what top_traits explains over
        self.metrics: dict[str, object] = {}

    def _features(self, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        """Backbone features (N, F) from the feature cache."""
        if self.cache is None:
            raise RuntimeError("this reward model has no feature cache (it was made by from_state); "
                               "pass backbone features to rewards()")
        return self.cache.features(prompts, replies)

    # --- fitting ---------------------------------------------------------------
    def _z(self, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        return _fitted(self.basis)(self._features(prompts, replies), prompts, replies)

    def _labels(self, pairs: Sequence[PreferencePair], points: Sequence[PointLabel]):
        zp = (self._z([p.prompt for p in pairs], [p.chosen for p in pairs]),
              self._z([p.prompt_of_rejected for p in pairs], [p.rejected for p in pairs])) if pairs else None
        zt = (self._z([p.prompt for p in points], [p.reply for p in points]),
              torch.tensor([float(p.label) for p in points])) if points else None
        return zp, zt

    def _fit_scope(self, pairs, points, prior_mean: torch.Tensor, precision: float, center: torch.Tensor,
                   train_z: torch.Tensor, key: str) -> Preference:
        """One scope's weights (``key``: "population" or the user id); its text-block precision, chosen by
        evidence with ``reward_text_evidence``, is kept in ``text_precisions``."""
        basis = _fitted(self.basis)
        zp, zt = self._labels(pairs, points)
        if zt is not None:
            zt = (zt[0] - center, zt[1])
        grid = REWARD_TEXT_PRECISION_GRID if self.budgets.reward_text_evidence and basis.text_dim else \
            (self.budgets.reward_text_precision,)
        best = None
        for text_precision in grid:
            prec = torch.full((basis.dim + 1,), 2.0 * precision)
            prec[basis.text_slice()] *= text_precision  # many sparse columns: a prior of their own
            prec[-1] = THUMBS_BIAS_PRECISION
            fitted = fit_preferences_with_evidence(zp, zt, prior_mean, prec, thumbs_weight=self.budgets.reward_bce_weight)
            if best is None or fitted[2] > best[0][2]:
                best = (fitted, text_precision)
        assert best is not None  # the grid holds at least one precision
        (theta, cov, _), self.text_precisions[key] = best
        w = theta[:-1]
        spread = float(((train_z - center) @ w).std()) if len(train_z) > 1 else 1.0
        return Preference(w, cov[:-1, :-1], float(theta[-1]), center, spread if spread > 1e-6 else 1.0,
                          len(pairs) + len(points))

    def fit(self, pool: Dataset, full: Dataset) -> dict[str, object]:
        """The basis and population weights on ``pool`` (capped per user), each user's weights on all of
        their own labels in ``full``. Held-out labels (``is_heldout``) are used only to measure."""
        frac = self.budgets.heldout_fraction
        train_pairs = [p for p in pool.pairs if not is_heldout(p.split_key, frac)]
        train_points = [p for p in pool.points if not is_heldout(p.split_key, frac)]
        if not train_pairs and not train_points:  # a handful of labels, all in the held-out split
            logger.warning("every label fell in the held-out split; training on all of them (accuracy is not held out)")
            train_pairs, train_points = list(pool.pairs), list(pool.points)
        if not train_pairs and not train_points:
            raise ValueError("no training labels for the reward model; collect ratings or rankings first")
        # 1. the replies the basis is fitted on: every reply a training label mentions
        texts = list(dict.fromkeys([(p.prompt, p.chosen) for p in train_pairs]
                                   + [(p.prompt_of_rejected, p.rejected) for p in train_pairs]
                                   + [(p.prompt, p.reply) for p in train_points]))
        prompts, replies = [t[0] for t in texts], [t[1] for t in texts]
        feats = self._features(prompts, replies)  # (N, F)
        mu, sigma = feats.mean(0), feats.std(0).clamp(min=1e-4) if len(feats) > 1 else torch.ones(feats.shape[1])
        # 2. the pooled reward direction on the backbone's features (what the users agree on)
        pf = (self._features([p.prompt for p in train_pairs], [p.chosen for p in train_pairs]),
              self._features([p.prompt_of_rejected for p in train_pairs], [p.rejected for p in train_pairs])
              ) if train_pairs else None
        tf = (self._features([p.prompt for p in train_points], [p.reply for p in train_points]),
              torch.tensor([float(p.label) for p in train_points])) if train_points else None
        pooled, pooled_stats = fit_head(pf, tf, mu, sigma, self.budgets) if self.budgets.reward_pooled_direction else (None, {})
        # 3. the basis, then the population's weights and every user's
        self.basis = Basis.fit(feats, prompts, replies, self.budgets.reward_components, pooled, self.budgets.reward_text_features,
                               self.budgets.reward_text_basis)
        train_z = self.basis(feats, prompts, replies)  # (N, D)
        center = train_z.mean(0)
        self.train_z = train_z - center
        zeros = torch.zeros(self.basis.dim + 1)
        self.population = self._fit_scope(train_pairs, train_points, zeros, self.budgets.reward_weight_decay, center, train_z,
                                          "population")
        self.metrics["reward/pooled_direction_train"] = pooled_stats
        self.metrics["reward/basis"] = self.basis.names
        prior = torch.cat([self.population.weight, torch.tensor([self.population.thumbs_bias])])
        for user_id in full.user_ids():
            mine = full.for_user(user_id)
            upairs = [p for p in mine.pairs if not is_heldout(p.split_key, frac)]
            upoints = [p for p in mine.points if not is_heldout(p.split_key, frac)]
            if not upairs and not upoints:
                continue
            self.users[user_id] = self._fit_scope(upairs, upoints, prior, self.budgets.user_head_l2, center, train_z,
                                                  str(user_id))
        if self.budgets.reward_text_evidence and self.basis.text_dim:
            self.metrics["reward/text_precision"] = dict(self.text_precisions)
        self.metrics.update(self.evaluate(full))
        return self.metrics

    # --- scoring ---------------------------------------------------------------
    def head_for(self, user_id: int | None) -> Preference:
        """The user's weights once they have ``min_user_labels`` labels, else the population's."""
        population = _fitted(self.population)
        mine = self.users.get(user_id) if user_id is not None else None
        if mine is not None and mine.labels >= self.budgets.min_user_labels:
            return mine
        return population

    def is_personal(self, user_id: int | None) -> bool:
        return user_id is not None and self.head_for(user_id) is not self.population

    def rewards(self, user_id: int | None, feats: torch.Tensor, prompts: Sequence[str], replies: Sequence[str],
                *, k: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean - k std, std) of the scope's reward, each (N,), from backbone features (N, F) and the texts."""
        head = self.head_for(user_id)
        z = _fitted(self.basis)(feats, prompts, replies)
        return head.lower(z, k), head.std(z)

    def score(self, user_id: int | None, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        return self.rewards(user_id, self._features(prompts, replies), prompts, replies)[0]

    # --- evaluation ---------------------------------------------------------------
    def pair_accuracy(self, user_id: int | None, pairs: Sequence[PreferencePair], *, population: bool = False) -> float | None:
        if not pairs:
            return None
        head = _fitted(self.population) if population else self.head_for(user_id)
        zc = self._z([p.prompt for p in pairs], [p.chosen for p in pairs])
        zr = self._z([p.prompt_of_rejected for p in pairs], [p.rejected for p in pairs])
        return float((head.mean(zc) > head.mean(zr)).float().mean())

    def evaluate(self, full: Dataset) -> dict[str, object]:
        """Held-out pairwise accuracy, global and per user, beside "longer reply wins"."""
        frac = self.budgets.heldout_fraction
        held = [p for p in full.pairs if is_heldout(p.split_key, frac)]
        out: dict[str, object] = {
            "reward/heldout_pairs": len(held),
            "reward/heldout_accuracy": self.pair_accuracy(None, held),
            "reward/length_baseline_accuracy": length_baseline_accuracy(held),
            "reward/personalized_users": sorted(u for u in self.users if self.is_personal(u)),
        }
        per_user: dict[str, dict[str, object]] = {}
        for user_id in full.user_ids():
            mine = [p for p in held if p.user_id == user_id]
            entry = UserRewardSummary(labels=self.users[user_id].labels if user_id in self.users else 0,
                                      personalized=self.is_personal(user_id), top_traits=self.top_traits(user_id))
            if mine:
                entry = entry.model_copy(update=dict(
                    heldout_pairs=len(mine), accuracy=self.pair_accuracy(user_id, mine),
                    global_accuracy=self.pair_accuracy(user_id, mine, population=True),
                    length_baseline_accuracy=length_baseline_accuracy(mine)))
            per_user[str(user_id)] = entry.model_dump(exclude_none=True)
        out["reward/per_user"] = per_user
        return out

    def top_traits(self, user_id: int | None, n: int = 3) -> list[TraitWeight]:
        """The named traits that move this scope's reward most (per standard deviation of the trait over
        the stored replies), with the direction: what the assistant learned, in words.

        A trait's figure is its own weight plus the share of the unnamed columns (hashed text, backbone
        directions) that goes with it: their reward over the fit's training replies, regressed on the
        standardised traits. Without that, a user who wants lists, whose list replies the text columns
        also recognise ("- " lines), saw a minor trait on top because the text block carried the list
        signal. Without unnamed columns (or the training replies, after ``from_state``) it is the weight."""
        head = self.head_for(user_id)
        w = head.weight / head.scale
        n_traits = len(T.NAMES)
        named = w[:n_traits].clone()
        if self.train_z is not None and _fitted(self.basis).dim > n_traits and len(self.train_z) > n_traits:
            t = self.train_z[:, :n_traits]  # (N, T)
            unnamed = self.train_z[:, n_traits:] @ w[n_traits:]  # (N,) their reward
            ridge = 1e-2 * len(t) * torch.eye(n_traits)  # near-duplicate traits must not trade huge opposite slopes
            named += torch.linalg.solve(t.T @ t + ridge, t.T @ unnamed)
        order = sorted(range(n_traits), key=lambda i: -abs(float(named[i])))[:n]
        return [TraitWeight(trait=T.NAMES[i], description=T.describe(T.NAMES[i]), weight=round(float(named[i]), 3),
                            likes=float(named[i]) > 0) for i in order]

    def user_metrics(self, user_id: int | None) -> dict[str, object]:
        if user_id is None:
            return {k: v for k, v in self.metrics.items() if k not in ("reward/per_user", "reward/basis")}
        per_user = self.metrics.get("reward/per_user", {})
        mine = per_user.get(str(user_id)) if isinstance(per_user, dict) else None
        summary = UserRewardSummary.model_validate(mine) if mine else UserRewardSummary()
        return summary.model_copy(update={"personalized": self.is_personal(user_id)}).flat()

    def reply_reward(self, user_id: int | None) -> ReplyReward | None:
        """What serving's best-of-n scores with (``service.reply_reward``): this scope's weights and the
        population's over the traits (and the hashed text features), or None when the basis needs the backbone (components or the
        pooled direction: serving would have to run the model to score)."""
        basis = self.basis
        if basis is None or basis.components.shape[1] or basis.pooled is not None:
            return None
        return ReplyReward(basis.trait_mu, basis.trait_sd, self.head_for(user_id), _fitted(self.population),
                           self.budgets.reward_uncertainty_k, basis.text_mu, basis.text_proj)  # z: the traits and the text

    # --- serialisation ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything scoring needs, JSON-safe (no pickle crosses processes)."""
        return {"basis": _fitted(self.basis).state_dict(), "population": _fitted(self.population).state_dict(),
                "users": {str(u): p.state_dict() for u, p in self.users.items()}, "metrics": self.metrics}

    @classmethod
    def from_state(cls, state: dict[str, Any], budgets: Budgets) -> "RewardModel":
        """A model that scores backbone features it is given (no feature cache of its own)."""
        model = cls(None, budgets)
        model.basis = Basis.from_state(state["basis"])
        model.population = Preference.from_state(state["population"])
        model.users = {int(u): Preference.from_state(p) for u, p in state["users"].items()}
        model.metrics = state["metrics"]
        return model
