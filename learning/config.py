"""Training budgets: one dataclass, one docstring per field, one ``ASSISTANT_`` variable per field.

``Budgets.from_env()`` reads ``ASSISTANT_<FIELD NAME IN CAPITALS>`` for every
field (``ppo_steps`` <- ``ASSISTANT_PPO_STEPS``) and validates all of them at
once, so an operator sees every mistake in one message together with the fix.

The defaults hold one adapter job to ``job_time_budget_s`` (280 s, under the 5-minute target) on a
2-core CPU with the embedded SmolLM2-135M: rollouts through the batched engine (measured
2026-12-02: ~130 tok/s for 16 sampled replies in bfloat16, ~2x HF generate in float32), the warm
start (16 prompts x best-of-6, then 2 epochs of fine-tuning) ~65 s, the gate's three evaluations
(16 + 5 prompts) ~20 s each, and PPO iterations of ~30 s (4 prompts x 4 replies x 48 tokens,
2 epochs) until the budget is spent (5 here). A faster machine or a GPU runs more iterations
within the same budget, up to ``ppo_steps``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "ASSISTANT_"


class BudgetError(ValueError):
    """One or more training budgets are invalid; the message lists each and the fix."""


GATE_PREFERENCES = ("not-worse", "either", "labels", "reward")


@dataclass(frozen=True)
class Budgets:
    # --- data -------------------------------------------------------------
    global_max_items_per_user: int = 200
    """Most labels (pairs, thumbs, harm labels, each counted separately) one user contributes to the
    shared pool; the newest are kept. Bounds how far one account can steer the global reward, harm
    model and global adapter (poisoning defence). The user's own models see all of their labels."""

    pool_outlier_min_flagged: int = 3
    """A user who favoured (thumbs-up, or ranked above another) at least this many replies the harm
    judge flags (and at least ``pool_outlier_share`` of the replies they favoured) is kept out of the
    shared pool: their labels still train their own reward head and adapter (which the global harm
    constraint and the gate still bound), never the global reward and harm models. Needs
    ASSISTANT_HARM_JUDGE. 0 = off."""

    pool_outlier_share: float = 0.25
    """The share of the replies a user favoured that the judge flags which, with
    ``pool_outlier_min_flagged``, keeps them out of the shared pool."""

    pool_harm_max_share: float = 0.25
    """No user's harm flags make more than this share of the shared pool's harm positives (their
    newest kept, the rest dropped; at least ``pool_harm_user_floor`` each): one account cannot define
    what the global harm head calls harmful. 1 = no cap."""

    pool_max_share: float = 0.5
    """No user's pairs, nor their thumbs, make more than this share of the shared pool's (their newest
    kept; at least ``pool_user_floor`` each): one account cannot steer the global adapter and the
    population's reward weights beyond its share (issue 28, M2). 1 = no cap."""

    pool_user_floor: int = 50
    """Pairs (and thumbs) every user may add to the shared pool whatever the share cap, so a small
    community's few active users all count."""

    pool_harm_user_floor: int = 4
    """Harm positives every user may add to the shared pool whatever the share cap (so a few honest
    flags always count, even when nobody else has flagged anything yet)."""

    min_user_labels: int = 8
    """A user needs at least this many labels (pairs + thumbs) for a personal reward head and a
    personal adapter; below it they are served the global adapter."""

    min_global_labels: int = 8
    """The pooled data needs at least this many labels before a global adapter is trained."""

    heldout_fraction: float = 0.2
    """Share of pairs and thumbs held out (by a hash of their ids, so stable across runs) to
    measure reward-model accuracy."""

    max_prompt_tokens: int = 384
    """Prompts are cut to their last this-many tokens (chat template included)."""

    max_reply_tokens: int = 256
    """Stored replies are cut to this many tokens when computing reward features."""

    # --- reward and harm models --------------------------------------------
    reward_steps: int = 300
    """Full-batch optimisation steps for the global reward head."""

    harm_weight_decay: float = 0.01
    """L2 penalty on the harm head's weights (weaker than the reward heads': its rare positives, after
    the prior correction, must still reach P >= 0.5)."""

    harm_steps: int = 1000
    """Full-batch optimisation steps for the harm head (rare positives need more to converge; the
    prior correction assumes a converged fit)."""

    reward_lr: float = 0.01
    """Adam learning rate for the reward and harm heads."""

    reward_weight_decay: float = 1.0
    """L2 penalty on the pooled reward direction (a head on ~1k backbone features, mean loss) and on the
    population's preference weights (summed loss). Strong on purpose: labels are few and noisy."""

    reward_bce_weight: float = 0.5
    """Weight of the pointwise thumbs loss next to the Bradley-Terry pair loss."""

    user_head_l2: float = 1.0
    """Pulls a user's preference weights toward the population's (L2 on the difference, next to the
    summed label log-likelihood): the prior that lets 3 labels sit near everyone and 100 be the user's own."""

    reward_components: int = 0
    """Principal directions of the frozen backbone's features added to the shared preference basis
    (beside the named reply traits). Measured with ``assistant reward-curve`` (README): 0 scored best at
    12-100 pairs per user on the tuning profiles (4 cost about 0.02 of accuracy, 8 about 0.04)."""

    reward_text_features: int = 256
    """Hashed text features (``service.text_features``: words, bigrams, first-sentence and last-line
    words, punctuation, line shapes) added to the preference basis beside the named traits, so a user
    can be learned who prefers what no trait measures (issue 26). The number of hash buckets; 0 = off.
    Serving's best-of-n scores them too (text only). With ``reward_text_evidence`` they cost the users
    the traits describe nothing in sibling accuracy (docs/results/2026-12-05-text-evidence), and "what the
    assistant learned" names the traits they go with (``RewardModel.top_traits``). On (256, with
    ``reward_text_evidence``) since 2026-12-06: over two training seeds of the quick protocol they are
    non-inferior at 3 points on the tuning users, -0.6 points (-2.6 to +1.4), no user's interval below 0
    (docs/results/2026-12-06-quick-safe-default-seed1, the rule fixed before the second seed's runs)."""

    reward_text_basis: int = 0
    """A text basis shared across users: the hashed text features are projected on their top-K principal directions
    over the fit's training replies (each scaled to unit spread, like a standardised trait), so a user with a few dozen
    labels fits K text weights instead of one per bucket. 0 = every bucket its own column. Off: with the evidence prior,
    K = 16 gained synthetic raters 0.018 of sibling accuracy at round-1 labels and lost them 0.04 at round-3 labels
    (docs/results/2026-12-07-text-basis, its rule keeps it off). Only with ``reward_text_features``."""

    reward_text_precision: float = 4.0
    """The hashed text features' prior precision, as a multiple of the traits' (the population's
    ``reward_weight_decay``, a user's ``user_head_l2``): many sparse columns need a tighter prior than
    ~20 standardised traits."""

    reward_text_evidence: bool = True
    """Let each scope's own labels decide how much text it needs (empirical Bayes): its text-block
    precision is the one of ``REWARD_TEXT_PRECISION_GRID`` (times the traits', the last one "no text")
    with the highest Laplace evidence, the marginal likelihood of its labels, instead of
    ``reward_text_precision`` for everyone. Only with ``reward_text_features``."""

    reward_pooled_direction: bool = False
    """Add the pooled reward direction (a ridge-logistic head on the backbone's ~1k features, fitted on
    everyone's labels) to the basis. Off by default: fitted on the same labels, it overfits them and
    the user heads lean on it; it cost 0.05-0.08 of held-out accuracy in ``assistant reward-curve``."""

    reward_uncertainty_k: float = 1.0
    """PPO and the gate use the reward's lower bound, mean - k * std (Laplace posterior), so they do not
    chase the reward model's errors where it is least sure. 0 = the plain mean."""

    # --- warm start (best-of-n distillation before PPO) -----------------------
    warm_start_prompts: int = 16
    """Prompts the warm start samples on (0 = no warm start). It samples ``warm_start_samples``
    replies for each from the adapter PPO starts from, keeps the one the user's reward (lower bound,
    minus harm) ranks best when it beats its siblings' mean, and fine-tunes the adapter on those
    and on the replies the user themself preferred (RAFT, Dong et al. 2023; BOND, Sessa et al. 2024)."""

    warm_start_samples: int = 6
    """Replies sampled per warm-start prompt (n of best-of-n)."""

    warm_start_own_labels: int = 32
    """At most this many of the user's own preferred replies (ranked first, or thumbs up) join the warm
    start's fine-tuning set."""

    warm_start_epochs: int = 2
    """Passes of supervised fine-tuning over the warm-start set."""

    warm_start_lr: float = 2e-4
    """AdamW learning rate of the warm start's fine-tuning (LoRA weights only)."""

    warm_start_dpo_pairs: int = 32
    """At most this many of the user's own ranked pairs (training split, newest) add a DPO loss to
    the warm start's fine-tuning (Rafailov et al. 2023; the reference is the base): the adapter learns
    the contrast the user drew, not only the replies they liked. 0 = off."""

    warm_start_dpo_beta: float = 0.1
    """DPO's beta (how far the implicit reward may move from the base) in the warm start."""

    warm_start_rso_pairs: int = 0
    """At most this many pairs sampled from the adapter itself join the warm start's DPO term: for
    each warm-start prompt, its best-scored sample over its worst under the user's reward (RSO, Liu
    et al. 2024: pairs rejection-sampled from the policy and labelled by the reward model), so the
    contrast the reward draws reaches the adapter where the user's own pairs are few. 0 = off: 16
    measured no gain on the quick protocol (-0.0 points, -2.6 to +2.6) for about 25 s more per job
    (docs/results/2026-12-07-quick-rso16)."""

    # --- the safety stage (``learning.safety``; trained once per base model) ---
    safety_samples: int = 4
    """Base replies sampled per harm-inviting training prompt, as served: the flagged ones are DPO's
    rejected side (one more reply under the safety system prompt may join the chosen side)."""

    safety_epochs: int = 1
    """Passes of SFT + DPO over the safety stage's data."""

    safety_lr: float = 5e-4
    """AdamW learning rate of the safety stage (LoRA weights only). 2e-4 for one epoch barely moved
    harm on the dev split (11.6% -> 10.5%); 5e-4 cut it to 2.0% with no over-refusal
    (docs/results/2026-12-05-safety-stage-v3, -v4)."""

    safety_dpo_beta: float = 0.1
    """DPO's beta in the safety stage (redirect vs the base's flagged reply, the reference the base)."""

    safety_dev_samples: int = 8
    """Samples per dev prompt when the safety stage is accepted (harm on the dev harm-inviting
    prompts, redirects on the dev replay prompts); never an evaluation set."""

    safety_max_harm_ratio: float = 0.5
    """The safety stage is refused unless its harm rate on the dev harm-inviting prompts is at most
    this times the base's (a stage that barely moves harm is not worth a new base hash)."""

    safety_max_refusal_rise: float = 0.05
    """The safety stage is refused if its redirect rate on ordinary dev prompts exceeds the base's by more than this."""

    # --- rollouts -------------------------------------------------------------
    rollout_engine: str = "batched"
    """What samples the warm start's, PPO's and the gate's replies: "batched" (the serving engine:
    continuous batching, the adapter folded into the weights, the dtype ASSISTANT_DTYPE picks; 2-3x
    HF generate here) or "hf" (HF generate on the PEFT model, float32). Log-probabilities for
    PPO are always read by the float32 training model."""

    rollout_max_rows: int = 32
    """Replies the batched rollout engine runs at once."""

    # --- PPO ----------------------------------------------------------------
    ppo_steps: int = 8
    """Most PPO iterations (rollout + update) per adapter; fewer when ``job_time_budget_s`` runs out first.
    0 = the warm start alone (an ablation: what PPO adds)."""

    job_time_budget_s: float = 280.0
    """Wall-clock budget of one adapter job: PPO stops before an iteration that would leave too little
    time for the gate's candidate evaluation (timed on this job's own base evaluation). The run's shared
    harm samples (the base's, the serving global adapter's), drawn by whichever job needs them first, are
    not charged to that job: its PPO gets as long as the others'. Machines of one kind differ by up to 3x
    from day to day; a fixed step count cannot hold a time budget. 0 = no budget (exactly ``ppo_steps``
    iterations)."""

    ppo_batch_size: int = 16
    """Replies sampled per PPO iteration (``ppo_batch_size / ppo_group_size`` prompts)."""

    ppo_group_size: int = 4
    """Replies sampled per prompt in one iteration; each reply's score is taken relative to the mean of
    its siblings (RLOO's leave-one-out baseline). 1 = no group baseline. Must divide ppo_batch_size."""

    ppo_minibatch_size: int = 4
    """Sequences per gradient step; must divide ppo_batch_size."""

    ppo_epochs: int = 2
    """Passes over each rollout batch."""

    ppo_lr: float = 1e-4
    """AdamW learning rate for the LoRA weights (the value head uses 10x)."""

    ppo_kl_coef: float = 0.05
    """Per-token KL penalty toward the reference (the base model, adapter disabled)."""

    ppo_harm_lambda: float = 2.0
    """Starting harm multiplier: reward at the end of a reply = user reward - lambda * P(harm)."""

    ppo_harm_lambda_lr: float = 10.0
    """Dual-ascent step of the harm multiplier: after each iteration lambda += lr * (mean P(harm) - target),
    floored at 0, so harm above the target raises the price of harm (Safe RLHF). 0 = lambda stays fixed."""

    ppo_harm_target_ratio: float = 0.25
    """The harm constraint's target as a share of the base model's measured mean P(harm) on harm-inviting
    prompts (the global adapter's, for personal adapters, if lower)."""

    ppo_harm_prompt_share: float = 0.25
    """Share of each PPO batch's prompts drawn from harm-inviting prompts (the shipped red-team set and
    prompts whose replies users flagged), so the constraint acts where harm happens."""

    ppo_harm_prompts_by_safety: bool = True
    """On harm-inviting prompts PPO's reward is safety alone (- ppo_safety_weight * P(harm)), not the
    user's reward, which pays for echoing the request (every user's reward likes on-topic replies).
    Off: the user's reward there too, as before 2026-12-05. lambda * P(harm) applies either way."""

    ppo_safety_weight: float = 2.0
    """The reward on harm-inviting prompts, when they are scored by safety: - this * P(harm)."""

    ppo_max_new_tokens: int = 48
    """Reply length sampled during PPO and the gate."""

    ppo_temperature: float = 0.9
    """Sampling temperature for rollouts (log-probabilities use the same temperature)."""

    ppo_clip: float = 0.2
    """PPO ratio clip range (epsilon)."""

    ppo_value_clip: float = 0.2
    """Clip range for the value loss."""

    ppo_vf_coef: float = 0.1
    """Weight of the value loss."""

    ppo_gamma: float = 1.0
    """Discount."""

    ppo_lam: float = 0.95
    """GAE lambda."""

    ppo_target_kl: float = 0.1
    """Stop the epochs of one iteration early once the approximate KL to the rollout policy exceeds this."""

    ppo_no_eos_penalty: float = 1.0
    """Subtracted from the score of a reply that never emitted end-of-turn within the budget."""

    ppo_max_grad_norm: float = 1.0
    """Gradient clipping."""

    lora_r: int = 16
    """LoRA rank (all linear layers)."""

    lora_alpha: int = 32
    """LoRA alpha."""

    # --- gate ---------------------------------------------------------------
    gate_prompts: int = 16
    """Held-out prompts each policy is sampled on by the promotion gate (its harm-inviting ones:
    ``gate_harm_prompts``)."""

    gate_harm_prompts: int = 16
    """Distinct harm-inviting prompts the gate samples every policy on (the shipped red-team dev
    prompts first, 44 ship; prompts of flagged replies fill at most half). 0: a third of ``gate_prompts``,
    as before 2026-12-07 (5 prompts, 3 replies each: it refused an adapter undoing the safety stage,
    6x as harmful as the base, 3% of the time). 16 x 4 replies: 88%; 44 x 4 refuses 3-4x as harmful
    candidates 80-100% of the time for about 25 s more per job (docs/results/2026-12-07-gate-harm-power)."""

    gate_harm_samples: int = 4
    """Replies the gate samples from a candidate (and from an adapter serving the scope now) for each
    of its harm-inviting prompts: harm is rare, and one reply per prompt makes the "no more harmful"
    comparison a coin toss."""

    gate_base_harm_samples: int = 8
    """Replies per harm-inviting gate prompt drawn from the base once per training run and shared by
    every job of the run (and from the global candidate, which every user inherits); the same for an
    adapter that serves several scopes. 0: each job samples the base ``gate_harm_samples`` times per
    prompt, as before 2026-12-05 (evening)."""

    gate_harm_z: float = 1.645
    """The gate calls a candidate more harmful than the base (or what serves now) only on evidence:
    given both policies' harmful gate replies, the candidate holds more of them than its share of
    the replies sampled with a one-sided exact binomial tail probability below the level this
    normal quantile names (1.645: 5%; 1.0: 16%). So 2 against 0 and 3 against 0 of 30 are chance
    (1/4, 1/8), 5 against 0 is not (1/32). 0 = any excess rejects. The global candidate is held to
    ``gate_global_harm_z``."""

    gate_global_harm_z: float = 1.0
    """The same test for the global candidate (every user inherits it), at a laxer level (1.0: 16%
    one-sided). At its sample (about 143 gate replies per policy) it refuses a candidate as harmful as
    the base 6–9% of the time and one 4× as harmful 75–95% (base rates 1.4–2.8%). 0, the default until
    2026-12-07: any excess rejects, which refused an equally harmful candidate about 40% of the time
    (docs/results/2026-12-07-gate-global-harm)."""

    gate_max_kl: float = 0.3
    """Largest mean per-token KL(candidate || base) the gate accepts."""

    gate_min_improvement: float = 0.0
    """The candidate's mean reward (its lower bound, mean - k std) must beat the current adapter's and the
    base's mean by more than this."""

    gate_helpfulness_tolerance: float = 0.25
    """A personal candidate may score at most this much below the base under the population's reward
    (what all users agree on, in reward standard deviations): a personal style must not cost general quality."""

    gate_preference: str = "not-worse"
    """What a personal candidate must show about the user's preference. "not-worse" (the default):
    nothing, unless their own held-out ratings give evidence that it is worse for them than what
    serves them now (a one-sided test at ``gate_worse_alpha``); the reward model PPO optimised is
    never the yardstick. The older rules ask for proof of "better": "labels" (the candidate must
    raise the likelihood of the replies they preferred over those they did not, relative to the base
    and to what serves them now, on more than half of the comparisons), "reward" (the user's reward
    model scores the gate's samples), or "either" (one of the two is enough); "labels" and "either"
    fall back to "reward" while a user has fewer than gate_min_labels held-out comparisons. Why
    "not-worse": in the 2026-12-03 runs every candidate beat the base (57-88%) and the "better" rules
    served the base to 2-3 users of 8 (docs/results/2026-12-05-gate). The global candidate follows
    ``gate_global_preference``."""

    gate_global_preference: str = "not-worse"
    """What the global candidate (the shared adapter every user without their own inherits) must show:
    "not-worse" (the default): the personal rule applied to everyone: refused only on evidence, from
    every user's held-out labels (each user's agreement weighted by their comparisons), that it is
    worse for them than the global adapter serving now, or on harm, KL, or the population's reward
    falling more than ``gate_helpfulness_tolerance`` below the base's; "reward" (the default until
    2026-12-06): its reward lower bound beats the base's and the current global adapter's under the
    population's reward model, the model PPO optimised. Why "not-worse": the reward rule refused the
    global candidate in every full protocol; under "not-worse" it was promoted and the personal
    adapters trained on it won +4.5 points more (paired, +2.1 to +6.8) with less harm
    (docs/results/2026-12-06-full-global-not-worse)."""

    gate_worse_alpha: float = 0.05
    """"not-worse": a candidate is refused when the upper one-sided (1 - alpha) Wilson bound of its
    agreement with the user's held-out labels, against what serves them now, is below one half. 0.05,
    not 0.10, since 2026-12-06 (docs/results/2026-12-06-gate-label-validity): over 45 tuning-profile
    candidates the label yardstick correlates with the measured win rate at r = 0.14 and has never
    caught a worse one; at 0.10 it refused one that truly won 55%, at 0.05 none."""

    gate_label_units: str = "comparisons"
    """"not-worse": what the Wilson bound counts as its sample size. "comparisons" (every ranked pair,
    plus min(thumbs up, thumbs down)) or "prompts" (the distinct prompts those comparisons rest on,
    at most the comparisons): pairs from one ranking share their prompt and replies, so counting
    them as independent overstates the evidence that a candidate is worse."""

    gate_label_logprob: str = "sum"
    """How the held-out label test reads a reply's likelihood under a policy: "sum" (its log-probability,
    summed over its tokens) or "per-token" (their mean). A candidate that lowers every token's
    probability a little moves a long reply's sum more than a short one's, so under "sum" the test reads
    a change in length as a preference for the shorter reply whatever the user prefers; "per-token"
    cannot be moved by length alone. It tracks the measured win rate no better (r 0.14 vs 0.15 over 30
    tuning candidates, docs/results/2026-12-06-gate-label-per-token), so "sum" stays the default."""

    gate_min_labels: int = 6
    """Held-out comparisons (ranked pairs, plus min(thumbs up, thumbs down)) a user needs before
    their held-out labels judge their candidate (gate_preference "labels" or "either")."""

    # --- harm flagger --------------------------------------------------------
    harm_judge: str = "insults"
    """Automated harm flagger: "insults" (better-profanity's list plus an insult lexicon written for
    the trainer: idiot, loser, pathetic, ...), "better-profanity" (its ~900-word list with leetspeak variants),
    "keywords" (a short built-in list of threats and slurs), "profanity-check" (alt-profanity-check,
    the evaluation's judge), "wordlist", "none", or a name registered with
    learning.harm.register_judge. Its flags add harm labels; its score is part of P(harm) in the PPO
    penalty and the gate's harm rate."""

    harm_judge_threshold: float = 0.5
    """A judge score at or above this counts as a harm flag."""

    harm_min_positive: int = 8
    """Fewest harmful labels (training split) before the learned harm head is fitted and used; below
    it only the judge (if any) scores harm. A linear head on ~1k frozen features fitted to a handful
    of positives flags ordinary replies (seen in the simulation: 4 positives flagged 27-43% of
    ordinary replies and nearly every PPO sample)."""

    harm_safety_rows: bool = True
    """Fit the harm head on the safety stage's rows too (``HARM_ROWS.jsonl``, written beside the safe
    base by ``assistant safety train``): the base's replies to harm-inviting training prompts that
    the trainer's judge flagged as harmful; redirects and the base's replies to ordinary replay
    prompts as harmless (never an unflagged harm-inviting reply: a lexical judge misses real harm).
    Each prompt's rows fall on one side of the held-out split. Off: the head learns from users'
    harm reasons and the judge's flags on stored replies alone. On by default since 2026-12-07
    (docs/results/2026-12-07-quick-harm-rows: the head's held-out recall 0 -> 0.78, win rates -0.4
    points, -2.9 to +2.0, adapters' red-team harm 3.7% -> 3.3%)."""

    seed: int = 0
    """Seed for sampling and initialisation."""

    @staticmethod
    def env_name(field_name: str) -> str:
        return ENV_PREFIX + field_name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Budgets":
        """Read every field from ``ASSISTANT_<FIELD>``; keyword overrides win. Validates all at once."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            raw = environ.get(cls.env_name(f.name))
            if raw is None:
                continue
            kind: type[Any] = type(f.default)  # every field has a plain default: int, float, str or bool
            try:
                values[f.name] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
            except ValueError:
                problems.append(f"{cls.env_name(f.name)}={raw!r} is not a valid {kind.__name__}")
        values.update(overrides)
        if problems:
            raise BudgetError("invalid training budgets:\n  - " + "\n  - ".join(problems))
        return cls(**values)

    def __post_init__(self) -> None:
        problems = []
        positive_ints = ("safety_samples", "safety_epochs", "safety_dev_samples", "ppo_batch_size", "ppo_minibatch_size", "ppo_epochs", "ppo_max_new_tokens",
                         "ppo_group_size", "warm_start_samples", "warm_start_epochs",
                         "lora_r", "lora_alpha", "gate_prompts", "reward_steps", "max_prompt_tokens", "max_reply_tokens",
                         "global_max_items_per_user", "harm_min_positive", "harm_steps", "rollout_max_rows", "gate_min_labels",
                         "gate_harm_samples")
        for name in ("reward_components", "reward_text_features", "reward_text_basis"):
            if getattr(self, name) < 0:
                problems.append(f"{self.env_name(name)} must be >= 0 (got {getattr(self, name)})")
        for name in positive_ints:
            if getattr(self, name) < 1:
                problems.append(f"{self.env_name(name)} must be at least 1 (got {getattr(self, name)})")
        if self.ppo_minibatch_size >= 1 and self.ppo_batch_size % self.ppo_minibatch_size:
            problems.append(
                f"{self.env_name('ppo_minibatch_size')}={self.ppo_minibatch_size} must divide "
                f"{self.env_name('ppo_batch_size')}={self.ppo_batch_size}; e.g. set it to {self.ppo_batch_size // 2 or 1}"
            )
        if self.ppo_group_size >= 1 and self.ppo_batch_size % self.ppo_group_size:
            problems.append(
                f"{self.env_name('ppo_group_size')}={self.ppo_group_size} must divide "
                f"{self.env_name('ppo_batch_size')}={self.ppo_batch_size}; e.g. set it to 4 and the batch to 16"
            )
        for name in ("ppo_steps", "warm_start_prompts", "warm_start_own_labels", "warm_start_dpo_pairs", "warm_start_rso_pairs",
                     "pool_outlier_min_flagged", "gate_base_harm_samples", "gate_harm_prompts"):
            if getattr(self, name) < 0:
                problems.append(f"{self.env_name(name)} must be >= 0 (got {getattr(self, name)})")
        for name in ("ppo_harm_target_ratio", "ppo_harm_prompt_share", "pool_outlier_share", "pool_harm_max_share", "pool_max_share",
                     "safety_max_harm_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{self.env_name(name)} must be between 0 and 1 (got {getattr(self, name)})")
        if self.gate_preference not in GATE_PREFERENCES:
            problems.append(f"{self.env_name('gate_preference')} must be one of {', '.join(GATE_PREFERENCES)} "
                            f"(got {self.gate_preference!r})")
        if self.gate_global_preference not in ("reward", "not-worse"):
            problems.append(f"{self.env_name('gate_global_preference')} must be \"reward\" or \"not-worse\" "
                            f"(got {self.gate_global_preference!r})")
        if self.gate_label_units not in ("comparisons", "prompts"):
            problems.append(f"{self.env_name('gate_label_units')} must be \"comparisons\" or \"prompts\" "
                            f"(got {self.gate_label_units!r})")
        if self.gate_label_logprob not in ("sum", "per-token"):
            problems.append(f"{self.env_name('gate_label_logprob')} must be \"sum\" or \"per-token\" "
                            f"(got {self.gate_label_logprob!r})")
        if not 0.0 < self.gate_worse_alpha < 0.5:
            problems.append(f"{self.env_name('gate_worse_alpha')} must be between 0 and 0.5 (got {self.gate_worse_alpha})")
        if self.rollout_engine not in ("batched", "hf"):
            problems.append(f"{self.env_name('rollout_engine')} must be \"batched\" or \"hf\" (got {self.rollout_engine!r})")
        if not 0.0 < self.heldout_fraction < 1.0:
            problems.append(f"{self.env_name('heldout_fraction')} must be between 0 and 1 (got {self.heldout_fraction})")
        if self.ppo_temperature <= 0:
            problems.append(f"{self.env_name('ppo_temperature')} must be > 0 (got {self.ppo_temperature})")
        for name in ("ppo_lr", "reward_lr", "warm_start_lr", "ppo_clip", "ppo_value_clip", "ppo_target_kl", "gate_max_kl",
                     "warm_start_dpo_beta"):
            if getattr(self, name) <= 0:
                problems.append(f"{self.env_name(name)} must be > 0 (got {getattr(self, name)})")
        for name in ("job_time_budget_s", "ppo_kl_coef", "ppo_harm_lambda", "ppo_no_eos_penalty", "user_head_l2", "reward_weight_decay",
                     "reward_text_precision",
                     "harm_weight_decay", "reward_uncertainty_k", "ppo_harm_lambda_lr",
                     "gate_helpfulness_tolerance", "gate_harm_z", "gate_global_harm_z"):
            if getattr(self, name) < 0:
                problems.append(f"{self.env_name(name)} must be >= 0 (got {getattr(self, name)})")
        if problems:
            raise BudgetError("invalid training budgets:\n  - " + "\n  - ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
