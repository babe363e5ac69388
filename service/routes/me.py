"""The signed-in user's own pages: their settings, their adapter, and what it learned from them.

    GET|PUT    /api/me/preferences   custom instructions, reply defaults, theme
    GET|POST   /api/me/api-keys      own API keys (the key is shown once, at creation)
    DELETE     /api/me/api-keys/{id} revoke one (it answers 401 from the next request)
    GET|DELETE /api/me/adapter       own versions / back to the global adapter or base
    GET        /api/me/learned       what the reward model learned from their ratings, per round

Everything here reads only the caller's rows. What training learned (preference traits, the
gate's win rate, rewards) is what the worker stored in each adapter version's metrics; the web
process never loads a reward model itself.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import func
from sqlmodel import Session, col, select

from service import adapter_store, crud, proxy
from service.auth import CurrentUser, SessionDep, SessionUser, SettingsDep, token_from_request
from service.models import PERSON_SOURCES, AdapterVersion, ApiKey, Feedback, Ranking, UserPreference, pk
from service.routes.admin import version_public, versions_of
from service.training_records import Readings
from service.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    IdPath,
    LabelCounts,
    LearnedPublic,
    MyAdapterPublic,
    PreferencesPublic,
    PreferencesUpdate,
    RoundPublic,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/me", tags=["me"])


# --- preferences -------------------------------------------------------------------------------------


def preferences_public(row: UserPreference, settings) -> PreferencesPublic:
    return PreferencesPublic(instructions=row.instructions, temperature=row.temperature, max_new_tokens=row.max_new_tokens,
                             theme=row.theme, max_instructions_chars=settings.max_instructions_chars,
                             max_new_tokens_limit=settings.max_new_tokens_limit)


@router.get("/preferences", response_model=PreferencesPublic)
def get_preferences(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> PreferencesPublic:
    return preferences_public(crud.get_preferences(session, user_id=pk(user)), settings)


@router.put("/preferences", response_model=PreferencesPublic)
def put_preferences(body: PreferencesUpdate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> PreferencesPublic:
    fields = body.model_dump(exclude_unset=True)
    if fields.get("instructions") is not None and len(fields["instructions"]) > settings.max_instructions_chars:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"instructions are {len(fields['instructions'])} characters; the limit is "
                            f"{settings.max_instructions_chars} (ASSISTANT_MAX_INSTRUCTIONS_CHARS)")
    if fields.get("max_new_tokens") is not None and fields["max_new_tokens"] > settings.max_new_tokens_limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"max_new_tokens {fields['max_new_tokens']} is over the limit of {settings.max_new_tokens_limit}")
    for key in ("instructions", "theme"):  # not nullable: null means "leave as is"
        if key in fields and fields[key] is None:
            del fields[key]
    return preferences_public(crud.save_preferences(session, user_id=pk(user), **fields), settings)


# --- API keys ------------------------------------------------------------------------------------------


def api_key_public(row: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at, last_used_at=row.last_used_at)


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_api_keys(user: CurrentUser, session: SessionDep) -> list[ApiKeyPublic]:
    return [api_key_public(k) for k in crud.list_api_keys(session, user_id=pk(user))]


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyCreate, user: SessionUser, session: SessionDep, request: Request,
                   settings: SettingsDep) -> ApiKeyCreated:
    if proxy.is_proxy_key(settings, token_from_request(request)):  # a key would outlive the front end's account
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API keys are made by signing in here, not through a trusted front end")
    user_id = pk(user)
    try:
        row, key = crud.create_api_key(session, user_id=user_id, name=body.name.strip() or "key")
    except crud.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    logger.info("user %s created API key %s (%s)", user_id, row.id, row.prefix)
    return ApiKeyCreated(**api_key_public(row).model_dump(), key=key)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_api_key(key_id: IdPath, user: SessionUser, session: SessionDep) -> Response:
    user_id = pk(user)
    if not crud.delete_api_key(session, user_id=user_id, key_id=key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key {key_id} not found")
    logger.info("user %s revoked API key %s", user_id, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- the adapter -------------------------------------------------------------------------------------


@router.get("/adapter", response_model=MyAdapterPublic)
def get_my_adapter(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> MyAdapterPublic:
    user_id = pk(user)
    resolved = adapter_store.resolve_for_user(settings, session, user_id)
    own = adapter_store.active_version(session, user_id)
    return MyAdapterPublic(policy=resolved.policy, active_version=own.version if own else None, active_label=resolved.label,
                           versions=[version_public(v) for v in versions_of(session, user_id=user_id)])


@router.delete("/adapter", response_model=MyAdapterPublic)
def reset_my_adapter(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> MyAdapterPublic:
    user_id = pk(user)
    n = adapter_store.erase_user_adapters(settings, session, user_id=user_id, reason="reset by the user")
    logger.info("user %s reset their adapter (%d versions retired)", user_id, n)
    return get_my_adapter(user, session, settings)


# --- what it learned -----------------------------------------------------------------------------------


def _counts(session: Session, user_id: int, after: datetime | None, until: datetime | None) -> LabelCounts:
    def window(stmt, created):
        if after is not None:
            stmt = stmt.where(created > after)
        if until is not None:
            stmt = stmt.where(created <= until)
        return stmt

    rows = session.exec(window(select(Feedback.rating, func.count()).where(Feedback.user_id == user_id,
                                                                       col(Feedback.source).in_(PERSON_SOURCES))
                               .group_by(Feedback.rating), col(Feedback.created_at))).all()
    by = {r.value if hasattr(r, "value") else r: n for r, n in rows}
    ranks = session.exec(window(select(func.count()).select_from(Ranking).where(Ranking.user_id == user_id),
                                col(Ranking.created_at))).one()
    return LabelCounts(up=int(by.get("up", 0)), down=int(by.get("down", 0)), rankings=int(ranks))


def _round(session: Session, user_id: int, row: AdapterVersion, after: datetime | None) -> RoundPublic:
    r = Readings.of(row.metrics)
    return RoundPublic(version=row.version, label=adapter_store.label_of(row), status=row.status.value, created_at=row.created_at,
                       new_labels=_counts(session, user_id, after, row.created_at),
                       reward_labels=r.reward.labels if r.reward else None,
                       heldout_accuracy=r.reward.accuracy if r.reward else None, win_rate_vs_base=r.win_rate_vs_base,
                       reward=r.mean_reward, base_reward=r.base_mean_reward, reason=row.reason)


@router.get("/learned", response_model=LearnedPublic)
def get_learned(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> LearnedPublic:
    user_id = pk(user)
    resolved = adapter_store.resolve_for_user(settings, session, user_id)
    versions = sorted(versions_of(session, user_id=user_id), key=lambda v: v.version)
    rounds, after = [], None
    for row in versions:
        rounds.append(_round(session, user_id, row, after))
        after = row.created_at
    rounds.append(RoundPublic(version=None, label=None, status=None, created_at=None,
                              new_labels=_counts(session, user_id, after, None), reward_labels=None, heldout_accuracy=None,
                              win_rate_vs_base=None, reward=None, base_reward=None, reason=None))
    # Traits from the adapter that serves the user, else their newest trained round.
    active = adapter_store.active_version(session, user_id)
    def traits_of(v: AdapterVersion | None) -> list[dict[str, Any]]:
        r = Readings.of(v.metrics) if v is not None else None
        return [t.model_dump() for t in r.reward.top_traits] if r and r.reward else []

    source = active or next((v for v in reversed(versions) if traits_of(v)), None)
    traits = traits_of(source)
    return LearnedPublic(policy=resolved.policy, served_label=resolved.label, totals=_counts(session, user_id, None, None),
                         traits=traits, traits_from=adapter_store.label_of(source) if source else None, rounds=rounds)
