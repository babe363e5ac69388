"""Operator routes for the learning loop, and a user's view of their own adapter.

Operators (everyone else gets 403):
    POST /api/admin/training-runs               queue a run (202; 409 if one overlaps)
    GET  /api/admin/training-runs[/{id}]        runs, newest first / one run with its results
    GET  /api/admin/adapters                    every scope's versions and the active one
    POST /api/admin/users/{user_id}/adapter/rollback, POST /api/admin/adapters/global/rollback
    GET|PUT /api/admin/schedule                 the nightly schedule the worker re-reads
    GET  /api/admin/stats                       feedback per day, reward accuracy vs "longer wins"
(A user's view of their own adapter is in ``service.routes.me``.)

Routes only read and write rows: the worker process (``learning.worker``) executes queued runs.
Queueing goes through ``service.run_queue`` (the worker's schedule and CLI use it too). Handlers
are plain ``def``: FastAPI runs them in a threadpool, off the event loop.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from sqlalchemy import func
from sqlmodel import Session, col, select

from service import adapter_store, run_queue
from service.crud import get_or_create_schedule
from service.auth import OperatorUser, SessionDep, SettingsDep
from service.schemas import (
    IdPath,
    TrainingRunCreate,
    TrainingRunQueued,
    TrainingResultPublic,
    TrainingRunPublic,
    AdapterVersionPublic,
    AdapterScopePublic,
    SchedulePublic,
    ScheduleUpdate,
    StatsPublic,
)
from service.models import (
    AdapterVersion,
    Feedback,
    RunStatus,
    TrainingResult,
    TrainingRun,
    TrainingSnapshot,
    User,
    utcnow,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["learning"])


# --- schemas ---------------------------------------------------------------------------------------


# --- data access (one function per operation, keyword-only) ------------------------------------------


def run_public(session: Session, *, run: TrainingRun) -> TrainingRunPublic:
    results = session.exec(select(TrainingResult).where(TrainingResult.run_id == run.id).order_by(col(TrainingResult.id))).all()
    versions = {v.id: v.version for v in session.exec(
        select(AdapterVersion).where(col(AdapterVersion.id).in_([r.adapter_version_id for r in results if r.adapter_version_id]))
    ).all()} if results else {}
    return TrainingRunPublic(
        id=run.id, status=run.status.value, trigger=run.trigger, user_ids=run.user_ids, progress=run.progress,
        error=run.error, created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at,
        results=[TrainingResultPublic(user_id=r.user_id, adapter_version=versions.get(r.adapter_version_id),
                                      promoted=r.promoted, reason=r.reason, metrics=r.metrics) for r in results],
    )


def versions_of(session: Session, *, user_id: int | None) -> list[AdapterVersion]:
    stmt = select(AdapterVersion)
    stmt = stmt.where(adapter_store.Scope(user_id).where(AdapterVersion.user_id))
    return list(session.exec(stmt.order_by(col(AdapterVersion.version).desc())).all())


def version_public(row: AdapterVersion) -> AdapterVersionPublic:
    return AdapterVersionPublic(version=row.version, label=adapter_store.label_of(row), status=row.status.value,
                                reason=row.reason, created_at=row.created_at, metrics=row.metrics)


def scope_public(session: Session, *, user_id: int | None, username: str | None) -> AdapterScopePublic:
    active = adapter_store.active_version(session, user_id)
    return AdapterScopePublic(user_id=user_id, username=username, active_version=active.version if active else None,
                              versions=[version_public(v) for v in versions_of(session, user_id=user_id)])


def feedback_per_day(session: Session, *, days: int) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(days=days)
    day = func.date(Feedback.created_at)
    rows = session.exec(
        select(day, Feedback.rating, func.count()).where(Feedback.created_at >= since).group_by(day, Feedback.rating).order_by(day)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for d, rating, n in rows:
        entry = out.setdefault(str(d), {"day": str(d), "up": 0, "down": 0})
        entry[rating.value if hasattr(rating, "value") else str(rating)] = n
    return list(out.values())


def latest_reward_metrics(session: Session) -> dict[str, Any] | None:
    stmt = (select(TrainingSnapshot).join(TrainingRun, col(TrainingRun.id) == TrainingSnapshot.run_id)
            .where(TrainingRun.status == RunStatus.succeeded).order_by(col(TrainingSnapshot.id).desc()))
    snap = session.exec(stmt).first()
    if snap is None or "models" not in snap.stats:
        return None
    models = snap.stats["models"]
    return {
        "run_id": snap.run_id,
        "snapshot_sha256": snap.sha256,
        "heldout_pairs": models.get("reward/heldout_pairs"),
        "accuracy": models.get("reward/heldout_accuracy"),
        "length_baseline_accuracy": models.get("reward/length_baseline_accuracy"),
        "per_user": models.get("reward/per_user", {}),
        "harm": {k: v for k, v in models.items() if k.startswith("harm/")},
    }


def latest_pool_audit(session: Session) -> list[dict[str, Any]] | None:
    """The newest run's per-user audit of the shared pool (``learning.data.pool_audit``), usernames added."""
    snap = session.exec(select(TrainingSnapshot).join(TrainingRun, col(TrainingRun.id) == TrainingSnapshot.run_id)
                        .where(TrainingRun.status == RunStatus.succeeded).order_by(col(TrainingSnapshot.id).desc())).first()
    if snap is None:
        return None
    audit = (snap.stats or {}).get("pool_audit")
    if not audit:
        return None
    names = dict(session.exec(select(User.id, User.username).where(col(User.id).in_([int(u) for u in audit]))).all())
    return [{"user_id": int(u), "username": names.get(int(u)), "run_id": snap.run_id, **row} for u, row in audit.items()]


# --- operator routes ----------------------------------------------------------------------------------


@router.post("/api/admin/training-runs", status_code=status.HTTP_202_ACCEPTED, response_model=TrainingRunQueued)
def queue_training_run(body: TrainingRunCreate, operator: OperatorUser, session: SessionDep) -> TrainingRunQueued:
    if body.user_ids is not None:
        known = set(session.exec(select(User.id).where(col(User.id).in_(body.user_ids))).all())
        unknown = sorted(set(body.user_ids) - known)
        if unknown:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no users with ids {unknown}; list them with GET /api/admin/adapters")
    try:
        run = run_queue.enqueue_run(session, trigger="manual", user_ids=body.user_ids, requested_by=operator.id)
    except run_queue.RunConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    logger.info("operator %s queued training run %s for %s", operator.username, run.id, body.user_ids or "everyone")
    return TrainingRunQueued(id=run.id, status=run.status.value)


@router.get("/api/admin/training-runs", response_model=list[TrainingRunPublic])
def list_training_runs(_: OperatorUser, session: SessionDep, limit: int = 50) -> list[TrainingRunPublic]:
    runs = session.exec(select(TrainingRun).order_by(col(TrainingRun.id).desc()).limit(max(1, min(limit, 500)))).all()
    return [run_public(session, run=r) for r in runs]


@router.get("/api/admin/training-runs/{run_id}", response_model=TrainingRunPublic)
def get_training_run(run_id: IdPath, _: OperatorUser, session: SessionDep) -> TrainingRunPublic:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no training run {run_id}")
    return run_public(session, run=run)


@router.get("/api/admin/adapters", response_model=list[AdapterScopePublic])
def list_adapters(_: OperatorUser, session: SessionDep) -> list[AdapterScopePublic]:
    scoped = select(AdapterVersion.user_id).where(col(AdapterVersion.user_id).is_not(None)).distinct()
    user_ids = [uid for uid in session.exec(scoped).all() if uid is not None]
    names = {u.id: u.username for u in session.exec(select(User).where(col(User.id).in_(user_ids))).all()} if user_ids else {}
    return [scope_public(session, user_id=None, username=None)] + [
        scope_public(session, user_id=uid, username=names.get(uid)) for uid in sorted(user_ids)
    ]


@router.post("/api/admin/users/{user_id}/adapter/rollback", response_model=AdapterScopePublic)
def rollback_user_adapter(user_id: IdPath, operator: OperatorUser, session: SessionDep) -> AdapterScopePublic:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    target = adapter_store.rollback(session, user_id=user_id)
    logger.info("operator %s rolled user %s back to %s", operator.username, user_id,
                adapter_store.label_of(target) if target else "the global adapter/base")
    return scope_public(session, user_id=user_id, username=user.username)


@router.post("/api/admin/adapters/global/rollback", response_model=AdapterScopePublic)
def rollback_global_adapter(operator: OperatorUser, session: SessionDep) -> AdapterScopePublic:
    target = adapter_store.rollback(session, user_id=None)
    logger.info("operator %s rolled the global adapter back to %s", operator.username,
                adapter_store.label_of(target) if target else "the base model")
    return scope_public(session, user_id=None, username=None)


@router.get("/api/admin/schedule", response_model=SchedulePublic)
def get_schedule(_: OperatorUser, session: SessionDep, settings: SettingsDep) -> SchedulePublic:
    row = get_or_create_schedule(session, settings=settings)
    return SchedulePublic(cron=row.cron, enabled=row.enabled, last_fired_at=row.last_fired_at)


@router.put("/api/admin/schedule", response_model=SchedulePublic)
def put_schedule(body: ScheduleUpdate, operator: OperatorUser, session: SessionDep, settings: SettingsDep) -> SchedulePublic:
    from apscheduler.triggers.cron import CronTrigger

    cron = " ".join(body.cron.split())
    try:
        CronTrigger.from_crontab(cron)
    except ValueError as exc:
        # the problem in words, never the input itself (finding 12: errors do not echo what was sent)
        why = str(exc) if cron not in str(exc) and not any(f and f in str(exc) for f in cron.split()) else "a field is not valid"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"invalid cron ({why}); use five fields 'minute hour day month weekday', "
                            "e.g. '0 2 * * *' for 02:00 every night") from exc
    row = get_or_create_schedule(session, settings=settings)
    row.cron, row.enabled, row.updated_at = cron, body.enabled, utcnow()
    session.add(row)
    session.commit()
    logger.info("operator %s set the training schedule to %r (enabled=%s)", operator.username, cron, body.enabled)
    return SchedulePublic(cron=row.cron, enabled=row.enabled, last_fired_at=row.last_fired_at)


@router.get("/api/admin/stats", response_model=StatsPublic)
def get_stats(_: OperatorUser, session: SessionDep, days: int = 30) -> StatsPublic:
    return StatsPublic(feedback_per_day=feedback_per_day(session, days=max(1, min(days, 365))),
                       reward_model=latest_reward_metrics(session), pool_audit=latest_pool_audit(session))


@router.get("/api/admin/eval/latest")
def latest_evaluation(_: OperatorUser, settings: SettingsDep) -> JSONResponse:
    """The latest `assistant evaluate` report (JSON), for the dashboard."""
    path = settings.data_dir / "reports" / "latest.json"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            "no evaluation report yet; run `assistant evaluate` (or `assistant simulate`) with this data dir")
    return JSONResponse(json.loads(path.read_text()))
