"""The database queue of training runs and their jobs: every operation on it, in one place.

A run's rows (``TrainingRun``) and its jobs (``TrainingResult``, one per adapter) are the queue
that workers on any machine share. Here: worker identity (``new_worker_id``: host, pid, process
start, pid namespace, so recovery can tell a dead local worker from a live remote one), claiming a
job with one conditional UPDATE (``claim_job``), heartbeats and progress, ending a run once its
last job ends (``finish_run_if_done``), failing a job or a run, recovering the runs and jobs of dead
workers (``recover_interrupted_runs``) and cleaning what they left in the adapter store.
``learning.pipeline`` trains; ``learning.worker`` schedules and polls.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select as sa_select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from service import adapter_store
from service.models import AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, pk, utcnow
from service.settings import Settings

logger = logging.getLogger(__name__)

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


# --- run and job bookkeeping -------------------------------------------------------------------


class RunAborted(RuntimeError):
    """The run or job row left the "running" state under us (a stopped worker or recovery failed it)."""


def update_run(engine: Engine, run_id: int, **fields: Any) -> None:
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


def update_job(engine: Engine, job_id: int, worker_id: str, **fields: Any) -> None:
    """Update a job this worker holds; raises RunAborted if it is no longer running under ``worker_id``."""
    with Session(engine) as session:
        job = session.get(TrainingResult, job_id)
        if job is None:
            raise LookupError(f"training job {job_id} vanished from the database")
        if job.status != RunStatus.running or job.worker_id != worker_id:
            raise RunAborted(f"training job {job_id} ({adapter_store.Scope(job.user_id).key}) is {job.status.value} "
                             f"under {job.worker_id} ({job.reason}); stopping")
        for k, v in fields.items():
            setattr(job, k, v)
        session.add(job)
        session.commit()


class Heartbeat:
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

    def __enter__(self) -> "Heartbeat":
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
                 .join(TrainingRun, col(TrainingRun.id) == TrainingResult.run_id)
                 .where(TrainingResult.status == RunStatus.queued, TrainingRun.status == RunStatus.running))
        if run_id is not None:
            query = query.where(TrainingResult.run_id == run_id)
        candidates = session.exec(query.order_by(col(TrainingResult.run_id), col(TrainingResult.user_id).is_not(None),
                                                 col(TrainingResult.id))).all()
    other = aliased(TrainingResult)
    for job_id, job_run, user_id in candidates:
        now = utcnow()
        stmt = update(TrainingResult).where(col(TrainingResult.id) == job_id, col(TrainingResult.status) == RunStatus.queued)
        if user_id is not None:
            stmt = stmt.where(~exists(sa_select(col(other.id)).where(
                col(other.run_id) == job_run, col(other.user_id).is_(None),
                col(other.status).in_([RunStatus.queued, RunStatus.running]))))
        stmt = stmt.values(status=RunStatus.running, worker_id=worker_id, started_at=now, heartbeat_at=now, progress=0.0)
        with engine.begin() as conn:
            claimed = conn.execute(stmt).rowcount == 1
        if claimed:
            logger.info("worker %s took job %s (run %s, %s)", worker_id, job_id, job_run, adapter_store.Scope(user_id).key)
            return job_id
    return None


def refresh_run_progress(engine: Engine, run_id: int) -> float:
    """Recompute a running run's progress from its jobs and store it; returns it."""
    with Session(engine) as session:
        jobs = session.exec(select(TrainingResult).where(TrainingResult.run_id == run_id)).all()
        done = sum(1.0 if j.status in DONE else j.progress for j in jobs)
        fraction = round(SHARED_SHARE + (1 - SHARED_SHARE) * done / max(len(jobs), 1), 4)
    with engine.begin() as conn:
        conn.execute(update(TrainingRun).where(col(TrainingRun.id) == run_id, col(TrainingRun.status) == RunStatus.running)
                     .values(progress=fraction))
    return fraction


def finish_run_if_done(settings: Settings, engine: Engine, run_id: int) -> RunStatus | None:
    """End a running run whose every job has finished; returns the status it got, None if not (yet) ended here.

    Any worker may call it after any job: the conditional UPDATE ends the run exactly once.
    """
    with Session(engine) as session:
        jobs = session.exec(select(TrainingResult).where(TrainingResult.run_id == run_id).order_by(col(TrainingResult.id))).all()
        if not jobs or any(j.status not in DONE for j in jobs):
            return None
        failed = [j for j in jobs if j.status == RunStatus.failed]
        error = "; ".join(f"{adapter_store.Scope(j.user_id).key}: {j.reason}" for j in failed) or None
    status = RunStatus.failed if failed else RunStatus.succeeded
    with engine.begin() as conn:
        ended = conn.execute(update(TrainingRun)
                             .where(col(TrainingRun.id) == run_id, col(TrainingRun.status) == RunStatus.running)
                             .values(status=status, error=error, progress=1.0, finished_at=utcnow())).rowcount == 1
    if not ended:
        return None
    shared_path(settings, run_id).unlink(missing_ok=True)
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
                adapter_store.Scope(job.user_id).where(AdapterVersion.user_id))).all():
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
            col(TrainingResult.run_id).in_([r.id for r in running]))).all())
        dead_runs = [(pk(run), run.worker_id, run.progress) for run in running
                     if run.id not in with_jobs and _owner_is_dead(run.worker_id, run.heartbeat_at, stale_after)]
        dead_jobs = [(pk(job), job.run_id, job.user_id, job.worker_id, job.progress) for job in session.exec(
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
            f"interrupted: worker {worker_id or 'unknown'} stopped while training {adapter_store.Scope(user_id).key} at "
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


def shared_path(settings: Settings, run_id: int) -> Path:
    return settings.adapters_dir / ".runs" / f"run-{run_id}.json"
