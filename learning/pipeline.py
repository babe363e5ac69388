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
gate's verdict and flips ``ActiveAdapter`` (``learning.recipe.AdapterRecipe.publish``), and only while the job is still
this worker's. A worker killed at any moment (kill -9) leaves at most an unserved directory or a
"candidate" row, which ``learning.jobs.recover_interrupted_runs`` cleans up.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import adapter_store
from service.models import RunStatus, TrainingResult, TrainingRun, TrainingSnapshot, utcnow
from service.settings import Settings

from learning.config import Budgets
from learning.jobs import (DONE, HEARTBEAT_SECONDS, SHARED_SHARE, Heartbeat, RunAborted, RunFailed, RunNotClaimed, claim_job,
                           fail_job, fail_run, finish_run_if_done, new_worker_id, recover_interrupted_runs, refresh_run_progress,
                           shared_path, update_job, update_run)
from learning.data import chat_renderer, save_snapshot, shared_view
from learning.recipe import AdapterRecipe, JobContext

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

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


class LoadedModels:
    """One worker's models (``_Models``), kept for the run it works on: loaded on first use (or built
    from a base the shared stage already loaded) and dropped when it goes idle. Owned by whoever runs
    jobs (a ``learning.worker.Worker``, or ``run_training`` in the foreground), never module state,
    so two workers in one process (the tests' embedded ones) never share a PEFT-wrapped base."""

    def __init__(self) -> None:
        self._by_run: dict[int, _Models] = {}  # run id -> models; only the latest run is kept
        self._lock = threading.Lock()

    def get(self, settings: Settings, run_id: int, budgets: Budgets, *, tokenizer=None, base=None) -> _Models:
        """The models for ``run_id``: loaded on first use (or built from a loaded ``base``)."""
        import torch

        from service.model_loading import base_model_hash, load_base_model, load_tokenizer

        from learning.policy import lora_state, make_policy
        from learning.rollouts import rollout_sampler

        with self._lock:
            if run_id in self._by_run:
                return self._by_run[run_id]
            self._by_run.clear()  # PEFT wraps the base in place: a new run gets a freshly loaded base
            tokenizer = tokenizer or load_tokenizer(settings)
            base = base if base is not None else load_base_model(settings, dtype=torch.float32)
            sampler, report = rollout_sampler(settings, budgets, base, tokenizer)  # from the base, before PEFT wraps it
            policy = make_policy(base, budgets)
            models = _Models(tokenizer, chat_renderer(tokenizer), policy, lora_state(policy), base_model_hash(settings),
                             sampler, report)
            self._by_run[run_id] = models
            return models

    def release(self) -> None:
        """Drop the loaded models (a worker calls it when no job is left, so idle it holds none)."""
        with self._lock:
            self._by_run.clear()

    def holds(self, run_id: int) -> bool:
        with self._lock:
            return run_id in self._by_run


# --- the run -------------------------------------------------------------------------------------


def run_training(settings: Settings, engine: Engine, run_id: int, progress_cb: ProgressCallback | None = None,
                 *, budgets: Budgets | None = None, models: LoadedModels | None = None) -> None:
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

    models = models if models is not None else LoadedModels()
    run_shared_stage(settings, engine, run_id, report, budgets=budgets, models=models)
    try:
        while (job_id := claim_job(engine, worker_id, run_id=run_id)) is not None:
            run_job(settings, engine, job_id, worker_id, budgets=budgets, progress_cb=report, models=models)
    finally:
        models.release()
    last_recovery = time.monotonic()
    while True:
        with Session(engine) as session:
            run = session.get(TrainingRun, run_id)
        if run is None:
            raise RunFailed(f"training run {run_id} is no longer in the database")
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
                     *, budgets: Budgets | None = None, models: LoadedModels | None = None) -> None:
    """Snapshot, reward and harm models, job rows for a claimed run; on error the run is failed, then re-raised.
    ``models``: the caller's, to keep the base this stage loaded for the jobs it will run itself."""
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
            _shared_stage(settings, engine, run_id, requested, budgets, progress, models)
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
                  progress: ProgressCallback, models: LoadedModels | None) -> None:
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
    harm_pool = pool
    if budgets.harm_safety_rows:  # the safety stage's labelled samples, beside the users' (learning.harm_rows)
        from pathlib import Path

        from service.model_loading import resolve_model_path

        from learning.harm_rows import served_rows

        harm_pool = dataclasses.replace(pool, harm=pool.harm + served_rows(Path(resolve_model_path(settings)), render))
    harm_metrics = harm.fit(harm_pool)
    with Session(engine) as session:
        row = session.get(type(snapshot), snapshot.id)
        if row is None:
            raise RuntimeError(f"snapshot {snapshot.id} of run {run_id} is no longer in the database")
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
        for uid in scopes:
            session.add(TrainingResult(run_id=run_id, user_id=uid, status=RunStatus.queued))
        for user_id, reason in skipped.items():
            session.add(TrainingResult(run_id=run_id, user_id=user_id, status=RunStatus.succeeded, reason=reason,
                                       metrics=reward.user_metrics(user_id), finished_at=utcnow(), progress=1.0))
        session.commit()
    if scopes and models is not None:  # keep the loaded base for this worker's own jobs
        models.get(settings, run_id, budgets, tokenizer=tokenizer, base=base)
    logger.info("run %s: queued %d jobs (%s), skipped %d users", run_id, len(scopes),
                ", ".join(adapter_store.Scope(u).key for u in scopes), len(skipped))


def run_job(settings: Settings, engine: Engine, job_id: int, worker_id: str, *, budgets: Budgets | None = None,
            progress_cb: ProgressCallback | None = None, models: LoadedModels | None = None) -> RunStatus:
    """Train, gate and publish one claimed job; ends it "succeeded" or "failed" (with the error), and
    its run if it was the last. Returns the job's final status; only KeyboardInterrupt-like errors
    propagate (after failing the job). ``models``: the worker's loaded models (None: loaded for this job alone)."""
    budgets = budgets or Budgets.from_env()
    with Session(engine) as session:
        job = session.get(TrainingResult, job_id)
        if job is None:
            raise ValueError(f"training job {job_id} is not in the database")
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
            loaded = (models if models is not None else LoadedModels()).get(settings, run_id, budgets)
            ctx = JobContext(settings, engine, run_id, job_id, worker_id, budgets, loaded, shared, snapshot)
            AdapterRecipe(ctx, user_id, scope_progress).run()
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
