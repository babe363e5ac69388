"""Metric history: what the learning job recorded in the database (training results, snapshots, adapter versions)."""

from __future__ import annotations

from typing import Any


def find_metric(metrics: Any, key: str) -> Any:
    """``key`` in a metrics blob: flat, or nested in dicts, or in the last entry of a history list."""
    if isinstance(metrics, dict):
        if key in metrics and not isinstance(metrics[key], (dict, list)):
            return metrics[key]
        for v in metrics.values():
            found = find_metric(v, key)
            if found is not None:
                return found
    elif isinstance(metrics, list) and metrics and isinstance(metrics[-1], dict):
        return find_metric(metrics[-1], key)
    return None


def training_history(session) -> list[dict[str, Any]]:
    """One entry per training result (oldest run first): scope, run, PPO reward and KL, promotion."""
    from sqlmodel import col, select

    from service.models import AdapterVersion, TrainingResult, TrainingRun

    rows = session.exec(select(TrainingResult, TrainingRun).where(TrainingResult.run_id == TrainingRun.id)
                        .order_by(col(TrainingRun.id), col(TrainingResult.id))).all()
    out = []
    for res, run in rows:
        adapter = session.get(AdapterVersion, res.adapter_version_id) if res.adapter_version_id else None
        metrics = {**(adapter.metrics if adapter else {}), **(res.metrics or {})}
        out.append({
            "run_id": run.id, "user_id": res.user_id, "status": getattr(res.status, "value", res.status),
            "promoted": res.promoted, "reason": res.reason,
            "adapter_version_id": res.adapter_version_id,
            "reward_mean": find_metric(metrics, "reward/mean"),
            "kl_per_token": find_metric(metrics, "kl/per_token"),
            "harm_mean": find_metric(metrics, "harm/mean"),
            "metrics": metrics,
        })
    return out


def reward_model_accuracy(history: list[dict[str, Any]], user_id: int | None) -> dict[str, Any]:
    """Held-out pairwise accuracy from the newest training result of this scope that recorded it."""
    for entry in reversed(history):
        if entry["user_id"] != user_id:
            continue
        m = entry["metrics"]
        if user_id is None:
            acc = find_metric(m, "reward/heldout_accuracy")
            pairs = find_metric(m, "reward/heldout_pairs")
        else:
            acc = find_metric(m, "reward/accuracy")
            pairs = find_metric(m, "reward/heldout_pairs")
        baseline = find_metric(m, "reward/length_baseline_accuracy")
        if acc is not None or baseline is not None:
            return {"accuracy": acc, "length_baseline_accuracy": baseline, "heldout_pairs": pairs, "run_id": entry["run_id"]}
    return {"accuracy": None, "length_baseline_accuracy": None, "heldout_pairs": None, "run_id": None}


def newest_version(session, user_id: int | None):
    """The newest adapter version of a scope, whatever its status (None if never trained)."""
    from sqlmodel import col, select

    from service.adapter_store import Scope
    from service.models import AdapterVersion

    stmt = select(AdapterVersion).where(Scope(user_id).where(AdapterVersion.user_id))
    return session.exec(stmt.order_by(col(AdapterVersion.version).desc())).first()


def latest_snapshot_models(session) -> tuple[int | None, dict[str, Any]]:
    """(run id, reward/harm model metrics) of the newest training snapshot that recorded them."""
    from sqlmodel import col, select

    from service.models import TrainingSnapshot

    for snap in session.exec(select(TrainingSnapshot).order_by(col(TrainingSnapshot.id).desc())).all():
        models = (snap.stats or {}).get("models")
        if models:
            return snap.run_id, models
    return None, {}


def global_reward_accuracy(snapshot_models: tuple[int | None, dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The global reward head's held-out accuracy: from the newest snapshot, else a global result row."""
    run_id, models = snapshot_models
    if models:
        return {"accuracy": models.get("reward/heldout_accuracy"),
                "length_baseline_accuracy": models.get("reward/length_baseline_accuracy"),
                "heldout_pairs": models.get("reward/heldout_pairs"), "run_id": run_id}
    return reward_model_accuracy(history, None)


def user_reward_accuracy(snapshot_models: tuple[int | None, dict[str, Any]], history: list[dict[str, Any]],
                         user_id: int) -> dict[str, Any]:
    """A user's head on their held-out pairs: from the newest snapshot, else their newest result row."""
    run_id, models = snapshot_models
    mine = (models.get("reward/per_user") or {}).get(str(user_id))
    if mine:
        return {"accuracy": mine.get("accuracy"), "length_baseline_accuracy": mine.get("length_baseline_accuracy"),
                "heldout_pairs": mine.get("heldout_pairs"), "personalized": mine.get("personalized"), "run_id": run_id}
    return reward_model_accuracy(history, user_id)


def _simulation_rounds(simulation: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not simulation:
        return []
    out = []
    for rnd in simulation.get("rounds", []):
        run = rnd.get("training_run") or {}
        for username, s in rnd.get("users", {}).items():
            out.append({"round": rnd["round"], "username": username, "mean_score": s.get("mean_score"),
                        "harmful_share": s.get("harmful_share"), "served_by": s.get("served_by"),
                        "training_run_id": run.get("id"), "training_status": run.get("status")})
    return out
