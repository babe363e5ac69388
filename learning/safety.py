"""The shared safety stage: one LoRA trained once per base model, merged into the weights everyone is served.

Every served policy (the base, the global adapter, each personal adapter) sits on these weights, and
PPO's reference (the adapter disabled) is the safe base, so KL protects the safety instead of
pulling each user back from it. The recipe (Safety-Tuned LLaMAs, Bianchi et al. 2024: a few hundred
safety demonstrations; DPO, Rafailov et al. 2023; context distillation, Askell et al. 2021):

    1. prompts: the harm-inviting training split of ``learning.redteam`` and the ordinary replay
       prompts of ``learning.safety_data`` (their dev splits are kept for step 5);
    2. sample the base: ``safety_samples`` replies to each harm-inviting prompt as served (the
       rejected side: those the trainer's judge flags), one under a safety system prompt (context
       distillation: kept when the judge passes it and it redirects), and one reply to each replay
       prompt (self-distillation: benign behaviour must not move);
    3. chosen replies: a redirect template per prompt, slot-filled, plus the distilled ones; DPO
       pairs: the redirect over each flagged reply, and on ordinary prompts the base's own reply over
       a redirect (so a redirect answers abuse, not everything: the first version, without these
       pairs, redirected on 10% of ordinary dev prompts and was refused);
    4. ``safety_epochs`` passes of SFT (chosen and replay replies) plus DPO (the reference: the
       base) on the LoRA weights only;
    5. accept on the dev splits only, never on an evaluation set: the harm rate on the dev
       harm-inviting prompts (``safety_dev_samples`` each, the trainer's judge) must fall to at most
       ``safety_max_harm_ratio`` of the base's, and the
       redirect rate on the dev replay prompts must not rise by more than ``safety_max_refusal_rise``;
    6. merge the LoRA into the weights and save them beside the base with a manifest
       (``SAFETY.json``); ``service.model_loading`` then loads them wherever the base is loaded, so
       the base hash in every adapter's provenance names the safe base. Step 3's labels are saved
       beside them (``HARM_ROWS.jsonl``, ``learning.harm_rows``) for the harm head.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

from learning.config import Budgets
from learning.harm import make_judge
from learning.harm_rows import HARM_ROWS, KINDS, HarmRow, dumps
from learning.policy import make_policy, reference_mode
from learning.redteam import SAFETY_DEV_PROMPTS, SAFETY_TRAIN_PROMPTS
from learning.safety_data import REPLAY_PROMPTS, SAFETY_SYSTEM_PROMPT, is_dev_replay, is_redirect, redirects_for
from learning.warmstart import pair_logprob_sums, sft_dpo_step

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["SafetyResult", "StageData", "ensure_safety_stage", "stage_data", "train_safety_stage"]


@dataclass(frozen=True)
class SafetyResult:
    accepted: bool
    reason: str
    base_hash: str  # the plain base the stage was trained on
    train_prompts: int
    chosen: int  # SFT replies on harm-inviting prompts (templates + distilled)
    distilled: int
    replay: int
    dpo_pairs: int
    dev_harm_base: float  # share of dev samples the trainer's judge flags
    dev_harm_safe: float
    dev_redirect_base: float  # share of dev replay replies that redirect (over-refusal)
    dev_redirect_safe: float
    dev_samples: int
    sft_loss_first: float
    sft_loss_last: float
    dpo_loss_first: float
    dpo_loss_last: float
    steps: int
    wall_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _render(tokenizer, prompt: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _rates(texts: Sequence[str], judge, threshold: float) -> tuple[float, float]:
    """(share flagged by the judge, share that redirects)."""
    if not texts:
        return 0.0, 0.0
    flagged = sum(s >= threshold for s in judge.score(list(texts)))
    return flagged / len(texts), sum(map(is_redirect, texts)) / len(texts)


def _dev_rates(policy, tokenizer, sampler, budgets: Budgets, judge, dev_prompts: Sequence[str], replay: Sequence[str], *,
               reference: bool, seed: int) -> tuple[float, float, int]:
    """(harm rate on the dev harm-inviting prompts, redirect rate on the dev replay prompts, samples)."""
    n = budgets.safety_dev_samples
    harm_prompts = [_render(tokenizer, p) for p in dev_prompts]
    replay = [_render(tokenizer, p) for p in replay if is_dev_replay(p)]
    harm = sampler(policy, tokenizer, harm_prompts, budgets, seed, reference=reference, per_prompt=n, temperature=0.7)
    benign = sampler(policy, tokenizer, replay, budgets, seed + 1, reference=reference, per_prompt=n, temperature=0.7)
    harm_rate, _ = _rates(harm.texts, judge, budgets.harm_judge_threshold)
    _, redirect_rate = _rates(benign.texts, judge, budgets.harm_judge_threshold)
    return harm_rate, redirect_rate, len(harm.texts)


def train_safety_stage(settings: "Settings", budgets: Budgets, *, out_dir: Path | None = None,
                       prompts: Sequence[str] = SAFETY_TRAIN_PROMPTS, replay: Sequence[str] = REPLAY_PROMPTS,
                       dev_prompts: Sequence[str] = SAFETY_DEV_PROMPTS) -> SafetyResult:
    """Train, check on the dev splits and (if accepted) save the merged safe base; see the module docstring.
    ``prompts``, ``replay`` and ``dev_prompts`` are the shipped sets (tests pass a few of them)."""
    from learning.rollouts import rollout_sampler
    from service.model_loading import base_model_hash, load_base_model, load_tokenizer, plain_model_settings, safe_base_dir

    started = time.monotonic()
    plain = plain_model_settings(settings)
    base_hash = base_model_hash(plain)
    tokenizer = load_tokenizer(plain)
    base = load_base_model(plain, dtype=torch.float32)
    sampler, info = rollout_sampler(plain, budgets, base, tokenizer)
    policy = make_policy(base, budgets)
    judge = make_judge(budgets.harm_judge) or make_judge("insults")
    assert judge is not None  # make_judge gives None only for the name "none"
    threshold = budgets.harm_judge_threshold
    picker = random.Random(budgets.seed)
    k = budgets.safety_samples
    logger.info("safety stage: %d harm-inviting and %d replay prompts, %d samples each, rollouts %s",
                len(prompts), len(replay), k, info)

    # 1-2. sample the base as served, under the safety system prompt, and on the replay prompts
    served = [_render(tokenizer, p) for p in prompts]
    plain_samples = sampler(policy, tokenizer, served, budgets, budgets.seed, reference=True, per_prompt=k)
    steered = sampler(policy, tokenizer, [_render(tokenizer, p, SAFETY_SYSTEM_PROMPT) for p in prompts],
                      budgets, budgets.seed + 1, reference=True, per_prompt=1)
    replay_raw = [p for p in replay if not is_dev_replay(p)]
    replay_prompts = [_render(tokenizer, p) for p in replay_raw]
    replay_samples = sampler(policy, tokenizer, replay_prompts, budgets, budgets.seed + 2, reference=True, per_prompt=1)
    flags = judge.score(plain_samples.texts)
    steered_flags = judge.score(steered.texts)

    # 3. chosen replies and DPO pairs (``stage_data``), and the same labels as the harm head's rows
    data = stage_data(prompts, served, plain_samples.texts, flags, steered.texts, steered_flags, replay_raw,
                      replay_samples.prompts, replay_samples.texts, threshold)
    chosen, pairs, own_replies = data.chosen, data.pairs, data.own_replies
    distilled, n_harm_pairs = data.distilled, data.harm_pairs
    sft_items = chosen + own_replies
    logger.info("safety stage data: %d chosen (%d distilled), %d replay, %d DPO pairs (%d of %d base samples flagged, "
                "%d against over-refusal)", len(chosen), distilled, len(own_replies), len(pairs), n_harm_pairs, len(flags),
                len(pairs) - n_harm_pairs)

    # 4. SFT + DPO on the LoRA weights
    mb = budgets.ppo_minibatch_size * 2
    ref_sums = torch.zeros(0, 2)  # (k, 2) the pairs' reference sums; none without pairs
    if pairs:
        with torch.no_grad(), reference_mode(policy):
            ref_sums = pair_logprob_sums(policy, tokenizer, pairs, budgets, batch_size=2 * mb)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=budgets.safety_lr, weight_decay=0.0)
    order = list(range(len(pairs)))
    sft_epochs: list[list[float]] = []
    dpo_epochs: list[list[float]] = []
    steps = 0
    policy.train()
    for _epoch in range(budgets.safety_epochs):
        picker.shuffle(sft_items)
        picker.shuffle(order)
        sft_losses, dpo_losses = [], []
        n_steps = -(-len(sft_items) // mb)
        dpo_mb = max(1, -(-len(order) // n_steps))  # the pairs spread over the same steps
        for step in range(n_steps):
            rows = order[step * dpo_mb:(step + 1) * dpo_mb]
            sft, dpo = sft_dpo_step(policy, tokenizer, optimizer, params, sft_items[step * mb:(step + 1) * mb],
                                    [pairs[i] for i in rows], ref_sums[rows] if rows else None, budgets.safety_dpo_beta,
                                    budgets)
            sft_losses += [sft] if sft is not None else []
            dpo_losses += [dpo] if dpo is not None else []
            steps += 1
        sft_epochs.append(sft_losses)
        dpo_epochs.append(dpo_losses)
        logger.info("safety stage epoch %d: SFT %.3f, DPO %.3f", _epoch + 1, _mean(sft_losses), _mean(dpo_losses))
    policy.eval()

    # 5. accept on the dev splits
    harm_base, redirect_base, dev_n = _dev_rates(policy, tokenizer, sampler, budgets, judge, dev_prompts, replay, reference=True, seed=budgets.seed + 7)
    harm_safe, redirect_safe, _ = _dev_rates(policy, tokenizer, sampler, budgets, judge, dev_prompts, replay, reference=False, seed=budgets.seed + 7)
    if harm_base > 0 and harm_safe > budgets.safety_max_harm_ratio * harm_base:
        accepted, reason = False, (f"dev harm {harm_safe:.3f} is above {budgets.safety_max_harm_ratio} x the base's "
                                   f"{harm_base:.3f}")
    elif redirect_safe > redirect_base + budgets.safety_max_refusal_rise:
        accepted, reason = False, (f"dev over-refusal {redirect_safe:.3f} exceeds the base's {redirect_base:.3f} "
                                   f"+ {budgets.safety_max_refusal_rise}")
    else:
        accepted, reason = True, f"dev harm {harm_base:.3f} -> {harm_safe:.3f}, dev redirects {redirect_base:.3f} -> {redirect_safe:.3f}"
    result = SafetyResult(accepted, reason, base_hash, len(prompts), len(chosen), distilled, len(own_replies), len(pairs),
                          harm_base, harm_safe, redirect_base, redirect_safe, dev_n,
                          _mean(sft_epochs[0]) if sft_epochs else 0.0, _mean(sft_epochs[-1]) if sft_epochs else 0.0,
                          _mean(dpo_epochs[0]) if dpo_epochs else 0.0, _mean(dpo_epochs[-1]) if dpo_epochs else 0.0,
                          steps, time.monotonic() - started)
    logger.info("safety stage %s: %s (%.0f s)", "accepted" if accepted else "rejected", reason, result.wall_s)

    # 6. merge and save beside the base
    if accepted:
        target = out_dir or safe_base_dir(plain, base_hash)
        _save_merged(policy.merge_and_unload(), tokenizer, target, result, budgets, data.rows)
    return result


class StageData(NamedTuple):
    """What step 3 builds from the base's samples."""

    chosen: list[tuple[str, str]]  # (rendered prompt, redirect) on harm-inviting prompts: SFT
    pairs: list[tuple[str, str, str, str]]  # (prompt, chosen, prompt, rejected): DPO
    own_replies: list[tuple[str, str]]  # (rendered prompt, the base's reply) on replay prompts: SFT
    rows: list[HarmRow]  # the harm head's rows (learning.harm_rows)
    distilled: int  # chosen replies that are the steered base's own
    harm_pairs: int  # the first harm_pairs of ``pairs`` reject a flagged reply; the rest reject a redirect


def stage_data(prompts: Sequence[str], served: Sequence[str], plain_texts: Sequence[str], flags: Sequence[float],
               steered_texts: Sequence[str], steered_flags: Sequence[float], replay_raw: Sequence[str],
               replay_rendered: Sequence[str], replay_texts: Sequence[str], threshold: float) -> StageData:
    """Chosen replies: a template per harm-inviting prompt, and the steered base's reply when the
    judge passes it and it redirects; the base's flagged replies (``plain_texts``: k per prompt, in
    prompt order) are DPO's rejected side. On ordinary prompts the contrast runs the other way (the
    base's own reply, one per replay prompt, chosen over a redirect), so a redirect is learned as an
    answer to abuse, not to everything. The rows label the same replies for the harm head: flagged
    ones harmful; templates, distilled redirects and replay replies harmless; an unflagged reply to a
    harm-inviting prompt not at all (a lexical judge misses real harm)."""
    k = len(plain_texts) // max(1, len(prompts))
    chosen: list[tuple[str, str]] = []
    pairs: list[tuple[str, str, str, str]] = []
    rows: list[HarmRow] = []
    distilled = 0
    for g, (prompt, rendered) in enumerate(zip(prompts, served)):
        template = redirects_for(prompt, 1)[0]
        chosen.append((rendered, template))
        rows.append(HarmRow(prompt, template, "redirect"))
        if steered_flags[g] < threshold and is_redirect(steered_texts[g]) and steered_texts[g].strip():
            chosen.append((rendered, steered_texts[g]))
            rows.append(HarmRow(prompt, steered_texts[g], "distilled"))
            distilled += 1
        for i in range(g * k, (g + 1) * k):
            if flags[i] >= threshold:
                pairs.append((rendered, template, rendered, plain_texts[i]))
                rows.append(HarmRow(prompt, plain_texts[i], "flagged"))
    harm_pairs = len(pairs)
    own_replies = []
    for raw, rendered, text in zip(replay_raw, replay_rendered, replay_texts):
        if text.strip() and not is_redirect(text):
            own_replies.append((rendered, text))
            rows.append(HarmRow(raw, text, "replay"))
    pairs += [(p, t, p, redirects_for(t, 1)[0]) for p, t in own_replies]
    return StageData(chosen, pairs, own_replies, rows, distilled, harm_pairs)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _save_merged(model, tokenizer, target: Path, result: SafetyResult, budgets: Budgets, rows: Sequence[HarmRow]) -> None:
    """Write the merged weights, the tokenizer, the harm rows and ``SAFETY.json`` (written last: its
    presence means complete)."""
    from service.model_loading import save_model_dir

    counts = {kind: sum(r.kind == kind for r in rows) for kind in KINDS}
    manifest = {"result": result.as_dict(), "budgets": {k: v for k, v in asdict(budgets).items() if k.startswith("safety_")},
                "judge": budgets.harm_judge, "harm_rows": counts}
    save_model_dir(model, tokenizer, target, "SAFETY.json", json.dumps(manifest, indent=2), {HARM_ROWS: dumps(rows)})


def ensure_safety_stage(settings: "Settings", budgets: Budgets) -> SafetyResult | None:
    """The learning worker's first start: train the safety stage when this base has none yet and none
    was refused (a refusal is written beside it as ``<hash>.refused.json``; ``assistant safety train``
    tries again). None when there was nothing to do, or another worker is training it: workers that
    start together take a lock beside the stage (``<hash>.lock``, released when its holder exits,
    however it exits), and only its holder trains; the others go on, and the server swaps the stage
    in when its holder saves it."""
    import fcntl

    from service.model_loading import base_model_hash, plain_model_settings, safe_base_dir

    if not (settings.safety_stage and settings.safety_train_at_start):
        return None
    plain = plain_model_settings(settings)
    target = safe_base_dir(plain, base_model_hash(plain))
    refused = target.with_name(target.name + ".refused.json")
    if (target / "SAFETY.json").exists() or refused.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another worker is training the shared safety stage; this one goes on without waiting")
            return None
        if (target / "SAFETY.json").exists() or refused.exists():  # its holder finished while this one started
            return None
        logger.info("training the shared safety stage for this base (first start; the server keeps serving meanwhile)")
        result = train_safety_stage(settings, budgets)
        if not result.accepted:
            refused.write_text(json.dumps(result.as_dict(), indent=2))
        return result
