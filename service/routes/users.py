"""Operator user management: list accounts, approve self-registered ones, create accounts.

    GET  /api/admin/users                   every account, with its label counts (approval queue first)
    POST /api/admin/users                   create an approved account (201; 409 if the name is taken)
    POST /api/admin/users/{user_id}/approve let a waiting account chat, rate and count for training

With ``ASSISTANT_REGISTRATION=approval`` (the default outside dev mode) self-registered accounts
wait here; with ``closed`` this is the only way in.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import func
from sqlmodel import Session, select

from service import crud
from service.auth import OperatorUser, SessionDep
from service.models import Feedback, Ranking, Role, User
from service.schemas import IdPath, UserAdminPublic, UserCreate

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/admin/users", tags=["users"])


def _counts(session: Session, model) -> dict[int, int]:
    return dict(session.exec(select(model.user_id, func.count()).group_by(model.user_id)).all())


def _public(user: User, feedback: dict[int, int], rankings: dict[int, int]) -> UserAdminPublic:
    return UserAdminPublic(id=user.id, username=user.username, role=user.role.value, approved=user.approved,
                           created_at=user.created_at.isoformat(), feedback=feedback.get(user.id, 0),
                           rankings=rankings.get(user.id, 0))


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
