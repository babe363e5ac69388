"""One training run, start to finish, split into jobs so several workers can share it:

    shared stage (once per run):  snapshot -> reward + harm models -> one job row per adapter
    jobs (any worker, any order):  global adapter first, then per-user PPO -> gate -> publish

The worker that claims a run (``learning.worker.claim_run``) runs the shared stage
(``run_shared_stage``): it freezes the snapshot, fits the reward and harm models, writes their
heads to ``<adapters>/.runs/run-<id>.json`` (the adapter store is what workers share besides the
database) and, in one commit, creates a ``TrainingResult`` row per scope: "queued" for each
adapter to train, "succeeded" with the reason for users skipped for too few labels. Those queued
rows are the jobs, and every operation on them is ``learning.jobs``'s (claiming with one
conditional UPDATE, heartbeats, progress, ending the run with its last job, recovery of dead
workers' jobs). A user job is claimable only once the run's global job has finished, so users
without an adapter of their own start from the global adapter this very run promoted.
``run_training`` does all of it in one process (``assistant train --now``).

Crash safety: an adapter reaches users only through ``service.adapter_store.publish``
(temporary directory, fsync, rename, then the row) followed by one commit that records the
gate's verdict and flips ``ActiveAdapter`` (``_train_scope``), and only while the job is still
this worker's. A worker killed at any moment (kill -9) leaves at most an unserved directory or a
"candidate" row, which ``learning.jobs.recover_interrupted_runs`` cleans up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import adapter_store
from service.models import (AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, TrainingSnapshot, User,
                            utcnow)
from service.settings import Settings

from learning.config import Budgets
from learning.jobs import (DONE, HEARTBEAT_SECONDS, SHARED_SHARE, Heartbeat, RunAborted, RunFailed, RunNotClaimed, claim_job,
                           fail_job, fail_run, finish_run_if_done, new_worker_id, recover_interrupted_runs, refresh_run_progress,
                           shared_path, update_job, update_run)
from learning.data import chat_renderer, pooled_prompts, recent_prompts, save_snapshot, shared_view, split_shared_prompts
from learning.shared import HeldoutLabels

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

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


# --- what the shared stage hands to the jobs -------------------------------------------------------


def _load_shared(settings: Settings, run_id: int, budgets: Budgets):
    """The ``SharedModels`` the shared stage fitted; they score features, never compute them."""
    from learning.shared import SharedModels

    path = shared_path(settings, run_id)
    if not path.exists():
        raise FileNotFoundError(f"the reward/harm models of run {run_id} are missing at {path}; is the adapter store "
                                "shared by every worker (ASSISTANT_DATA_DIR)? Queue a new run to retry")
    return SharedModels.load(path, budgets)


@dataclasses.dataclass
class _Models:
    """The base model wrapped with one LoRA policy, loaded once per run per process."""

    tokenizer: Any
    render: Any
    policy: Any
    fresh_state: dict
    base_hash: str
    sampler: Any  # draws the warm start's, PPO's and the gate's replies (learning.policy.Sampler)
    rollout_report: dict  # which sampler, and the dtype it runs in and why
    harm_memo: dict = dataclasses.field(default_factory=dict)  # the run's shared gate harm samples (learning.gate.Gate)


_LOADED: dict[int, _Models] = {}  # run id -> models; only the latest run is kept
_LOADED_LOCK = threading.Lock()


def _models_for(settings: Settings, run_id: int, budgets: Budgets, *, tokenizer=None, base=None) -> _Models:
    """This process's models for ``run_id``: loaded on first use (or built from a loaded ``base``)."""
    import torch

    from service.model_loading import base_model_hash, load_base_model, load_tokenizer

    from learning.policy import lora_state, make_policy

    with _LOADED_LOCK:
        if run_id in _LOADED:
            return _LOADED[run_id]
        _LOADED.clear()  # PEFT wraps the base in place: a new run gets a freshly loaded base
        tokenizer = tokenizer or load_tokenizer(settings)
        base = base if base is not None else load_base_model(settings, dtype=torch.float32)
        from learning.rollouts import rollout_sampler

        sampler, report = rollout_sampler(settings, budgets, base, tokenizer)  # from the base, before PEFT wraps it
        policy = make_policy(base, budgets)
        models = _Models(tokenizer, chat_renderer(tokenizer), policy, lora_state(policy), base_model_hash(settings),
                         sampler, report)
        _LOADED[run_id] = models
        return models


def release_models() -> None:
    """Drop this process's loaded models (a worker calls it when no job is left, so idle it holds none)."""
    with _LOADED_LOCK:
        _LOADED.clear()


# --- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScopeOutcome:
    user_id: int | None
    version: AdapterVersion | None
    promoted: bool
    reason: str
    metrics: dict[str, Any]


def run_training(settings: Settings, engine: Engine, run_id: int, progress_cb: ProgressCallback | None = None,
                 *, budgets: Budgets | None = None) -> None:
    """Execute a claimed ``TrainingRun`` here: the shared stage, then its jobs until none is left, then
    wait for jobs other workers took. Raises ``RunFailed`` (or the shared stage's error) if it failed."""
    budgets = budgets or Budgets.from_env()
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        worker_id = run.worker_id if run is not None and run.worker_id else new_worker_id()
    seen = [0.0]

    def report(fraction: float, message: str) -> None:
        seen[0] = max(seen[0], fraction)  # jobs elsewhere may lag a beat behind; never report going back
        if progress_cb is not None:
            progress_cb(seen[0], message)

    run_shared_stage(settings, engine, run_id, report, budgets=budgets)
    try:
        while (job_id := claim_job(engine, worker_id, run_id=run_id)) is not None:
            run_job(settings, engine, job_id, worker_id, budgets=budgets, progress_cb=report)
    finally:
        release_models()
    last_recovery = time.monotonic()
    while True:
        with Session(engine) as session:
            run = session.get(TrainingRun, run_id)
        if run.status in DONE:
            break
        if time.monotonic() - last_recovery > HEARTBEAT_SECONDS:  # a job elsewhere may have died with its worker
            recover_interrupted_runs(settings, engine)
            last_recovery = time.monotonic()
        time.sleep(1.0)
    if run.status == RunStatus.failed:
        raise RunFailed(f"training run {run_id} failed: {run.error}")
    report(1.0, "done")


def run_shared_stage(settings: Settings, engine: Engine, run_id: int, progress_cb: ProgressCallback | None = None,
                     *, budgets: Budgets | None = None) -> None:
    """Snapshot, reward and harm models, job rows for a claimed run; on error the run is failed, then re-raised."""
    budgets = budgets or Budgets.from_env()
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status != RunStatus.running:
            raise RunNotClaimed(f"training run {run_id} is {run.status.value if run else 'missing'}; "
                                "claim it first (learning.worker.claim_run) so no other worker runs it too")
        requested = list(run.user_ids) if run.user_ids is not None else None

    def progress(fraction: float, message: str) -> None:
        update_run(engine, run_id, progress=round(min(max(fraction, 0.0), 1.0), 4), heartbeat_at=utcnow())
        logger.info("run %s: %3.0f%% %s", run_id, 100 * fraction, message)
        if progress_cb is not None:
            progress_cb(fraction, message)

    try:
        with Heartbeat(lambda: update_run(engine, run_id, heartbeat_at=utcnow()), f"run-{run_id}"):
            _shared_stage(settings, engine, run_id, requested, budgets, progress)
    except RunAborted:
        logger.warning("training run %s was aborted from outside; nothing more is published", run_id)
        raise
    except BaseException as exc:
        fail_run(engine, run_id, f"{type(exc).__name__}: {exc}")
        logger.exception("training run %s failed", run_id)
        raise
    with Session(engine) as session:
        has_jobs = session.exec(select(TrainingResult.id).where(TrainingResult.run_id == run_id)).first() is not None
    if not has_jobs:  # nobody to train or skip (an empty user list): nothing more to do
        update_run(engine, run_id, status=RunStatus.succeeded, progress=1.0, finished_at=utcnow())
    else:
        finish_run_if_done(settings, engine, run_id)  # every user skipped: no job to wait for


def _shared_stage(settings: Settings, engine: Engine, run_id: int, requested: list[int] | None, budgets: Budgets,
                  progress: ProgressCallback) -> None:
    import torch

    from service.model_loading import load_base_model, load_tokenizer

    from learning.harm import HarmModel, judge_flagger, make_judge
    from learning.reward import FeatureCache, RewardModel
    from learning.shared import SharedModels, heldout_labels, preferred_replies, training_pairs

    judge = make_judge(budgets.harm_judge)  # fails early on an unknown name
    progress(0.0, "loading the base model")
    tokenizer = load_tokenizer(settings)
    base = load_base_model(settings, dtype=torch.float32)
    render = chat_renderer(tokenizer)

    # 1. snapshot: exactly which feedback this run learns from
    with Session(engine) as session:
        flags = judge_flagger(judge, budgets.harm_judge_threshold) if judge is not None else None
        view = shared_view(session, render, budgets, judge_flags=flags)
        full, pool, excluded = view.full, view.pool, view.excluded
        if full.label_count() == 0:
            raise ValueError("no ratings or rankings to learn from yet; rate some replies first")
        snapshot = save_snapshot(session, full, run_id=run_id, extra={
            "pool_labels": pool.label_count(), "pool_audit": {str(u): row for u, row in view.audit.items()}})
    progress(0.05, f"snapshot {snapshot.sha256[:12]}: {full.stats['pairs']} pairs, {full.stats['points']} thumbs")

    # 2. reward and harm models on frozen backbone features (before any LoRA wraps the base)
    cache = FeatureCache(base, tokenizer, budgets)
    reward = RewardModel(cache, budgets)
    reward_metrics = reward.fit(pool, full)
    harm = HarmModel(cache, budgets, judge=judge)
    harm_metrics = harm.fit(pool)
    with Session(engine) as session:
        row = session.get(type(snapshot), snapshot.id)
        row.stats = {**row.stats, "models": {**reward_metrics, **harm_metrics}}
        session.add(row)
        session.commit()
    flagged = list(dict.fromkeys(h.prompt for h in sorted(pool.harm, key=lambda h: h.updated_at) if h.harmful))
    SharedModels(reward, harm, flagged, preferred_replies(full, budgets.heldout_fraction),
                 heldout_labels(full, budgets.heldout_fraction),
                 training_pairs(full, budgets.heldout_fraction), excluded).save(shared_path(settings, run_id))
    progress(SHARED_SHARE, f"reward model: held-out accuracy {reward_metrics.get('reward/heldout_accuracy')} "
                           f"(longer-wins {reward_metrics.get('reward/length_baseline_accuracy')})")

    # 3. the jobs: the global adapter on full runs, then each user with enough labels; skipped
    #    users get their (finished) result row in the same commit, so the run's rows appear at once
    scopes: list[int | None] = []
    if requested is None and pool.label_count() >= budgets.min_global_labels:
        scopes.append(None)
    candidates = requested if requested is not None else full.user_ids()
    skipped: dict[int, str] = {}
    for user_id in candidates:
        n = full.label_count(user_id)
        if n >= budgets.min_user_labels and reward.is_personal(user_id):
            scopes.append(user_id)
        elif n < budgets.min_user_labels:
            skipped[user_id] = (f"skipped: {n} labels, a personal adapter needs {budgets.min_user_labels} "
                                "(ASSISTANT_MIN_USER_LABELS); served the global adapter meanwhile")
        else:  # enough labels, but the held-out split (the gate's yardstick) leaves too few to learn from
            own = reward.users.get(user_id)
            skipped[user_id] = (f"skipped: {n} labels, {own.labels if own else 0} of them outside the held-out split the gate "
                                f"measures with; a personal adapter learns from {budgets.min_user_labels} "
                                "(ASSISTANT_MIN_USER_LABELS); served the global adapter meanwhile")
    update_run(engine, run_id, heartbeat_at=utcnow())  # raises RunAborted: queue nothing for a stopped run
    with Session(engine) as session:
        for user_id in scopes:
            session.add(TrainingResult(run_id=run_id, user_id=user_id, status=RunStatus.queued))
        for user_id, reason in skipped.items():
            session.add(TrainingResult(run_id=run_id, user_id=user_id, status=RunStatus.succeeded, reason=reason,
                                       metrics=reward.user_metrics(user_id), finished_at=utcnow(), progress=1.0))
        session.commit()
    if scopes:  # keep the loaded base for this process's own jobs
        _models_for(settings, run_id, budgets, tokenizer=tokenizer, base=base)
    logger.info("run %s: queued %d jobs (%s), skipped %d users", run_id, len(scopes),
                ", ".join(adapter_store.Scope(u).key for u in scopes), len(skipped))


def run_job(settings: Settings, engine: Engine, job_id: int, worker_id: str, *, budgets: Budgets | None = None,
            progress_cb: ProgressCallback | None = None) -> RunStatus:
    """Train, gate and publish one claimed job; ends it "succeeded" or "failed" (with the error), and
    its run if it was the last. Returns the job's final status; only KeyboardInterrupt-like errors
    propagate (after failing the job)."""
    budgets = budgets or Budgets.from_env()
    with Session(engine) as session:
        job = session.get(TrainingResult, job_id)
        run_id, user_id = job.run_id, job.user_id
        snapshot = session.exec(select(TrainingSnapshot).where(TrainingSnapshot.run_id == run_id)).one()
    scope = adapter_store.Scope(user_id).key

    def scope_progress(step: int, total: int, _m: dict) -> None:
        update_job(engine, job_id, worker_id, progress=round(0.8 * step / total, 4), heartbeat_at=utcnow())
        fraction = refresh_run_progress(engine, run_id)
        logger.info("run %s: %3.0f%% %s: PPO step %d/%d", run_id, 100 * fraction, scope, step, total)
        if progress_cb is not None:
            progress_cb(fraction, f"{scope}: PPO step {step}/{total}")

    status = RunStatus.failed
    try:
        with Heartbeat(lambda: update_job(engine, job_id, worker_id, heartbeat_at=utcnow()), f"job-{job_id}"):
            shared = _load_shared(settings, run_id, budgets)
            models = _models_for(settings, run_id, budgets)
            ctx = _Context(settings, engine, run_id, job_id, worker_id, budgets, models, shared, snapshot)
            _train_scope(ctx, user_id, scope_progress)
        status = RunStatus.succeeded
    except RunAborted as exc:
        logger.warning("job %s (%s) was aborted from outside: %s", job_id, scope, exc)
    except BaseException as exc:
        fail_job(settings, engine, job_id, f"{type(exc).__name__}: {exc}", worker_id=worker_id)
        logger.exception("job %s (%s) of training run %s failed", job_id, scope, run_id)
        if not isinstance(exc, Exception):
            raise
    fraction = refresh_run_progress(engine, run_id)
    finish_run_if_done(settings, engine, run_id)
    if progress_cb is not None:
        progress_cb(fraction, f"{scope} done")
    return status


@dataclasses.dataclass
class _Context:
    """What one job needs: the loaded models (``_Models``), the run's shared heads, its snapshot row."""

    settings: Settings
    engine: Engine
    run_id: int
    job_id: int
    worker_id: str
    budgets: Budgets
    models: "_Models"
    shared: Any  # learning.shared.SharedModels
    snapshot: Any


def _start_adapter(ctx: _Context, user_id: int | None) -> AdapterVersion | None:
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


def _load_start(ctx: _Context, row: AdapterVersion | None) -> str:
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


def _gate_labels(ctx: _Context, user_id: int | None) -> HeldoutLabels | list[HeldoutLabels] | None:
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


def _prompts_for(ctx: _Context, user_id: int | None) -> tuple[list[str], list[str], list[str], list[str]]:
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
    harm_train, harm_gate = harm_prompts(ctx.shared.harm_prompts, render, ctx.budgets.gate_prompts)
    return own_train + shared_train, gate, harm_train, harm_gate


def harm_prompts(flagged: Sequence[str], render: Callable[[list[dict[str, str]]], str],
                 gate_prompts: int) -> tuple[list[str], list[str]]:
    """(harm-inviting training prompts, the gate's harm prompts) from the shipped red-team prompts
    and the (rendered) prompts of replies users flagged, newest last. The gate's harm slots
    (a third of ``gate_prompts``) hold the shipped dev prompts first; flagged ones fill at most half."""
    from learning.redteam import SAFETY_DEV_PROMPTS, SAFETY_TRAIN_PROMPTS

    slots = max(1, gate_prompts // 3)
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


def _train_scope(ctx: _Context, user_id: int | None, progress: Callable[[int, int, dict], None]) -> ScopeOutcome:
    from learning.gate import Gate
    from learning.policy import lora_state, load_lora_state
    from learning.ppo import train_ppo
    from learning.warmstart import warm_start

    budgets = dataclasses.replace(ctx.budgets, seed=ctx.budgets.seed + (user_id or 0))
    scope = adapter_store.Scope(user_id).key
    reward, harm = ctx.shared.reward, ctx.shared.harm
    policy, tokenizer = ctx.models.policy, ctx.models.tokenizer

    def scorer(feats, prompts, texts):
        lower, _ = reward.rewards(user_id, feats, prompts, texts, k=budgets.reward_uncertainty_k)
        return lower, harm.prob(feats, texts)

    started = time.monotonic()
    start_row = _start_adapter(ctx, user_id)
    started_from = _load_start(ctx, start_row)
    train_prompts, gate_prompts, harm_train, harm_gate = _prompts_for(ctx, user_id)
    tok_s = one_stream_speed(policy, tokenizer, gate_prompts[0] if gate_prompts else train_prompts[0])

    # 1. the gate's yardsticks: the base, and what serves this scope now (the start adapter)
    sampler = ctx.models.sampler
    gate = Gate(policy, tokenizer, gate_prompts, harm_gate, reward, harm, user_id, budgets, sampler=sampler,
                labels=_gate_labels(ctx, user_id), harm_memo=ctx.models.harm_memo,
                current_key=adapter_store.label_of(start_row) if start_row is not None else None)
    t_gate = time.monotonic()
    gate.measure_start(serving_adapter=start_row is not None)
    one_eval_s = (time.monotonic() - t_gate) / (2 if start_row is not None else 1)  # the candidate's costs the same
    # 2. the harm constraint's target, calibrated on measured harm: a share of the base's mean
    #    P(harm) on harm-inviting prompts (and never above what serves the scope now)
    harm_target = budgets.ppo_harm_target_ratio * min(gate.base.harm_mean, gate.current.harm_mean)
    # 3. the warm start from the user's labels and reward model, then 4. PPO
    own = ctx.shared.preferred.get(user_id, []) if user_id is not None else []
    pairs = ctx.shared.pairs.get(user_id, []) if user_id is not None else []
    warm = warm_start(policy, tokenizer, scorer, train_prompts, own, budgets, seed=budgets.seed + 7, sampler=sampler,
                      pairs=pairs)
    # PPO gets what the budget leaves after the candidate's evaluation and publishing (a margin of 10%)
    deadline = (started + 0.9 * budgets.job_time_budget_s - one_eval_s) if budgets.job_time_budget_s else None
    ppo = train_ppo(policy, tokenizer, scorer, train_prompts, budgets, progress=progress, harm_target=harm_target,
                    harm_prompts=harm_train, sampler=sampler, deadline=deadline)
    # 5. the verdict
    decision, candidate_eval = gate.judge()
    wall_s = time.monotonic() - started
    logger.info("%s: %.0fs for the adapter (warm start %.0fs, PPO %.0fs) at %.1f tok/s one-stream generation here",
                scope, wall_s, warm.wall_s, ppo.wall_s, tok_s)

    metrics: dict[str, Any] = {
        **ppo.final,
        **warm.as_metrics(),
        **gate.metrics(candidate_eval),
        **reward.user_metrics(user_id),
        **{k: v for k, v in harm.metrics.items()},
        "ppo/steps": ppo.steps,
        "harm/target": round(harm_target, 4),
        "harm/lambda_final": round(ppo.harm_lambda, 4),
        "time/warm_start_s": round(warm.wall_s, 2),
        "time/ppo_s": round(ppo.wall_s, 2),
        "time/total_s": round(wall_s, 2),
        "time/one_stream_tok_s": round(tok_s, 2),
        "rollout/engine": ctx.models.rollout_report["engine"],
        "rollout/dtype": ctx.models.rollout_report["dtype"],
        "started_from": started_from,
        "train_prompts": len(train_prompts),
        "gate_prompts": len(gate_prompts),
        "harm_prompts": len(harm_train) + len(harm_gate),
    }
    metadata = {
        "run_id": ctx.run_id,
        "scope": scope,
        "snapshot": {"id": ctx.snapshot.id, "sha256": ctx.snapshot.sha256, "feedback_ids": ctx.snapshot.feedback_ids,
                     "ranking_ids": ctx.snapshot.ranking_ids},
        "base_model": ctx.settings.model,
        "base_model_hash": ctx.models.base_hash,
        "code_version": code_version(),
        "budgets": ctx.budgets.as_dict(),
        "started_from": started_from,
        "metrics": metrics,
        "decision": decision.reason,
        "created_at": utcnow().isoformat(),
    }
    # raises RunAborted: publish nothing for a job recovery failed or a run that was stopped
    update_job(ctx.engine, ctx.job_id, ctx.worker_id, heartbeat_at=utcnow())
    candidate_state = lora_state(policy)
    work = ctx.settings.adapters_dir / ".tmp" / f"run-{ctx.run_id}-{adapter_store.Scope(user_id).name}"
    if work.exists():
        shutil.rmtree(work)
    ctx.models.policy.save_pretrained(str(work))  # adapter_config.json + adapter_model.safetensors
    serving_reward = reward.reply_reward(user_id)
    if serving_reward is not None:  # what serving's personal best-of-n chooses by (service.reply_reward)
        serving_reward.save(work)
    try:
        with Session(ctx.engine, expire_on_commit=False) as session:
            row = adapter_store.publish(ctx.settings, session, user_id=user_id, src_dir=work, metadata=metadata,
                                        training_run_id=ctx.run_id, move=True, status=AdapterStatus.candidate, metrics=metrics,
                                        reason=decision.reason)
            # The verdict, the result row and the activation land in one commit, and only while the
            # job is still this worker's: the conditional UPDATE matches no row if recovery or
            # another worker took it meanwhile, and then nothing of this verdict is kept.
            promote, reason = decision.promote, decision.reason
            forgotten = _ratings_deleted_since(session, user_id, ctx.snapshot.created_at)
            if forgotten:  # audit 2026-12-05, M3(a): the user deleted what this job learned from while it trained
                promote, reason = False, forgotten
            row.status = AdapterStatus.promoted if promote else AdapterStatus.rejected
            row.reason = reason
            session.add(row)
            held = session.execute(
                update(TrainingResult)
                .where(TrainingResult.id == ctx.job_id, TrainingResult.status == RunStatus.running,
                       TrainingResult.worker_id == ctx.worker_id)
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
    load_lora_state(ctx.models.policy, candidate_state)
    logger.info("%s: %s (%d PPO steps, %.0fs)", scope, reason, ppo.steps, wall_s)
    return ScopeOutcome(user_id, row, promote, reason, metrics)


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
