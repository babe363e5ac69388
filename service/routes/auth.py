"""Accounts: register, sign in (OAuth2 password flow + session cookie), sign out, who am I."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service import crud
from service.auth import COOKIE_NAME, CurrentUser, SessionDep, SettingsDep, authenticate, create_token
from service.models import HARM_REASONS, NEGATIVE_REASONS, POSITIVE_REASONS
from service.schemas import Token, UserCreate, UserPublic

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["auth"])


def public(user) -> UserPublic:
    return UserPublic(id=user.id, username=user.username, role=user.role.value)


@router.post("/auth/register", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
def register(body: UserCreate, session: SessionDep) -> UserPublic:
    if body.username.lower() == "admin":
        raise HTTPException(status.HTTP_409_CONFLICT, "username 'admin' is reserved for the operator account")
    try:
        user = crud.create_user(session, username=body.username, password=body.password)
    except crud.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    logger.info("registered user %s", user.id)
    return public(user)


@router.post("/auth/token", response_model=Token)
def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], response: Response, session: SessionDep, settings: SettingsDep) -> Token:
    if len(form.password) > 128 or len(form.username) > 64:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "username or password too long")
    # A NUL cannot be in a username, and PostgreSQL refuses to compare text containing one.
    user = None if "\x00" in form.username else authenticate(session, form.username, form.password)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    access = create_token(settings, user)
    response.set_cookie(
        COOKIE_NAME, access, httponly=True, samesite="lax", max_age=settings.token_ttl_minutes * 60,
        secure=not settings.dev_mode and settings.host not in ("127.0.0.1", "localhost"), path="/",
    )
    return Token(access_token=access)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(response: Response) -> Response:
    response.delete_cookie(COOKIE_NAME, path="/")
    response.status_code = status.HTTP_204_NO_CONTENT
    return response


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    return public(user)


@router.get("/feedback/reasons")
def reasons(_: CurrentUser) -> dict:
    return {"positive": list(POSITIVE_REASONS), "negative": list(NEGATIVE_REASONS), "harm": list(HARM_REASONS)}
