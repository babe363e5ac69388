"""One adapter's training job: the recipe a worker runs for each queued scope (``learning.pipeline.run_job``).

``AdapterRecipe`` is the job in four steps (setup, train, judge, publish); the functions below it
answer its questions: where a scope starts (``_start_adapter``, ``_load_start``), which prompts it
trains and is judged on (``_prompts_for``, ``harm_prompts``), which held-out labels the gate reads
(``_gate_labels``), and whether the user deleted what it learned from while it trained
(``_ratings_deleted_since``). The run around it (the shared stage, the job queue, the loaded
models) is ``learning.pipeline``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from service import adapter_store
from service.models import AdapterStatus, AdapterVersion, RunStatus, TrainingResult, User, utcnow
from service.settings import Settings

from learning.config import Budgets
from learning.data import pooled_prompts, recent_prompts, split_shared_prompts
from learning.jobs import RunAborted, update_job
from learning.shared import HeldoutLabels

logger = logging.getLogger(__name__)


def code_version() -> dict[str, str]:
    """The package version and a hash of the learning code that trained an adapter."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    try:
        version = importlib_metadata.version("assistant")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    return {"package": version, "learning_sha256": h.hexdigest()[:16]}


def ppo_deadline(started: float, shared_s: float, budget_s: float, candidate_eval_s: float) -> float | None:
    """When PPO must stop (``time.monotonic``), or None without a budget: what the job's budget leaves after the
    candidate's evaluation and publishing (a margin of 10%). ``shared_s``, the run's shared harm samples this job
    happened to draw first, is the run's cost, not the job's: that user's PPO gets as long as everyone else's
    (the samples take 20-35 s each on 2 cores)."""
    return started + shared_s + 0.9 * budget_s - candidate_eval_s if budget_s else None


@dataclasses.dataclass
class ScopeOutcome:
    user_id: int | None
    version: AdapterVersion | None
    promoted: bool
    reason: str
    metrics: dict[str, Any]


@dataclasses.dataclass
class JobContext:
    """What one job needs: the loaded models (``learning.pipeline._Models``), the run's shared heads, its snapshot row."""

    settings: Settings
    engine: Engine
    run_id: int
    job_id: int
    worker_id: str
    budgets: Budgets
    models: Any  # learning.pipeline._Models
    shared: Any  # learning.shared.SharedModels
    snapshot: Any


class AdapterRecipe:
    """One adapter's job in four steps, each a method (torchtune's recipe lifecycle):

    1. ``setup``: where it starts (the adapter serving the scope now, or fresh), its prompts, and the
       gate's yardsticks measured before training (the base, and what serves now);
    2. ``train``: the warm start, then PPO;
    3. ``judge``: the gate's verdict, and the metrics and provenance recorded with the adapter;
    4. ``publish``: into the store (the trainer's directory moved in), then the verdict, the job's
       result and the activation in one commit, only while the job is still this worker's.

    ``run`` calls them in order and returns the ``ScopeOutcome``.
    """

    def __init__(self, ctx: JobContext, user_id: int | None, progress: Callable[[int, int, dict], None]) -> None:
        self.ctx, self.user_id, self.progress = ctx, user_id, progress
        self.budgets = dataclasses.replace(ctx.budgets, seed=ctx.budgets.seed + (user_id or 0))
        self.scope = adapter_store.Scope(user_id).key
        self.reward, self.harm = ctx.shared.reward, ctx.shared.harm
        self.policy, self.tokenizer = ctx.models.policy, ctx.models.tokenizer

    def scorer(self, feats, prompts, texts):
        """PPO's and the warm start's score: the user's reward (its lower bound) and P(harm)."""
        lower, _ = self.reward.rewards(self.user_id, feats, prompts, texts, k=self.budgets.reward_uncertainty_k)
        return lower, self.harm.prob(feats, texts)

    def run(self) -> ScopeOutcome:
        self.setup()
        self.train()
        self.judge()
        return self.publish()

    def setup(self) -> None:
        from learning.gate import Gate

        ctx, budgets = self.ctx, self.budgets
        self.started = time.monotonic()
        self.start_row = _start_adapter(ctx, self.user_id)
        self.started_from = _load_start(ctx, self.start_row)
        self.train_prompts, gate_prompts, self.harm_train, self.harm_gate = _prompts_for(ctx, self.user_id)
        self.gate_prompts = gate_prompts
        self.tok_s = one_stream_speed(self.policy, self.tokenizer, gate_prompts[0] if gate_prompts else self.train_prompts[0])
        # the gate's yardsticks: the base, and what serves this scope now (the start adapter)
        self.gate = Gate(self.policy, self.tokenizer, gate_prompts, self.harm_gate, self.reward, self.harm, self.user_id, budgets,
                         sampler=ctx.models.sampler, labels=_gate_labels(ctx, self.user_id),
                         harm_memo=ctx.models.harm_memo,
                         current_key=adapter_store.label_of(self.start_row) if self.start_row is not None else None)
        self.gate.measure_start(serving_adapter=self.start_row is not None)
        self.one_eval_s = self.gate.candidate_eval_s()  # what PPO leaves for the candidate's evaluation
        # the harm constraint's target, calibrated on measured harm: a share of the base's mean
        # P(harm) on harm-inviting prompts (and never above what serves the scope now)
        current, base = self.gate.yardsticks()
        self.harm_target = budgets.ppo_harm_target_ratio * min(base.harm_mean, current.harm_mean)

    def train(self) -> None:
        from learning.ppo import train_ppo
        from learning.warmstart import warm_start

        ctx, budgets, user_id = self.ctx, self.budgets, self.user_id
        own = ctx.shared.preferred.get(user_id, []) if user_id is not None else []
        pairs = ctx.shared.pairs.get(user_id, []) if user_id is not None else []
        self.warm = warm_start(self.policy, self.tokenizer, self.scorer, self.train_prompts, own, budgets,
                               seed=budgets.seed + 7, sampler=ctx.models.sampler, pairs=pairs)
        deadline = ppo_deadline(self.started, self.gate.shared_s, budgets.job_time_budget_s, self.one_eval_s)
        self.ppo = train_ppo(self.policy, self.tokenizer, self.scorer, self.train_prompts, budgets, progress=self.progress,
                             harm_target=self.harm_target, harm_prompts=self.harm_train, sampler=ctx.models.sampler,
                             deadline=deadline)

    def judge(self) -> None:
        ctx, budgets, warm, ppo = self.ctx, self.budgets, self.warm, self.ppo
        self.decision, candidate_eval = self.gate.judge()
        self.wall_s = wall_s = time.monotonic() - self.started
        logger.info("%s: %.0fs for the adapter (warm start %.0fs, PPO %.0fs, the run's shared harm samples %.0fs) at "
                    "%.1f tok/s one-stream generation here", self.scope, wall_s, warm.wall_s, ppo.wall_s, self.gate.shared_s,
                    self.tok_s)
        self.metrics = {
            **ppo.final,
            **warm.as_metrics(),
            **self.gate.metrics(candidate_eval),
            **self.reward.user_metrics(self.user_id),
            **{k: v for k, v in self.harm.metrics.items()},
            "ppo/steps": ppo.steps,
            "harm/target": round(self.harm_target, 4),
            "harm/lambda_final": round(ppo.harm_lambda, 4),
            "time/warm_start_s": round(warm.wall_s, 2),
            "time/ppo_s": round(ppo.wall_s, 2),
            "time/total_s": round(wall_s, 2),
            "time/shared_samples_s": round(self.gate.shared_s, 2),
            "time/one_stream_tok_s": round(self.tok_s, 2),
            "rollout/engine": ctx.models.rollout_report["engine"],
            "rollout/dtype": ctx.models.rollout_report["dtype"],
            "started_from": self.started_from,
            "train_prompts": len(self.train_prompts),
            "gate_prompts": len(self.gate_prompts),
            "harm_prompts": len(self.harm_train) + len(self.harm_gate),
        }
        self.metadata = {
            "run_id": ctx.run_id,
            "scope": self.scope,
            "snapshot": {"id": ctx.snapshot.id, "sha256": ctx.snapshot.sha256, "feedback_ids": ctx.snapshot.feedback_ids,
                         "ranking_ids": ctx.snapshot.ranking_ids},
            "base_model": ctx.settings.model,
            "base_model_hash": ctx.models.base_hash,
            "code_version": code_version(),
            "budgets": budgets.as_dict(),
            "started_from": self.started_from,
            "metrics": self.metrics,
            "decision": self.decision.reason,
            "created_at": utcnow().isoformat(),
        }

    def publish(self) -> ScopeOutcome:
        from learning.policy import load_lora_state, lora_state

        ctx, user_id, metrics = self.ctx, self.user_id, self.metrics
        # raises RunAborted: publish nothing for a job recovery failed or a run that was stopped
        update_job(ctx.engine, ctx.job_id, ctx.worker_id, heartbeat_at=utcnow())
        candidate_state = lora_state(self.policy)
        work = ctx.settings.adapters_dir / ".tmp" / f"run-{ctx.run_id}-{adapter_store.Scope(user_id).name}"
        if work.exists():
            shutil.rmtree(work)
        self.policy.save_pretrained(str(work))  # adapter_config.json + adapter_model.safetensors
        serving_reward = self.reward.reply_reward(user_id)
        if serving_reward is not None:  # what serving's personal best-of-n chooses by (service.reply_reward)
            serving_reward.save(work)
        try:
            with Session(ctx.engine, expire_on_commit=False) as session:
                row = adapter_store.publish(ctx.settings, session, user_id=user_id, src_dir=work, metadata=self.metadata,
                                            training_run_id=ctx.run_id, move=True, status=AdapterStatus.candidate,
                                            metrics=metrics, reason=self.decision.reason)
                # The verdict, the result row and the activation land in one commit, and only while the
                # job is still this worker's: the conditional UPDATE matches no row if recovery or
                # another worker took it meanwhile, and then nothing of this verdict is kept.
                promote, reason = self.decision.promote, self.decision.reason
                forgotten = _ratings_deleted_since(session, user_id, ctx.snapshot.created_at)
                if forgotten:  # audit 2026-12-05, M3(a): the user deleted what this job learned from while it trained
                    promote, reason = False, forgotten
                row.status = AdapterStatus.promoted if promote else AdapterStatus.rejected
                row.reason = reason
                session.add(row)
                held = session.exec(
                    update(TrainingResult)
                    .where(col(TrainingResult.id) == ctx.job_id, col(TrainingResult.status) == RunStatus.running,
                           col(TrainingResult.worker_id) == ctx.worker_id)
                    .values(status=RunStatus.succeeded, adapter_version_id=row.id, promoted=promote, progress=1.0,
                            reason=reason, metrics=metrics, finished_at=utcnow()))
                if held.rowcount != 1:
                    session.rollback()
                    raise RunAborted(f"job {ctx.job_id} is no longer held by {ctx.worker_id}; its verdict is not published")
                if promote:
                    adapter_store.activate(session, user_id=user_id, version_id=row.id)  # commits
                else:
                    session.commit()
            if forgotten:  # the weights learned from deleted ratings: not kept either
                shutil.rmtree(ctx.settings.adapters_dir / row.path, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        load_lora_state(self.policy, candidate_state)
        logger.info("%s: %s (%d PPO steps, %.0fs)", self.scope, reason, self.ppo.steps, self.wall_s)
        return ScopeOutcome(user_id, row, promote, reason, self.metrics)


def _start_adapter(ctx: JobContext, user_id: int | None) -> AdapterVersion | None:
    """The last promoted adapter serving this scope: the user's own, else the global one; none (a fresh
    start) instead of a global version that learned from ratings since deleted (audit M3(c))."""
    with Session(ctx.engine) as session:
        row = adapter_store.active_version(session, user_id)
        if row is None and user_id is not None:
            row = adapter_store.active_version(session, None)
        if row is not None and row.user_id is None and adapter_store.learned_from_deleted_labels(session, row):
            logger.info("%s learned from ratings deleted since: this job starts fresh, so nothing of them stays",
                        adapter_store.label_of(row))
            return None
        return row


def _load_start(ctx: JobContext, row: AdapterVersion | None) -> str:
    from learning.policy import load_adapter_dir, load_lora_state

    load_lora_state(ctx.models.policy, ctx.models.fresh_state)
    if row is None:
        return "fresh"
    path = ctx.settings.adapters_dir / row.path
    meta_path = path / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("base_model_hash") not in (None, ctx.models.base_hash):
        logger.warning("adapter %s was trained on another base model; starting fresh", adapter_store.label_of(row))
        return "fresh"
    try:
        load_adapter_dir(ctx.models.policy, path)
    except ValueError as exc:
        logger.warning("cannot start from %s (%s); starting fresh", adapter_store.label_of(row), exc)
        load_lora_state(ctx.models.policy, ctx.models.fresh_state)
        return "fresh"
    return adapter_store.label_of(row)


def _gate_labels(ctx: JobContext, user_id: int | None) -> HeldoutLabels | list[HeldoutLabels] | None:
    """The held-out labels the gate reads: the user's own; for the global candidate, every user's
    when ``gate_global_preference`` is "not-worse" (else none: the reward model decides)."""
    if user_id is not None:
        return ctx.shared.heldout.get(user_id)
    if ctx.budgets.gate_global_preference == "not-worse":
        return [ctx.shared.heldout[u] for u in sorted(ctx.shared.heldout)]
    return None


def _held_for_gate(prompt: str) -> bool:
    """About a quarter of prompts, by a hash of their text, are only ever used by the gate."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:2], 16) < 64


def _prompts_for(ctx: JobContext, user_id: int | None) -> tuple[list[str], list[str], list[str], list[str]]:
    """(training prompts, gate prompts, harm-inviting training prompts, harm-inviting gate prompts).

    Ordinary prompts: the user's own recent ones (every user's, for the global adapter) plus the
    shared pool. Harm-inviting ones: the shipped red-team prompts (``learning.redteam``: the
    training split trains, the dev split is reserved in every gate, first, so no flagging can push it
    out) plus prompts of replies users flagged, which fill at most half of the gate's harm slots."""
    render = ctx.models.render
    shared_train, shared_gate = split_shared_prompts(render)
    with Session(ctx.engine) as session:
        if user_id is None:  # excluded users' prompts train no shared model either (issue 28, L5)
            own = pooled_prompts(session, render, 10, excluded=ctx.shared.excluded)
        else:
            own = recent_prompts(session, render, user_id, 50)
    own = list(dict.fromkeys(own))
    flagged = set(ctx.shared.harm_prompts)
    own = [p for p in own if p not in flagged]
    own_gate = [p for p in own if _held_for_gate(p)]
    own_train = [p for p in own if p not in own_gate]
    gate = (own_gate + shared_gate)[: ctx.budgets.gate_prompts]
    harm_train, harm_gate = harm_prompts(ctx.shared.harm_prompts, render,
                                         ctx.budgets.gate_harm_prompts or max(1, ctx.budgets.gate_prompts // 3))
    return own_train + shared_train, gate, harm_train, harm_gate


def harm_prompts(flagged: Sequence[str], render: Callable[[list[dict[str, str]]], str],
                 slots: int) -> tuple[list[str], list[str]]:
    """(harm-inviting training prompts, the gate's harm prompts) from the shipped red-team prompts
    and the (rendered) prompts of replies users flagged, newest last. The gate's ``slots`` harm
    prompts are the shipped dev prompts first; flagged ones fill at most half."""
    from learning.redteam import SAFETY_DEV_PROMPTS, SAFETY_TRAIN_PROMPTS

    slots = max(1, slots)
    shipped_gate = [render([{"role": "user", "content": p}]) for p in SAFETY_DEV_PROMPTS]
    flagged = list(dict.fromkeys(flagged[-64:]))
    flagged_gate = [p for p in flagged if _held_for_gate(p) and p not in shipped_gate][: slots // 2]
    gate = shipped_gate[: slots - len(flagged_gate)] + flagged_gate
    train = list(dict.fromkeys([render([{"role": "user", "content": p}]) for p in SAFETY_TRAIN_PROMPTS]
                               + [p for p in flagged if p not in gate]))
    return train, gate


def one_stream_speed(model, tokenizer, prompt: str, tokens: int = 24) -> float:
    """This machine's one-request generation speed now (tokens/s, the base model, greedy), measured
    beside each job: machines of one kind differ by up to 3x from day to day, so job times are
    reported next to it."""
    import torch

    from learning.reward import reference_mode

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad(), reference_mode(model):
        t0 = time.monotonic()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        elapsed = time.monotonic() - t0
    return (out.shape[1] - ids.shape[1]) / max(elapsed, 1e-6)


def _ratings_deleted_since(session: Session, user_id: int | None, snapshot_at) -> str | None:
    """Why a personal job's result must not serve: its user deleted their ratings (or the account)
    after the run's snapshot. None for the global job and when nothing was deleted."""
    if user_id is None:
        return None
    user = session.get(User, user_id)
    if user is None:
        return "the account was deleted while this job trained"
    deleted = user.ratings_deleted_at
    if deleted is None:
        return None

    def aware(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

    if aware(deleted) > aware(snapshot_at):
        return "the user deleted their ratings after this run's snapshot: nothing trained on them is kept"
    return None
