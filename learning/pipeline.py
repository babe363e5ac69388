"""One training run, start to finish, split into jobs so several workers can share it:

    shared stage (once per run):  snapshot -> reward + harm models -> one job row per adapter
    jobs (any worker, any order):  global adapter first, then per-user PPO -> gate -> publish

The worker that claims a run (``learning.worker.claim_run``) runs the shared stage
(``run_shared_stage``): it freezes the snapshot, fits the reward and harm models, writes their
heads to ``<adapters>/.runs/run-<id>.json`` (the adapter store is what workers share besides the
database) and, in one commit, creates a ``TrainingResult`` row per scope: "queued" for each
adapter to train, "succeeded" with the reason for users skipped for too few labels. Those queued
rows are the jobs. Every worker then takes jobs with one conditional UPDATE (``claim_job``:
``status='queued'`` -> ``'running'``, with its ``worker_id``; the row count says who won), so each
adapter is trained exactly once. A user job is claimable only once the run's global job has
finished, so users without an adapter of their own start from the global adapter this very run
promoted (as when one process trained them in order). The run's progress is
``0.2 + 0.8 * (finished jobs + fractions of running ones) / jobs``; whichever worker finishes
the last job ends the run, "failed" (with each failed scope's reason) if any job failed, else
"succeeded". ``run_training`` does all of it in one process (``assistant train --now``).

Crash safety: an adapter reaches users only through ``service.adapter_store.publish``
(temporary directory, fsync, rename, then the row) followed by one commit that records the
gate's verdict and flips ``ActiveAdapter``. A worker killed at any moment (kill -9) leaves at
most an unserved directory or a "candidate" row. ``recover_interrupted_runs`` (every worker
start and poll) marks a job whose worker died *failed* with the reason -- it is not retried:
retrying would train on data the next run snapshots anyway, and the user keeps being served
their last promoted adapter meanwhile -- rejects its candidate rows, ends the run once no job is
left, and fails a run whose worker died during the shared stage.
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
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import exists, select as sa_select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from service import adapter_store
from service.models import (AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, TrainingSnapshot, User,
                            utcnow)
from service.settings import Settings

from learning.config import Budgets
from learning.data import chat_renderer, pooled_prompts, recent_prompts, save_snapshot, shared_view, split_shared_prompts

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0
SHARED_SHARE = 0.2  # of a run's progress: the shared stage; the jobs share the rest
DONE = (RunStatus.succeeded, RunStatus.failed)


class RunNotClaimed(RuntimeError):
    """run_training was given a run that is not in the "running" state."""


class RunFailed(RuntimeError):
    """The run ended "failed"; the message is its error (each failed scope and why)."""


# Worker ids of the workers alive in this process (a stopped worker's id is removed).
LIVE_WORKERS: set[str] = set()


def new_worker_id() -> str:
    """host:pid:start:random:pid-namespace, so recovery can tell a dead local worker from a live
    remote one, a reused pid (a restarted container numbers its processes again) from the worker
    that had it, and a worker in another container with the same hostname and pid (PID 1 twice,
    an explicit ``hostname:``) from this one: its pid means nothing here, only its heartbeat does."""
    return (f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid()) or 0}:{os.urandom(3).hex()}:"
            f"{_pid_namespace()}")


def _pid_namespace() -> str:
    """This process's pid namespace (its inode number), or "0" where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid").rsplit("[", 1)[-1].rstrip("]")
    except OSError:
        return "0"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (/proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


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


# --- run and job bookkeeping -------------------------------------------------------------------


class RunAborted(RuntimeError):
    """The run or job row left the "running" state under us (a stopped worker or recovery failed it)."""


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


def _update_job(engine: Engine, job_id: int, worker_id: str, **fields: Any) -> None:
    """Update a job this worker holds; raises RunAborted if it is no longer running under ``worker_id``."""
    with Session(engine) as session:
        job = session.get(TrainingResult, job_id)
        if job is None:
            raise LookupError(f"training job {job_id} vanished from the database")
        if job.status != RunStatus.running or job.worker_id != worker_id:
            raise RunAborted(f"training job {job_id} ({adapter_store.scope_of(job.user_id)}) is {job.status.value} "
                             f"under {job.worker_id} ({job.reason}); stopping")
        for k, v in fields.items():
            setattr(job, k, v)
        session.add(job)
        session.commit()


class _Heartbeat:
    """Calls ``beat`` every few seconds (touching a run's or job's ``heartbeat_at``) until closed."""

    def __init__(self, beat: Callable[[], None], name: str, every: float = HEARTBEAT_SECONDS) -> None:
        self.beat, self.name, self.every = beat, name, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{name}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except RunAborted:
                return
            except Exception:  # a missed beat is logged and retried; the work itself goes on
                logger.warning("heartbeat for %s failed", self.name, exc_info=True)

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
    """True when the worker that owns a running run or job is certainly gone."""
    if worker_id:
        parts = worker_id.split(":")
        same_namespace = len(parts) < 5 or parts[4] == _pid_namespace()  # ids from before: assume this one
        if len(parts) >= 2 and parts[0] == socket.gethostname() and parts[1].isdigit() and same_namespace:
            if int(parts[1]) == os.getpid():
                return worker_id not in LIVE_WORKERS
            if not _pid_alive(int(parts[1])):
                return True
            started = _process_start(int(parts[1]))  # alive: the same process, or a new one with its pid?
            return len(parts) >= 4 and started is not None and parts[2] != started
    if heartbeat_at is None:
        return True
    return (utcnow() - heartbeat_at).total_seconds() > stale_after


def claim_job(engine: Engine, worker_id: str, *, run_id: int | None = None) -> int | None:
    """Take one queued job (of ``run_id``, or of any running run) for ``worker_id``; None if none is free.

    Exactly once across workers: one conditional UPDATE (``status='queued'`` -> ``'running'``) per
    candidate, and only the caller whose UPDATE changed the row (row count 1) has it -- on SQLite
    the write lock serialises them, on PostgreSQL the loser re-reads the committed row and no
    longer matches. The global job comes first; a user job is held back while its run's global
    job is still queued or running, so it starts from the global adapter this run promoted.
    """
    with Session(engine) as session:
        query = (select(TrainingResult.id, TrainingResult.run_id, TrainingResult.user_id)
                 .join(TrainingRun, TrainingRun.id == TrainingResult.run_id)
                 .where(TrainingResult.status == RunStatus.queued, TrainingRun.status == RunStatus.running))
        if run_id is not None:
            query = query.where(TrainingResult.run_id == run_id)
        candidates = session.exec(query.order_by(TrainingResult.run_id, TrainingResult.user_id.is_not(None),
                                                 TrainingResult.id)).all()
    other = aliased(TrainingResult)
    for job_id, job_run, user_id in candidates:
        now = utcnow()
        stmt = update(TrainingResult).where(TrainingResult.id == job_id, TrainingResult.status == RunStatus.queued)
        if user_id is not None:
            stmt = stmt.where(~exists(sa_select(other.id).where(
                other.run_id == job_run, other.user_id.is_(None), other.status.in_([RunStatus.queued, RunStatus.running]))))
        stmt = stmt.values(status=RunStatus.running, worker_id=worker_id, started_at=now, heartbeat_at=now, progress=0.0)
        with engine.begin() as conn:
            claimed = conn.execute(stmt).rowcount == 1
        if claimed:
            logger.info("worker %s took job %s (run %s, %s)", worker_id, job_id, job_run, adapter_store.scope_of(user_id))
            return job_id
    return None


def _refresh_run_progress(engine: Engine, run_id: int) -> float:
    """Recompute a running run's progress from its jobs and store it; returns it."""
    with Session(engine) as session:
        jobs = session.exec(select(TrainingResult).where(TrainingResult.run_id == run_id)).all()
        done = sum(1.0 if j.status in DONE else j.progress for j in jobs)
        fraction = round(SHARED_SHARE + (1 - SHARED_SHARE) * done / max(len(jobs), 1), 4)
    with engine.begin() as conn:
        conn.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.running)
                     .values(progress=fraction))
    return fraction


def finish_run_if_done(settings: Settings, engine: Engine, run_id: int) -> RunStatus | None:
    """End a running run whose every job has finished; returns the status it got, None if not (yet) ended here.

    Any worker may call it after any job: the conditional UPDATE ends the run exactly once.
    """
    with Session(engine) as session:
        jobs = session.exec(select(TrainingResult).where(TrainingResult.run_id == run_id).order_by(TrainingResult.id)).all()
        if not jobs or any(j.status not in DONE for j in jobs):
            return None
        failed = [j for j in jobs if j.status == RunStatus.failed]
        error = "; ".join(f"{adapter_store.scope_of(j.user_id)}: {j.reason}" for j in failed) or None
    status = RunStatus.failed if failed else RunStatus.succeeded
    with engine.begin() as conn:
        ended = conn.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.running)
                             .values(status=status, error=error, progress=1.0, finished_at=utcnow())).rowcount == 1
    if not ended:
        return None
    _shared_path(settings, run_id).unlink(missing_ok=True)
    logger.info("training run %s %s (%d jobs, %d failed)", run_id, status.value, len(jobs), len(failed))
    return status


def fail_job(settings: Settings, engine: Engine, job_id: int, reason: str, *, worker_id: str | None = None) -> RunStatus | None:
    """Mark a running job failed (only while ``worker_id`` holds it, if given) and reject its unjudged
    adapter rows; then end its run if that was the last job. Returns the run's new status, if it ended."""
    with Session(engine) as session:
        job = session.get(TrainingResult, job_id)
        if job is None or job.status != RunStatus.running or (worker_id is not None and job.worker_id != worker_id):
            return None
        job.status, job.reason, job.finished_at = RunStatus.failed, reason, utcnow()
        session.add(job)
        for version in session.exec(select(AdapterVersion).where(
                AdapterVersion.training_run_id == job.run_id, AdapterVersion.status == AdapterStatus.candidate,
                AdapterVersion.user_id.is_(None) if job.user_id is None else AdapterVersion.user_id == job.user_id)).all():
            version.status = AdapterStatus.rejected
            version.reason = "job interrupted before the gate's verdict was recorded"
            session.add(version)
        run_id = job.run_id
        session.commit()
    return finish_run_if_done(settings, engine, run_id)


def recover_interrupted_runs(settings: Settings, engine: Engine, *, stale_after: float = STALE_AFTER_SECONDS) -> list[int]:
    """Fail jobs and runs whose worker died, reject their unjudged adapter rows; clean temp dirs.

    A worker is taken as dead when it ran on this host and that process is gone, or when its
    heartbeat is older than ``stale_after`` seconds. A dead job is failed with the reason, not
    re-queued (see the module docstring); a run whose worker died during the shared stage (no job
    rows yet) is failed. Nothing that was active changes: users keep being served their last
    promoted adapter. Returns the ids of the runs that ended failed here.
    """
    with Session(engine) as session:
        running = session.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.running)).all()
        with_jobs = set(session.exec(select(TrainingResult.run_id).where(
            TrainingResult.run_id.in_([r.id for r in running]))).all())
        dead_runs = [(run.id, run.worker_id, run.progress) for run in running
                     if run.id not in with_jobs and _owner_is_dead(run.worker_id, run.heartbeat_at, stale_after)]
        dead_jobs = [(job.id, job.run_id, job.user_id, job.worker_id, job.progress) for job in session.exec(
            select(TrainingResult).where(TrainingResult.status == RunStatus.running)).all()
            if _owner_is_dead(job.worker_id, job.heartbeat_at, stale_after)]
    failed: list[int] = []
    for run_id, worker_id, progress in dead_runs:
        fail_run(engine, run_id, f"interrupted: worker {worker_id or 'unknown'} stopped while the run was at "
                                 f"{progress:.0%} (process killed or restarted); nothing it left half-done is served. "
                                 "Queue a new run to retry.")
        failed.append(run_id)
    for job_id, run_id, user_id, worker_id, progress in dead_jobs:
        ended = fail_job(settings, engine, job_id, worker_id=worker_id, reason=(
            f"interrupted: worker {worker_id or 'unknown'} stopped while training {adapter_store.scope_of(user_id)} at "
            f"{progress:.0%} (process killed or restarted); not retried, the last promoted adapter keeps serving. "
            "Queue a new run to retry."))
        if ended == RunStatus.failed:
            failed.append(run_id)
    for run_id in with_jobs:  # a worker that died between its run's last job and ending the run
        if finish_run_if_done(settings, engine, run_id) == RunStatus.failed:
            failed.append(run_id)
    if failed:
        logger.warning("marked interrupted training runs %s as failed", failed)
    _clean_tmp(settings.adapters_dir / ".tmp", older_than=stale_after)
    _remove_orphan_dirs(settings, engine)
    return sorted(set(failed))


def _remove_orphan_dirs(settings: Settings, engine: Engine) -> None:
    """Remove version directories that a failed run left without a row (a kill between rename and
    insert) and the shared files of runs that ended; none is ever served.

    Only a directory whose metadata names a run this database knows as failed is removed: a worker
    pointed at an empty or older database must not delete a store it does not know (issue 12,
    finding 10); such directories are logged as an error and kept. Skipped while any run is
    executing, since a live publish has exactly such a directory for a moment.
    """
    root = settings.adapters_dir
    if not root.exists():
        return
    with Session(engine) as session:
        if session.exec(select(TrainingRun.id).where(TrainingRun.status == RunStatus.running)).first() is not None:
            return
        known = set(session.exec(select(AdapterVersion.path)).all())
        failed_runs = set(session.exec(select(TrainingRun.id).where(TrainingRun.status == RunStatus.failed)).all())
    unknown = []
    for path in root.glob("*/v*"):
        rel = f"{path.parent.name}/{path.name}"
        if not path.is_dir() or path.parent.name.startswith(".") or rel in known:
            continue
        if _written_by(path) in failed_runs:
            logger.warning("removing adapter directory %s: its run failed before a database row pointed at it", rel)
            shutil.rmtree(path, ignore_errors=True)
        else:
            unknown.append(rel)
    if unknown:
        logger.error("the adapter store at %s holds %d version(s) this database does not know (%s); kept. Is this "
                     "worker using the right database (ASSISTANT_DATABASE_URL)?", root, len(unknown), ", ".join(unknown[:5]))
    for path in (root / ".runs").glob("run-*.json"):
        path.unlink(missing_ok=True)


def _written_by(version_dir: Path) -> int | None:
    """The training run recorded in a version directory's metadata.json, if any."""
    try:
        run_id = json.loads((version_dir / "metadata.json").read_text()).get("training_run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, int) else None


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    """Mark a running run failed, its unfinished jobs failed and its unjudged adapter rows rejected."""
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


# --- what the shared stage hands to the jobs -------------------------------------------------------


def _shared_path(settings: Settings, run_id: int) -> Path:
    return settings.adapters_dir / ".runs" / f"run-{run_id}.json"


def _load_shared(settings: Settings, run_id: int, budgets: Budgets):
    """The ``SharedModels`` the shared stage fitted; they score features, never compute them."""
    from learning.shared import SharedModels

    path = _shared_path(settings, run_id)
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
        _update_run(engine, run_id, progress=round(min(max(fraction, 0.0), 1.0), 4), heartbeat_at=utcnow())
        logger.info("run %s: %3.0f%% %s", run_id, 100 * fraction, message)
        if progress_cb is not None:
            progress_cb(fraction, message)

    try:
        with _Heartbeat(lambda: _update_run(engine, run_id, heartbeat_at=utcnow()), f"run-{run_id}"):
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
        _update_run(engine, run_id, status=RunStatus.succeeded, progress=1.0, finished_at=utcnow())
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
                 training_pairs(full, budgets.heldout_fraction), excluded).save(_shared_path(settings, run_id))
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
        else:
            skipped[user_id] = (f"skipped: {n} labels, a personal adapter needs {budgets.min_user_labels} "
                                "(ASSISTANT_MIN_USER_LABELS); served the global adapter meanwhile")
    _update_run(engine, run_id, heartbeat_at=utcnow())  # raises RunAborted: queue nothing for a stopped run
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
                ", ".join(adapter_store.scope_of(u) for u in scopes), len(skipped))


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
    scope = adapter_store.scope_of(user_id)

    def scope_progress(step: int, total: int, _m: dict) -> None:
        _update_job(engine, job_id, worker_id, progress=round(0.8 * step / total, 4), heartbeat_at=utcnow())
        fraction = _refresh_run_progress(engine, run_id)
        logger.info("run %s: %3.0f%% %s: PPO step %d/%d", run_id, 100 * fraction, scope, step, total)
        if progress_cb is not None:
            progress_cb(fraction, f"{scope}: PPO step {step}/{total}")

    status = RunStatus.failed
    try:
        with _Heartbeat(lambda: _update_job(engine, job_id, worker_id, heartbeat_at=utcnow()), f"job-{job_id}"):
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
    fraction = _refresh_run_progress(engine, run_id)
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
    scope = adapter_store.scope_of(user_id)
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
                labels=ctx.shared.heldout.get(user_id) if user_id is not None else None)
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
    _update_job(ctx.engine, ctx.job_id, ctx.worker_id, heartbeat_at=utcnow())
    candidate_state = lora_state(policy)
    work = ctx.settings.adapters_dir / ".tmp" / f"run-{ctx.run_id}-{scope.replace(':', '-')}"
    if work.exists():
        shutil.rmtree(work)
    ctx.models.policy.save_pretrained(str(work))  # adapter_config.json + adapter_model.safetensors
    serving_reward = reward.reply_reward(user_id)
    if serving_reward is not None:  # what serving's personal best-of-n chooses by (service.reply_reward)
        serving_reward.save(work)
    try:
        with Session(ctx.engine, expire_on_commit=False) as session:
            row = adapter_store.publish(ctx.settings, session, user_id=user_id, src_dir=work, metadata=metadata,
                                        training_run_id=ctx.run_id, status=AdapterStatus.candidate, metrics=metrics,
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
