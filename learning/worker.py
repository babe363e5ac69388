"""The training worker: a nightly schedule that queues runs, and a poller that executes them.

Three ways to run it (all share ``Worker``):

- ``run_worker(settings)``: a dedicated process (``assistant worker``), blocks until SIGTERM/SIGINT.
- ``start_embedded_worker(settings)``: the same in a background thread of ``assistant serve``
  (returns a handle with ``.stop()``).
- ``train_foreground(settings, user=None, now=True)``: ``assistant train [--user NAME] [--now]``,
  one run in this process with a progress bar.

The database is the queue, at two levels. Runs: exactly one run executes at a time across all
processes sharing the database; a run is taken with one conditional UPDATE (``status='queued'``
-> ``'running'`` only if no run is running), and the caller checks the row count. On PostgreSQL
the UPDATE also holds a transaction-level advisory lock, so two workers cannot each claim a
different run at the same instant. The worker that claims a run does its shared stage
(snapshot, reward and harm models) and queues one job per adapter. Jobs: every worker polls for
queued jobs and takes them one at a time with the same kind of conditional UPDATE
(``learning.jobs.claim_job``) until none is left, so however many ``assistant worker``
processes run, each user is trained exactly once per run, by one of them. The poll interval is
``ASSISTANT_WORKER_POLL_SECONDS`` (default 5).

The schedule lives in the ``Schedule`` row (``PUT /api/admin/schedule`` edits it); the worker
re-reads it every poll and reschedules its cron job when cron or enabled changed. When several
workers fire at the same minute, only the one that advances ``Schedule.last_fired_at`` queues.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import exists, or_, select as sa_select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from service import run_queue
from service.crud import get_or_create_schedule
from service.run_queue import RunConflict  # noqa: F401  (re-exported: callers catch it from here)
from service.db import init_db, make_engine
from service.models import RunStatus, Schedule, TrainingRun, User, pk, utcnow
from service.settings import Settings

from learning.config import Budgets
from learning.jobs import LIVE_WORKERS, claim_job, fail_job, fail_run, new_worker_id, recover_interrupted_runs
from learning.pipeline import LoadedModels, run_job, run_shared_stage, run_training

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

logger = logging.getLogger(__name__)

SCHEDULE_JOB = "nightly-training"
POLL_SECONDS = 5.0
POLL_ENV = "ASSISTANT_WORKER_POLL_SECONDS"
_PG_LOCK_KEY = 727_370_001  # advisory lock guarding claims on PostgreSQL


class RunBusy(RuntimeError):
    """Another run is executing, so this one cannot start now."""


def poll_seconds_from_env() -> float:
    """``ASSISTANT_WORKER_POLL_SECONDS`` (default 5): how often an idle worker looks for runs and jobs."""
    raw = os.environ.get(POLL_ENV)
    if raw is None:
        return POLL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{POLL_ENV}={raw!r} must be a number of seconds > 0, e.g. {POLL_ENV}=5")
    return value


# --- database operations ---------------------------------------------------------------------------


def enqueue_run(engine: Engine, *, trigger: str, user_ids: list[int] | None = None, requested_by: int | None = None) -> TrainingRun:
    """``service.run_queue.enqueue_run`` in a session of its own (the schedule, the CLI, tests)."""
    with Session(engine, expire_on_commit=False) as session:
        return run_queue.enqueue_run(session, trigger=trigger, user_ids=user_ids, requested_by=requested_by)


def claim_run(engine: Engine, run_id: int, worker_id: str) -> bool:
    """Atomically move one queued run to running, only if no run is running. True if we got it."""
    other = aliased(TrainingRun)
    now = utcnow()
    stmt = (
        update(TrainingRun)
        .where(col(TrainingRun.id) == run_id, col(TrainingRun.status) == RunStatus.queued)
        .where(~exists(sa_select(col(other.id)).where(col(other.status) == RunStatus.running)))
        .values(status=RunStatus.running, worker_id=worker_id, started_at=now, heartbeat_at=now, error=None)
    )
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        claimed = conn.execute(stmt).rowcount == 1
    if claimed:
        logger.info("worker %s claimed training run %s", worker_id, run_id)
    return claimed


def claim_next(engine: Engine, worker_id: str) -> int | None:
    """Claim the oldest queued run, if any and if nothing is running."""
    with Session(engine) as session:
        queued = session.exec(select(TrainingRun.id).where(TrainingRun.status == RunStatus.queued)
                              .order_by(col(TrainingRun.id))).all()
    for run_id in cast(Sequence[int], queued):  # primary keys read back are never null
        if claim_run(engine, run_id, worker_id):
            return run_id
    return None


def get_schedule(engine: Engine, settings: Settings) -> Schedule:
    """The schedule row, created from ``ASSISTANT_SCHEDULE_CRON``/``_ENABLED`` on first use."""
    with Session(engine, expire_on_commit=False) as session:
        return get_or_create_schedule(session, settings=settings)


def fire_schedule(engine: Engine, settings: Settings, now: datetime | None = None) -> int | None:
    """Queue a scheduled run, once per firing minute across all workers. Returns its id, if queued."""
    get_schedule(engine, settings)
    fire_key = (now or utcnow()).replace(second=0, microsecond=0)
    with engine.begin() as conn:
        won = conn.execute(
            update(Schedule).where(col(Schedule.id) == 1, or_(col(Schedule.last_fired_at).is_(None),
                                                              col(Schedule.last_fired_at) < fire_key))
            .values(last_fired_at=fire_key)
        ).rowcount == 1
    if not won:
        return None
    try:
        run = enqueue_run(engine, trigger="schedule")
    except RunConflict as exc:
        logger.info("scheduled training skipped: run %s is still queued or running", exc.run_id)
        return None
    logger.info("schedule queued training run %s", run.id)
    return run.id


# --- the worker ------------------------------------------------------------------------------------


class Worker:
    """Schedule + poller on an APScheduler ``BackgroundScheduler``. ``stop()`` ends both."""

    def __init__(self, settings: Settings, engine: Engine | None = None, *, poll_seconds: float | None = None,
                 budgets: Budgets | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        self.poll_seconds = poll_seconds if poll_seconds is not None else poll_seconds_from_env()
        self.budgets = budgets
        self.worker_id = new_worker_id()
        self._schedule_key: tuple[str, bool] | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._run_thread: threading.Thread | None = None
        self.current_run: int | None = None  # a run whose shared stage this worker is executing
        self.current_job: int | None = None  # a job this worker is training
        self.models = LoadedModels()  # the base + policy of the run it works on; dropped when idle

    # jobs -------------------------------------------------------------------------------------
    def sync_schedule(self) -> None:
        """Re-read cron/enabled from the database; reschedule when they changed."""
        from apscheduler.triggers.cron import CronTrigger

        row = get_schedule(self.engine, self.settings)
        key = (row.cron, row.enabled)
        if key == self._schedule_key or self._scheduler is None:
            return
        if self._scheduler.get_job(SCHEDULE_JOB) is not None:
            self._scheduler.remove_job(SCHEDULE_JOB)
        self._schedule_key = key
        if not row.enabled:
            logger.info("nightly training schedule disabled")
            return
        try:
            trigger = CronTrigger.from_crontab(row.cron)
        except ValueError as exc:
            logger.error("schedule cron %r is invalid (%s); fix it with PUT /api/admin/schedule", row.cron, exc)
            return
        self._scheduler.add_job(self._fire, trigger, id=SCHEDULE_JOB, max_instances=1, coalesce=True,
                                misfire_grace_time=3600)
        logger.info("nightly training scheduled at %r", row.cron)

    def _fire(self) -> None:
        fire_schedule(self.engine, self.settings)

    def run_pending_once(self) -> int | None:
        """Claim and execute one queued run here (its shared stage, then jobs while any is left). Returns its id."""
        run_id = claim_next(self.engine, self.worker_id)
        if run_id is not None:
            self._execute(run_id)
        return run_id

    def _execute(self, run_id: int) -> None:
        """The shared stage of a claimed run, then jobs (of it or any run) until none is left."""
        self.current_run = run_id
        try:
            run_shared_stage(self.settings, self.engine, run_id, budgets=self.budgets, models=self.models)
        except Exception:  # already recorded on the run row; keep polling
            logger.error("training run %s failed; see its error field", run_id)
            return
        finally:
            self.current_run = None
        self._work_jobs()

    def _work_jobs(self, job_id: int | None = None) -> None:
        """Train jobs one after another (starting with ``job_id``, already claimed) until none is free."""
        if job_id is None:
            job_id = claim_job(self.engine, self.worker_id)
        try:
            while job_id is not None:
                self.current_job = job_id
                try:
                    run_job(self.settings, self.engine, job_id, self.worker_id, budgets=self.budgets, models=self.models)
                finally:
                    self.current_job = None
                job_id = claim_job(self.engine, self.worker_id)
        finally:
            self.models.release()  # an idle worker holds no model

    def _poll(self) -> None:
        self.sync_schedule()
        if self._run_thread is not None and self._run_thread.is_alive():
            return
        recover_interrupted_runs(self.settings, self.engine)
        # Jobs of the run in progress first; only when none is free, a new run (at most one runs at a time).
        job_id = claim_job(self.engine, self.worker_id)
        target: Callable[[int], None]
        if job_id is not None:
            target, args, name = self._work_jobs, (job_id,), f"training-job-{job_id}"
        else:
            run_id = claim_next(self.engine, self.worker_id)
            if run_id is None:
                return
            target, args, name = self._execute, (run_id,), f"training-run-{run_id}"
        # A daemon thread, so stopping the process never waits for training; stop() (or, after a
        # kill, the next worker's recovery) records what it was doing as interrupted.
        self._run_thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._run_thread.start()

    def _sync_openwebui(self) -> None:
        """Open WebUI's ratings into labels here (``service.openwebui_sync``); a failure is logged, and the
        next interval tries again."""
        from service.openwebui_sync import SyncError, sync_feedback

        try:
            sync_feedback(self.settings, self.engine)
        except SyncError as exc:
            logger.warning("Open WebUI sync: %s", exc)

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "Worker":
        from apscheduler.schedulers.background import BackgroundScheduler

        init_db(self.engine)
        LIVE_WORKERS.add(self.worker_id)
        recover_interrupted_runs(self.settings, self.engine)
        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler.start()
        self.sync_schedule()
        self._scheduler.add_job(self._poll, "interval", seconds=self.poll_seconds, id="poll", next_run_time=utcnow_local())
        if self.settings.openwebui_url and self.settings.openwebui_token:
            self._scheduler.add_job(self._sync_openwebui, "interval", seconds=self.settings.openwebui_sync_s, id="openwebui",
                                    next_run_time=utcnow_local())
            logger.info("importing Open WebUI's ratings from %s every %.0f s", self.settings.openwebui_url,
                        self.settings.openwebui_sync_s)
        logger.info("training worker %s started", self.worker_id)
        return self

    def stop(self) -> None:
        """Stop scheduling and polling. A shared stage or job in progress is abandoned and marked
        failed now (its thread dies with the process; nothing it left half-done is ever served)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        LIVE_WORKERS.discard(self.worker_id)
        run_id, job_id = self.current_run, self.current_job
        if run_id is not None:
            fail_run(self.engine, run_id, f"interrupted: worker {self.worker_id} was stopped during the run; queue it again")
        if job_id is not None:
            fail_job(self.settings, self.engine, job_id, worker_id=self.worker_id,
                     reason=f"interrupted: worker {self.worker_id} was stopped while training this adapter; "
                            "not retried, the last promoted adapter keeps serving. Queue a new run to retry.")
        logger.info("training worker %s stopped", self.worker_id)


def utcnow_local() -> datetime:
    """Now in the scheduler's (local) time zone, for "run the first poll immediately"."""
    return datetime.now().astimezone()


def start_embedded_worker(settings: Settings, engine: Engine | None = None) -> Worker:
    """Start the worker in background threads of this process; call ``.stop()`` on shutdown."""
    return Worker(settings, engine).start()


def run_worker(settings: Settings, engine: Engine | None = None, *, parent_pid: int | None = None) -> None:
    """Run the worker in the foreground until SIGTERM or SIGINT, or, with ``parent_pid``, until
    that parent process is gone (``assistant serve`` passes its pid: however the server ends,
    SIGTERM re-raised by uvicorn or kill -9, its worker must not keep training on its own)."""
    stop = threading.Event()
    from learning.safety import ensure_safety_stage

    if parent_pid is not None:  # watched from the start: the safety stage below trains for minutes
        threading.Thread(target=_stop_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True).start()
    ensure_safety_stage(settings, Budgets.from_env())  # once per base model, before any run
    worker = Worker(settings, engine).start()

    def _handle(signum, _frame) -> None:
        logger.info("signal %s: stopping the training worker", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        worker.stop()


def _stop_when_orphaned(parent_pid: int) -> None:
    """SIGTERM to this process once the server that started it is gone: before the worker's handler is
    installed (the safety stage's first training) that ends the process, after it a clean stop."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    logger.warning("the server process %s that started this worker has ended: stopping", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def train_foreground(settings: Settings, user: str | None = None, *, now: bool = True, engine: Engine | None = None,
                     budgets: Budgets | None = None, show_progress: bool = True, users: Sequence[str] = ()) -> int:
    """``assistant train``: queue a run (one user by name, ``users`` by name, or everyone: the global
    adapter too) and, if ``now``, execute it here.

    With ``now`` this process runs the shared stage and takes the run's jobs until none is left;
    running workers may take some of them too, and this returns once every job has finished.
    Without ``now`` the run only waits in the queue for a worker. Returns the run id; raises
    ``learning.jobs.RunFailed`` if the run failed,
    ``RunConflict`` if an overlapping run is queued or running, ``RunBusy`` if another run is
    executing (the new run stays queued for the worker), ``LookupError`` for an unknown user.
    """
    engine = engine or make_engine(settings)
    init_db(engine)
    user_ids = None
    names = ([user] if user is not None else []) + list(users)
    if names:
        user_ids = []
        with Session(engine) as session:
            for name in names:
                row = session.exec(select(User).where(User.username == name)).first()
                if row is None:
                    raise LookupError(f"no user named {name!r}; list users with the admin API or check the spelling")
                user_ids.append(pk(row))
    run_id = pk(enqueue_run(engine, trigger="cli", user_ids=user_ids))
    if not now:
        logger.info("queued training run %s; a worker (assistant serve or assistant worker) will execute it", run_id)
        return run_id
    worker_id = new_worker_id()
    recover_interrupted_runs(settings, engine)
    if not claim_run(engine, run_id, worker_id):
        raise RunBusy(f"another training run is executing; run {run_id} stays queued and a worker will start it "
                      "after that one (or retry `assistant train --now` later)")
    LIVE_WORKERS.add(worker_id)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=100, desc=f"training run {run_id}", unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.n = 100 * fraction
            bar.set_postfix_str(message[:60])
            bar.refresh()

    try:
        run_training(settings, engine, run_id, progress, budgets=budgets)
    finally:
        LIVE_WORKERS.discard(worker_id)
        if bar is not None:
            bar.close()
    return run_id
