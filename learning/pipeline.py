"""One training run, start to finish:

    snapshot -> reward + harm models -> global adapter -> per-user PPO -> gate -> publish -> results

``run_training`` executes a ``TrainingRun`` row that a worker has already claimed (status
"running"), updating its progress and heartbeat, and ends it "succeeded" or "failed" with the
error. Crash safety: an adapter reaches users only through ``service.adapter_store.publish``
(temporary directory, fsync, rename, then the row) followed by one commit that records the
gate's verdict and flips ``ActiveAdapter``. A run killed at any moment (kill -9) leaves at most
an unserved directory or a "candidate" row; ``recover_interrupted_runs`` marks such runs failed
and such rows rejected when a worker starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import adapter_store
from service.models import AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, User, utcnow
from service.settings import Settings

from learning.config import Budgets
from learning.data import Dataset, build_dataset, chat_renderer, recent_prompts, save_snapshot, shared_pool, split_shared_prompts

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0


class RunNotClaimed(RuntimeError):
    """run_training was given a run that is not in the "running" state."""


# Worker ids of the workers alive in this process (a stopped worker's id is removed).
LIVE_WORKERS: set[str] = set()


def new_worker_id() -> str:
    """host:pid:random, so recovery can tell a dead local worker from a live remote one."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


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


# --- run bookkeeping ---------------------------------------------------------------------------


class RunAborted(RuntimeError):
    """The run row left the "running" state under us (a stopped worker or recovery marked it failed)."""


def _update_run(engine: Engine, run_id: int, **fields: Any) -> None:
    """Update a running run's row; raises RunAborted if it is no longer running."""
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"training run {run_id} vanished from the database")
        if run.status != RunStatus.running:
            raise RunAborted(f"training run {run_id} is {run.status.value} ({run.error}); stopping")
        for k, v in fields.items():
            setattr(run, k, v)
        session.add(run)
        session.commit()


class _Heartbeat:
    """Touches ``TrainingRun.heartbeat_at`` every few seconds while a run executes."""

    def __init__(self, engine: Engine, run_id: int, every: float = HEARTBEAT_SECONDS) -> None:
        self.engine, self.run_id, self.every = engine, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                _update_run(self.engine, self.run_id, heartbeat_at=utcnow())
            except RunAborted:
                return
            except Exception:  # a missed beat is logged and retried; the run itself goes on
                logger.warning("heartbeat for run %s failed", self.run_id, exc_info=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_is_dead(worker_id: str | None, heartbeat_at, stale_after: float) -> bool:
    """True when the worker that owns a running run is certainly gone."""
    if worker_id:
        parts = worker_id.split(":")
        if len(parts) >= 2 and parts[0] == socket.gethostname() and parts[1].isdigit():
            if int(parts[1]) == os.getpid():
                return worker_id not in LIVE_WORKERS
            return not _pid_alive(int(parts[1]))
    if heartbeat_at is None:
        return True
    return (utcnow() - heartbeat_at).total_seconds() > stale_after


def recover_interrupted_runs(settings: Settings, engine: Engine, *, stale_after: float = STALE_AFTER_SECONDS) -> list[int]:
    """Mark runs whose worker died as failed, their unjudged adapter rows rejected; clean temp dirs.

    A run is taken as dead when its worker ran on this host and that process is gone, or when its
    heartbeat is older than ``stale_after`` seconds. Nothing that was active changes: users keep
    being served their last promoted adapter. Returns the ids of the runs marked failed.
    """
    with Session(engine) as session:
        running = session.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.running)).all()
        dead = [(run.id, run.worker_id, run.progress) for run in running
                if _owner_is_dead(run.worker_id, run.heartbeat_at, stale_after)]
    failed: list[int] = []
    for run_id, worker_id, progress in dead:
        fail_run(engine, run_id, f"interrupted: worker {worker_id or 'unknown'} stopped while the run was at "
                                 f"{progress:.0%} (process killed or restarted); nothing it left half-done is served. "
                                 "Queue a new run to retry.")
        failed.append(run_id)
    if failed:
        logger.warning("marked interrupted training runs %s as failed", failed)
    _clean_tmp(settings.adapters_dir / ".tmp", older_than=stale_after)
    _remove_orphan_dirs(settings, engine)
    return failed


def _remove_orphan_dirs(settings: Settings, engine: Engine) -> None:
    """Remove version directories without a row (a kill between rename and insert); none is ever served.

    Skipped while any run is executing, since a live publish has exactly such a directory for a moment.
    """
    root = settings.adapters_dir
    if not root.exists():
        return
    with Session(engine) as session:
        if session.exec(select(TrainingRun.id).where(TrainingRun.status == RunStatus.running)).first() is not None:
            return
        known = set(session.exec(select(AdapterVersion.path)).all())
    for path in root.glob("*/v*"):
        rel = f"{path.parent.name}/{path.name}"
        if path.is_dir() and not path.parent.name.startswith(".") and rel not in known:
            logger.warning("removing adapter directory %s: no database row points at it (a publish was interrupted)", rel)
            shutil.rmtree(path, ignore_errors=True)


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    """Mark a running run failed, its unfinished results failed and its unjudged adapter rows rejected."""
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status != RunStatus.running:
            return
        run.status, run.error, run.finished_at = RunStatus.failed, error, utcnow()
        session.add(run)
        for result in session.exec(select(TrainingResult).where(TrainingResult.run_id == run_id)).all():
            if result.status in (RunStatus.queued, RunStatus.running):
                result.status = RunStatus.failed
                result.reason = "run interrupted before this adapter was judged"
                result.finished_at = utcnow()
                session.add(result)
        for version in session.exec(select(AdapterVersion).where(AdapterVersion.training_run_id == run_id,
                                                                 AdapterVersion.status == AdapterStatus.candidate)).all():
            version.status = AdapterStatus.rejected
            version.reason = "run interrupted before the gate's verdict was recorded"
            session.add(version)
        session.commit()


def _clean_tmp(tmp: Path, older_than: float) -> None:
    """Remove half-written adapter directories a killed run left (never served: no row points there)."""
    if not tmp.exists():
        return
    cutoff = time.time() - older_than
    for entry in tmp.iterdir():
        if entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


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
    """Execute a claimed ``TrainingRun``; on error it is marked failed with the message, then re-raised."""
    budgets = budgets or Budgets.from_env()
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status != RunStatus.running:
            raise RunNotClaimed(f"training run {run_id} is {run.status.value if run else 'missing'}; "
                                "claim it first (learning.worker.claim_run) so no other worker runs it too")
        requested = list(run.user_ids) if run.user_ids is not None else None

    def progress(fraction: float, message: str) -> None:
        _update_run(engine, run_id, progress=round(min(max(fraction, 0.0), 1.0), 4), heartbeat_at=utcnow())
        logger.info("run %s: %3.0f%% %s", run_id, 100 * fraction, message)
        if progress_cb is not None:
            progress_cb(fraction, message)

    try:
        with _Heartbeat(engine, run_id):
            _execute(settings, engine, run_id, requested, budgets, progress)
    except RunAborted:
        logger.warning("training run %s was aborted from outside; nothing more is published", run_id)
        raise
    except BaseException as exc:
        fail_run(engine, run_id, f"{type(exc).__name__}: {exc}")
        logger.exception("training run %s failed", run_id)
        raise
    _update_run(engine, run_id, status=RunStatus.succeeded, progress=1.0, finished_at=utcnow())
    if progress_cb is not None:
        progress_cb(1.0, "done")


def _execute(settings: Settings, engine: Engine, run_id: int, requested: list[int] | None, budgets: Budgets,
             progress: ProgressCallback) -> None:
    import torch

    from service.model_loading import base_model_hash, load_base_model, load_tokenizer

    from learning.harm import HarmModel, judge_flagger, make_judge
    from learning.ppo import lora_state, make_policy
    from learning.reward import FeatureCache, RewardModel

    judge = make_judge(budgets.harm_judge)  # fails early on an unknown name
    progress(0.0, "loading the base model")
    tokenizer = load_tokenizer(settings)
    base = load_base_model(settings, dtype=torch.float32)
    render = chat_renderer(tokenizer)

    # 1. snapshot: exactly which feedback this run learns from
    with Session(engine) as session:
        flags = judge_flagger(judge, budgets.harm_judge_threshold) if judge is not None else None
        full = build_dataset(session, render, budgets, judge_flags=flags)
        if full.label_count() == 0:
            raise ValueError("no ratings or rankings to learn from yet; rate some replies first")
        pool = shared_pool(full, budgets)
        snapshot = save_snapshot(session, full, run_id=run_id, extra={"pool_labels": pool.label_count()})
    progress(0.05, f"snapshot {snapshot.sha256[:12]}: {full.stats['pairs']} pairs, {full.stats['points']} thumbs")

    # 2. reward and harm models on frozen backbone features
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
    progress(0.2, f"reward model: held-out accuracy {reward_metrics.get('reward/heldout_accuracy')} "
                  f"(longer-wins {reward_metrics.get('reward/length_baseline_accuracy')})")

    # 3. which adapters to train: the global one on full runs, then each user with enough labels
    scopes: list[int | None] = []
    if requested is None and pool.label_count() >= budgets.min_global_labels:
        scopes.append(None)
    candidates = requested if requested is not None else full.user_ids()
    skipped: dict[int, str] = {}
    for user_id in candidates:
        n = full.label_count(user_id)
        if n >= budgets.min_user_labels and user_id in reward.user_heads:
            scopes.append(user_id)
        else:
            skipped[user_id] = (f"skipped: {n} labels, a personal adapter needs {budgets.min_user_labels} "
                                "(ASSISTANT_MIN_USER_LABELS); served the global adapter meanwhile")
    with Session(engine) as session:
        for user_id, reason in skipped.items():
            session.add(TrainingResult(run_id=run_id, user_id=user_id, status=RunStatus.succeeded, reason=reason,
                                       metrics=reward.user_metrics(user_id), finished_at=utcnow()))
        session.commit()

    policy = make_policy(base, budgets)
    fresh = lora_state(policy)
    ctx = _Context(settings, engine, run_id, budgets, tokenizer, render, policy, fresh, reward, harm, full, snapshot,
                   base_model_hash(settings))
    for i, user_id in enumerate(scopes):
        lo, hi = 0.2 + 0.8 * i / len(scopes), 0.2 + 0.8 * (i + 1) / len(scopes)

        def scope_progress(step: int, total: int, _m: dict, lo=lo, hi=hi, user_id=user_id) -> None:
            progress(lo + (hi - lo) * 0.8 * step / total, f"{adapter_store.scope_of(user_id)}: PPO step {step}/{total}")

        _train_scope(ctx, user_id, scope_progress)
        progress(hi, f"{adapter_store.scope_of(user_id)} done")


@dataclasses.dataclass
class _Context:
    settings: Settings
    engine: Engine
    run_id: int
    budgets: Budgets
    tokenizer: Any
    render: Any
    policy: Any
    fresh_state: dict
    reward: Any
    harm: Any
    full: Dataset
    snapshot: Any
    base_hash: str


def _start_adapter(ctx: _Context, user_id: int | None) -> AdapterVersion | None:
    """The last promoted adapter serving this scope: the user's own, else the global one."""
    with Session(ctx.engine) as session:
        row = adapter_store.active_version(session, user_id)
        if row is None and user_id is not None:
            row = adapter_store.active_version(session, None)
        return row


def _load_start(ctx: _Context, row: AdapterVersion | None) -> str:
    from learning.ppo import load_adapter_dir, load_lora_state

    load_lora_state(ctx.policy, ctx.fresh_state)
    if row is None:
        return "fresh"
    path = ctx.settings.adapters_dir / row.path
    meta_path = path / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("base_model_hash") not in (None, ctx.base_hash):
        logger.warning("adapter %s was trained on another base model; starting fresh", adapter_store.label_of(row))
        return "fresh"
    try:
        load_adapter_dir(ctx.policy, path)
    except ValueError as exc:
        logger.warning("cannot start from %s (%s); starting fresh", adapter_store.label_of(row), exc)
        load_lora_state(ctx.policy, ctx.fresh_state)
        return "fresh"
    return adapter_store.label_of(row)


def _prompts_for(ctx: _Context, user_id: int | None) -> tuple[list[str], list[str]]:
    """(training prompts, held-out gate prompts): the user's own recent prompts plus the shared pool."""
    shared_train, shared_gate = split_shared_prompts(ctx.render)
    with Session(ctx.engine) as session:
        if user_id is None:
            user_ids = session.exec(select(User.id)).all()
            own = [p for uid in user_ids for p in recent_prompts(session, ctx.render, uid, 10)]
        else:
            own = recent_prompts(session, ctx.render, user_id, 50)
    own = list(dict.fromkeys(own))
    own_gate = [p for p in own if int(hashlib.sha256(p.encode()).hexdigest()[:2], 16) < 64]  # ~1/4 held out
    own_train = [p for p in own if p not in own_gate]
    gate = (own_gate + shared_gate)[: ctx.budgets.gate_prompts]
    return own_train + shared_train, gate


def _train_scope(ctx: _Context, user_id: int | None, progress: Callable[[int, int, dict], None]) -> ScopeOutcome:
    from learning.gate import decide, evaluate_policy
    from learning.ppo import lora_state, load_lora_state, train_ppo

    budgets = dataclasses.replace(ctx.budgets, seed=ctx.budgets.seed + (user_id or 0))
    scope = adapter_store.scope_of(user_id)
    with Session(ctx.engine) as session:
        result = TrainingResult(run_id=ctx.run_id, user_id=user_id, status=RunStatus.running)
        session.add(result)
        session.commit()
        session.refresh(result)
    head = ctx.reward.head_for(user_id)

    def scorer(feats, texts):
        return head(feats), ctx.harm.prob(feats, texts)

    started = time.monotonic()
    start_row = _start_adapter(ctx, user_id)
    started_from = _load_start(ctx, start_row)
    train_prompts, gate_prompts = _prompts_for(ctx, user_id)

    # The gate's yardsticks: the base, and what serves this scope now (the start adapter).
    base_eval = evaluate_policy(ctx.policy, ctx.tokenizer, gate_prompts, scorer, budgets, reference=True)
    current_eval = base_eval if start_row is None else evaluate_policy(ctx.policy, ctx.tokenizer, gate_prompts, scorer, budgets)

    ppo = train_ppo(ctx.policy, ctx.tokenizer, scorer, train_prompts, budgets, progress=progress)
    candidate_eval = evaluate_policy(ctx.policy, ctx.tokenizer, gate_prompts, scorer, budgets)
    decision = decide(candidate_eval, current_eval, base_eval, budgets)
    wall_s = time.monotonic() - started

    metrics: dict[str, Any] = {
        **ppo.final,
        **candidate_eval.as_metrics("gate/candidate"),
        **current_eval.as_metrics("gate/current"),
        **base_eval.as_metrics("gate/base"),
        **ctx.reward.user_metrics(user_id),
        **{k: v for k, v in ctx.harm.metrics.items()},
        "ppo/steps": ppo.steps,
        "time/ppo_s": round(ppo.wall_s, 2),
        "time/total_s": round(wall_s, 2),
        "started_from": started_from,
        "train_prompts": len(train_prompts),
        "gate_prompts": len(gate_prompts),
    }
    metadata = {
        "run_id": ctx.run_id,
        "scope": scope,
        "snapshot": {"id": ctx.snapshot.id, "sha256": ctx.snapshot.sha256, "feedback_ids": ctx.snapshot.feedback_ids,
                     "ranking_ids": ctx.snapshot.ranking_ids},
        "base_model": ctx.settings.model,
        "base_model_hash": ctx.base_hash,
        "code_version": code_version(),
        "budgets": ctx.budgets.as_dict(),
        "started_from": started_from,
        "metrics": metrics,
        "decision": decision.reason,
        "created_at": utcnow().isoformat(),
    }
    _update_run(ctx.engine, ctx.run_id, heartbeat_at=utcnow())  # raises RunAborted: publish nothing for a dead run
    candidate_state = lora_state(ctx.policy)
    work = ctx.settings.adapters_dir / ".tmp" / f"run-{ctx.run_id}-{scope.replace(':', '-')}"
    if work.exists():
        shutil.rmtree(work)
    ctx.policy.save_pretrained(str(work))  # adapter_config.json + adapter_model.safetensors
    try:
        with Session(ctx.engine, expire_on_commit=False) as session:
            row = adapter_store.publish(ctx.settings, session, user_id=user_id, src_dir=work, metadata=metadata,
                                        training_run_id=ctx.run_id, status=AdapterStatus.candidate, metrics=metrics,
                                        reason=decision.reason)
            # The verdict, the result row and the activation land in one commit.
            row.status = AdapterStatus.promoted if decision.promote else AdapterStatus.rejected
            session.add(row)
            res = session.get(TrainingResult, result.id)
            res.status, res.adapter_version_id, res.promoted = RunStatus.succeeded, row.id, decision.promote
            res.reason, res.metrics, res.finished_at = decision.reason, metrics, utcnow()
            session.add(res)
            if decision.promote:
                adapter_store.activate(session, user_id=user_id, version_id=row.id)  # commits
            else:
                session.commit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_lora_state(ctx.policy, candidate_state)
    logger.info("%s: %s (%d PPO steps, %.0fs)", scope, decision.reason, ppo.steps, wall_s)
    return ScopeOutcome(user_id, row, decision.promote, decision.reason, metrics)
