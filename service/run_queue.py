"""Queueing a training run: the one place that checks for an overlapping run and inserts a new one.

The admin route (``POST /api/admin/training-runs``), the nightly schedule and ``assistant train``
all call ``enqueue_run``; ``learning.worker`` claims and executes what it queued. The check and the
insert are one transaction that holds the database's write lock from its first statement, so two
callers at the same moment cannot both see "no overlap" and both insert (issue 12, finding 19).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session, col, select

from service.models import RunStatus, TrainingRun

_PG_ENQUEUE_LOCK = 727_370_002  # advisory lock serialising enqueues on PostgreSQL


class RunConflict(RuntimeError):
    """A run for overlapping users is already queued or running."""

    def __init__(self, run: TrainingRun) -> None:
        super().__init__(f"training run {run.id} is already {run.status.value} for overlapping users; "
                         f"wait for it (GET /api/admin/training-runs/{run.id})")
        self.run_id, self.status = run.id, run.status


def overlapping_run(session: Session, user_ids: list[int] | None) -> TrainingRun | None:
    """A queued or running run whose users overlap ``user_ids`` (None = everyone)."""
    active = session.exec(select(TrainingRun).where(col(TrainingRun.status).in_([RunStatus.queued, RunStatus.running]))).all()
    for run in active:
        if run.user_ids is None or user_ids is None or set(run.user_ids) & set(user_ids):
            return run
    return None


def _lock_for_enqueue(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ENQUEUE_LOCK})
    else:  # SQLite: a write statement first makes the transaction take the database's write lock
        session.execute(text("UPDATE trainingrun SET id = id WHERE id = -1"))


def enqueue_run(session: Session, *, trigger: str, user_ids: list[int] | None = None,
                requested_by: int | None = None) -> TrainingRun:
    """Queue a run (``user_ids`` None = the global adapter and everyone with enough feedback);
    ``RunConflict`` if one for overlapping users is queued or running."""
    _lock_for_enqueue(session)
    clash = overlapping_run(session, user_ids)
    if clash is not None:
        session.rollback()
        raise RunConflict(clash)
    run = TrainingRun(trigger=trigger, user_ids=sorted(set(user_ids)) if user_ids is not None else None,
                      requested_by=requested_by)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run
