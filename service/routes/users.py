"""Operator user management: list accounts, approve self-registered ones, create accounts.

    GET  /api/admin/users                   every account, with its label counts (approval queue first)
    POST /api/admin/users                   create an approved account (201; 409 if the name is taken)
    POST /api/admin/users/{user_id}/approve let a waiting account chat, rate and count for training
    POST /api/admin/users/{user_id}/suspend the reverse, at once: not approved (no chat, no rating, its labels
                                            out of every training run), every session ended, every API key revoked
    DELETE /api/admin/users/{user_id}       delete the account and everything of it (as its owner would)
    POST /api/admin/users/{user_id}/shared-pool {"excluded": true|false}: keep the user's labels and prompts
                                            out of the shared models (global adapter, population reward, harm
                                            head) from the next run on; their own adapter still learns from them

With ``ASSISTANT_REGISTRATION=approval`` (the default outside dev mode) self-registered accounts
wait here; with ``closed`` this is the only way in.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import func
from sqlmodel import Session, select

from service import adapter_store, crud
from service.auth import OperatorUser, SessionDep, SettingsDep, end_sessions
from service.models import Feedback, Ranking, Role, User, pk
from service.schemas import IdPath, SharedPoolUpdate, UserAdminPublic, UserCreate

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/admin/users", tags=["users"])


def _counts(session: Session, model) -> dict[int, int]:
    return dict(session.exec(select(model.user_id, func.count()).group_by(model.user_id)).all())


def _public(user: User, feedback: dict[int, int], rankings: dict[int, int]) -> UserAdminPublic:
    user_id = pk(user)
    return UserAdminPublic(id=user_id, username=user.username, role=user.role.value, approved=user.approved,
                           created_at=user.created_at.isoformat(), feedback=feedback.get(user_id, 0),
                           rankings=rankings.get(user_id, 0), shared_pool_excluded=user.shared_pool_excluded)


@router.get("", response_model=list[UserAdminPublic])
def list_users(_: OperatorUser, session: SessionDep) -> list[UserAdminPublic]:
    fb, rk = _counts(session, Feedback), _counts(session, Ranking)
    users = sorted(crud.list_users(session), key=lambda u: (u.approved, u.id))
    return [_public(u, fb, rk) for u in users]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UserAdminPublic)
def create_user(body: UserCreate, operator: OperatorUser, session: SessionDep) -> UserAdminPublic:
    if body.username.lower() == "admin":
        raise HTTPException(status.HTTP_409_CONFLICT, "username 'admin' is reserved for the operator account")
    try:
        user = crud.create_user(session, username=body.username, password=body.password, role=Role.user, approved=True)
    except crud.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    logger.info("operator %s created user %s", operator.username, user.id)
    return _public(user, {}, {})


@router.post("/{user_id}/approve", response_model=UserAdminPublic)
def approve_user(user_id: IdPath, operator: OperatorUser, session: SessionDep) -> UserAdminPublic:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    if not user.approved:
        user.approved = True
        session.add(user)
        session.commit()
        logger.info("operator %s approved user %s", operator.username, user_id)
    return _public(user, _counts(session, Feedback), _counts(session, Ranking))


def _other_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    if user.role == Role.operator:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the operator account cannot be suspended, excluded or deleted here")
    return user


@router.post("/{user_id}/suspend", response_model=UserAdminPublic)
def suspend_user(user_id: IdPath, operator: OperatorUser, session: SessionDep) -> UserAdminPublic:
    """Stop an account now (audit 2026-12-05, M8): an operator who sees a poisoner on the dashboard acts
    before the next run. Its labels stay stored (approve it again to restore it) but no run reads them."""
    user = _other_user(session, user_id)
    user.approved = False
    session.add(user)
    session.commit()
    end_sessions(session, user)  # open sockets end at their next request
    for key in crud.list_api_keys(session, user_id=user_id):
        crud.delete_api_key(session, user_id=user_id, key_id=pk(key))
    logger.warning("operator %s suspended user %s", operator.username, user_id)
    return _public(user, _counts(session, Feedback), _counts(session, Ranking))


@router.post("/{user_id}/shared-pool", response_model=UserAdminPublic)
def set_shared_pool(user_id: IdPath, body: SharedPoolUpdate, operator: OperatorUser, session: SessionDep) -> UserAdminPublic:
    """Keep a user's labels and prompts out of the shared models, or let them back (audit 2026-12-05,
    M8): for a user the pool audit shows favouring flagged replies, without suspending them."""
    user = _other_user(session, user_id)
    if user.shared_pool_excluded != body.excluded:
        user.shared_pool_excluded = body.excluded
        session.add(user)
        session.commit()
        logger.warning("operator %s %s user %s the shared pool", operator.username,
                       "excluded" if body.excluded else "let back into", user_id)
    return _public(user, _counts(session, Feedback), _counts(session, Ranking))


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(user_id: IdPath, operator: OperatorUser, session: SessionDep, settings: SettingsDep) -> None:
    """Delete an account: conversations, ratings, adapters and their files, as ``DELETE /api/me`` does."""
    _other_user(session, user_id)
    adapter_store.erase_user_adapters(settings, session, user_id=user_id, reason=f"operator {operator.username} deleted the account")
    crud.delete_account(session, user_id=user_id)
    logger.warning("operator %s deleted user %s", operator.username, user_id)
