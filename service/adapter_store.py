"""Versioned adapter store: one directory per scope and version, PEFT format.

Layout under ``<data_dir>/adapters/``::

    global/v1/{adapter_config.json, adapter_model.safetensors, metadata.json}
    user-3/v2/...

Publishing is atomic: the files are written to a temporary directory inside the
store, fsynced, renamed into place, and only then is the database row inserted;
activating a version (flipping ``ActiveAdapter``) is always the last step. Only
safetensors are ever loaded (never pickle). Clients never name paths: the
server maps a user to an ``ActiveAdapter`` row, the row to a directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from service.engine.base import AdapterRef
from service.model_loading import base_model_id
from service.models import ActiveAdapter, AdapterStatus, AdapterVersion, pk, utcnow
from service.settings import Settings

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
REWARD_FILE = "reward.json"  # the user's reward over reply traits, for best-of-n (service.reply_reward)
OPTIONAL_FILES = (REWARD_FILE,)


class AdapterStoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scope:
    """Whose adapter: one user's (``user_id``) or the global one (``None``). Every spelling of it lives here."""

    user_id: int | None = None

    @property
    def key(self) -> str:
        """The ``ActiveAdapter`` primary key, and how logs and job reasons name the scope."""
        return "global" if self.user_id is None else f"user:{self.user_id}"

    def label(self, version: int) -> str:
        """The public name of a version, as shown in `end` frames and the UI."""
        return f"global-v{version}" if self.user_id is None else f"u{self.user_id}-v{version}"

    @property
    def name(self) -> str:
        """The scope in file names: ``global`` or ``user-<id>``."""
        return "global" if self.user_id is None else f"user-{self.user_id}"

    def dir(self, version: int) -> str:
        """A version's directory, relative to the adapter store's root."""
        return f"{self.name}/v{version}"

    def where(self, column):
        """The SQL condition "this scope" on a ``user_id`` column (``IS NULL`` for the global one)."""
        return col(column).is_(None) if self.user_id is None else col(column) == self.user_id

    def __str__(self) -> str:
        return self.key


def label_of(row: AdapterVersion) -> str:
    """The public name of a version, as shown in `end` frames and the UI."""
    return Scope(row.user_id).label(row.version)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_adapter_dir(path: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise AdapterStoreError(f"adapter directory {path} lacks {', '.join(missing)}")
    bad = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if bad:
        raise AdapterStoreError(f"adapter directory {path} holds pickle files {bad}; only safetensors are allowed")


def next_version(session: Session, user_id: int | None) -> int:
    stmt = select(AdapterVersion.version).where(AdapterVersion.user_id == user_id) if user_id is not None else select(
        AdapterVersion.version
    ).where(Scope(None).where(AdapterVersion.user_id))
    versions = session.exec(stmt).all()
    return (max(versions) if versions else 0) + 1


def _same_file_system(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def publish(
    settings: Settings,
    session: Session,
    *,
    user_id: int | None,
    src_dir: Path,
    metadata: dict[str, Any],
    training_run_id: int | None = None,
    status: AdapterStatus = AdapterStatus.candidate,
    metrics: dict[str, Any] | None = None,
    reason: str | None = None,
    move: bool = False,
) -> AdapterVersion:
    """Put a saved PEFT adapter into the store atomically and record it (not active yet).

    ``move``: ``src_dir`` is a scratch directory of the caller's on the store's file system (the
    trainer's, under ``<adapters>/.tmp``): it is renamed into the store instead of copied, and is
    gone afterwards; files the store does not keep (PEFT's README.md) are dropped."""
    validate_adapter_dir(src_dir)
    root = settings.adapters_dir
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(session, user_id)
    rel = Scope(user_id).dir(version)
    final = root / rel
    if final.exists():  # a leftover from a crash before the row was inserted: never served
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = root / ".tmp" / f"{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if move and _same_file_system(src_dir, tmp.parent):
        os.rename(src_dir, tmp)
        for path in tmp.iterdir():
            if path.name not in REQUIRED_FILES + OPTIONAL_FILES:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        tmp.mkdir()
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            if name in REQUIRED_FILES or (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
        if move:
            shutil.rmtree(src_dir, ignore_errors=True)
    # PEFT records the base model's local path, which means nothing on another machine: name the
    # model instead (the metadata keeps its hash), so vLLM, PEFT and TRL elsewhere can load the files.
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text())
    local_base = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = base_model_id(settings)
    config_path.write_text(json.dumps(config, indent=2))
    metadata = {**metadata, "base_model_local_path": local_base}
    # training_run_id: which run wrote the files, so clean-up can tell a failed run's leftover from a
    # version this database does not know (learning.jobs._remove_orphan_dirs)
    (tmp / "metadata.json").write_text(json.dumps({**metadata, "version": version, "user_id": user_id,
                                                   "training_run_id": training_run_id}, indent=2, default=str))
    _fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_tree(final.parent)
    row = AdapterVersion(
        user_id=user_id,
        version=version,
        status=status,
        path=rel,
        metrics=metrics or {},
        reason=reason,
        training_run_id=training_run_id,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def activate(session: Session, *, user_id: int | None, version_id: int | None) -> None:
    """Make ``version_id`` (or the base model, None) serve this scope. The last step of a publish."""
    scope = Scope(user_id).key
    row = session.get(ActiveAdapter, scope)
    if row is None:
        row = ActiveAdapter(scope=scope)
    row.adapter_version_id = version_id
    row.updated_at = utcnow()
    session.add(row)
    session.commit()


def active_version(session: Session, user_id: int | None) -> AdapterVersion | None:
    row = session.get(ActiveAdapter, Scope(user_id).key)
    if row is None or row.adapter_version_id is None:
        return None
    return session.get(AdapterVersion, row.adapter_version_id)


def rollback(session: Session, *, user_id: int | None) -> AdapterVersion | None:
    """Back to the previous promoted version (or the base/global model). Returns the new active one."""
    current = active_version(session, user_id)
    stmt = select(AdapterVersion).where(AdapterVersion.status == AdapterStatus.promoted)
    stmt = stmt.where(Scope(user_id).where(AdapterVersion.user_id))
    promoted = sorted(session.exec(stmt).all(), key=lambda r: r.version)
    if current is not None:
        current.status = AdapterStatus.retired
        session.add(current)
        promoted = [r for r in promoted if r.version < current.version]
    target = promoted[-1] if promoted else None
    session.commit()
    activate(session, user_id=user_id, version_id=target.id if target else None)
    return target


def erase_user_adapters(settings: Settings, session: Session, *, user_id: int, reason: str) -> int:
    """Stop serving a user's own adapters and delete their weights (the rows stay, retired, as history).

    One commit retires every version and points the user's scope at nothing (the global adapter or
    the base), so no request sees a half-done reset; the files go after it. For reset, deleted
    ratings and deleted accounts: an adapter trained on labels that are gone must not keep serving.
    """
    rows = list(session.exec(select(AdapterVersion).where(AdapterVersion.user_id == user_id)).all())
    for row in rows:
        if row.status != AdapterStatus.retired:
            row.status, row.reason = AdapterStatus.retired, reason
        session.add(row)
    active = session.get(ActiveAdapter, Scope(user_id).key)
    if active is not None:
        active.adapter_version_id, active.updated_at = None, utcnow()
        session.add(active)
    session.commit()
    for row in rows:
        shutil.rmtree(settings.adapters_dir / row.path, ignore_errors=True)
    if rows:
        logger.info("erased %d adapter version(s) of user %s: %s", len(rows), user_id, reason)
    return len(rows)


class Policy(StrEnum):
    """Which policy produced a reply, as ``Message.policy`` stores it (the same strings as ever)."""

    USER = "user"  # the user's own promoted adapter
    GLOBAL = "global"  # the global adapter
    BASE = "base"  # the base model

    @staticmethod
    def explore(what: str) -> str:
        """An alternative drawn from another policy ("explore:global", "explore:base", "explore:temperature")."""
        return f"explore:{what}"


@dataclass(frozen=True)
class Resolved:
    """What serves a user: the adapter (None = base) and the policy name."""

    adapter: AdapterRef | None
    policy: str  # a Policy, or Policy.explore(...)
    label: str | None
    version_id: int | None

    @classmethod
    def base(cls, policy: str = Policy.BASE) -> "Resolved":
        return cls(None, policy, None, None)

    @classmethod
    def of(cls, settings: Settings, row: AdapterVersion, policy: str) -> "Resolved":
        """A stored adapter version serving as ``policy``."""
        return cls(ref_for(settings, row), policy, label_of(row), row.id)


def ref_for(settings: Settings, row: AdapterVersion) -> AdapterRef:
    """The engine's handle on a version. Its cache key names the files, not just the label: a label
    (``u2-v1``) repeats when a store is reset or a deleted user's id is reused, and an engine must
    never serve the old weights under it."""
    path = settings.adapters_dir / row.path
    stamp = hashlib.sha1(f"{path.resolve()}|{row.id}|{row.created_at.isoformat()}".encode()).hexdigest()[:12]
    return AdapterRef(key=f"{label_of(row)}-{stamp}", path=path, version_id=row.id)


def resolve_for_user(settings: Settings, session: Session, user_id: int, policy: str | None = None) -> Resolved:
    """The serving decision, made here only. With ``policy`` None: the user's own promoted adapter, else
    the global one, else the base model. Asked for explicitly (the ``:global``/``:base`` models):
    ``Policy.BASE``, or ``Policy.GLOBAL`` (the base while none is promoted). A retired or rejected
    version never serves, even if a scope still points at it (a race with a reset)."""
    if policy == Policy.BASE:
        return Resolved.base()
    if policy == Policy.GLOBAL:
        row = active_version(session, None)
        return Resolved.of(settings, row, Policy.GLOBAL) if row is not None and row.status == AdapterStatus.promoted else Resolved.base()
    for scope_user, policy in ((user_id, Policy.USER), (None, Policy.GLOBAL)):
        row = active_version(session, scope_user)
        if row is not None and row.status == AdapterStatus.promoted:
            return Resolved.of(settings, row, policy)
    return Resolved.base()


def learned_from_deleted_labels(session: Session, row: AdapterVersion) -> bool:
    """Whether ``row``, or any version it was warm-started from (``metrics["started_from"]``, back to a
    fresh start), trained on a rating or ranking that no longer exists (audit 2026-12-05, M3(c)).

    A global version starts from the last one, so what a user deleted would live on in every later
    version; the learning job starts the next global version fresh instead when this is true, and
    "the shared model forgets your ratings at its next run" holds. Each run's ``TrainingSnapshot``
    lists exactly the feedback and ranking ids it learned from."""
    from sqlmodel import func

    from service.models import Feedback, Ranking, TrainingSnapshot

    by_label = {label_of(v): v for v in session.exec(select(AdapterVersion).where(Scope(row.user_id).where(AdapterVersion.user_id))).all()}
    runs: set[int] = set()
    seen: set[int] = set()
    current: AdapterVersion | None = row
    while current is not None and current.id not in seen:
        seen.add(pk(current))
        if current.training_run_id is not None:
            runs.add(current.training_run_id)
        started_from = (current.metrics or {}).get("started_from")
        current = by_label.get(started_from) if started_from is not None else None
    if not runs:
        return False
    snapshots = session.exec(select(TrainingSnapshot).where(col(TrainingSnapshot.run_id).in_(sorted(runs)))).all()
    for table, ids in ((Feedback, {i for s in snapshots for i in s.feedback_ids}),
                       (Ranking, {i for s in snapshots for i in s.ranking_ids})):
        ordered = sorted(ids)
        for start in range(0, len(ordered), 5000):  # within every database's limit on bound parameters
            chunk = ordered[start:start + 5000]
            if session.exec(select(func.count()).select_from(table).where(col(table.id).in_(chunk))).one() < len(chunk):
                return True
    return False
