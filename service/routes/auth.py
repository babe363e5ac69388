"""Accounts: register, sign in (OAuth2 password flow + session cookie), sign out, who am I."""

from __future__ import annotations

import logging
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service import crud
from service.api_keys import API_KEY_PREFIX
from service.auth import (
    COOKIE_NAME,
    SESSION_ONLY,
    CurrentUser,
    SessionDep,
    SettingsDep,
    SignInThrottle,
    client_address,
    authenticate,
    create_token,
    end_sessions,
    token_from_request,
    user_for_token,
)
from service.models import HARM_REASONS, NEGATIVE_REASONS, POSITIVE_REASONS, pk
from service.ratelimit import SlidingWindow
from service.schemas import Token, UserCreate, UserPublic

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["auth"])


def public(user) -> UserPublic:
    return UserPublic(id=user.id, username=user.username, role=user.role.value, approved=user.approved)


async def _hashing(request: Request, fn):
    """``fn()`` (it hashes or checks a password) on the password threads (``ASSISTANT_PASSWORD_THREADS``):
    argon2 is slow on purpose, and a flood of sign-ins must not hold every route thread (issue 28, M7)."""
    return await to_thread.run_sync(fn, limiter=request.app.state.passwords)


@router.post("/auth/register", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
async def register(body: UserCreate, request: Request, session: SessionDep, settings: SettingsDep) -> UserPublic:
    mode = settings.registration_mode
    if mode == "closed":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "registration is closed on this server; ask an operator for an account")
    limiter: SlidingWindow = request.app.state.registrations
    wait = limiter.hit(client_address(request))
    if wait is not None:
        logger.warning("registration refused for %s: over %d per hour", client_address(request), settings.registration_limit)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many accounts registered from this address; try later",
                            headers={"Retry-After": str(int(wait) + 1)})
    if body.username.lower() == "admin":
        raise HTTPException(status.HTTP_409_CONFLICT, "username 'admin' is reserved for the operator account")
    try:
        user = await _hashing(request, lambda: crud.create_user(session, username=body.username, password=body.password,
                                                                approved=mode == "open"))
    except crud.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    logger.info("registered user %s (%s)", user.id, "approved" if user.approved else "waiting for approval")
    return public(user)


@router.post("/auth/token", response_model=Token)
async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, response: Response, session: SessionDep,
          settings: SettingsDep) -> Token:
    if len(form.password) > 128 or len(form.username) > 64:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "username or password too long")
    throttle: SignInThrottle = request.app.state.sign_in
    address, account = client_address(request), form.username.strip().lower()
    wait = throttle.reserve(account, address)  # counted as a failure until the password proves right
    if wait is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed sign-ins; wait before trying again",
                            headers={"Retry-After": str(int(wait) + 1)})
    # A NUL cannot be in a username, and PostgreSQL refuses to compare text containing one.
    user = None if "\x00" in form.username else await _hashing(request, lambda: authenticate(session, form.username, form.password))
    if user is None:
        logger.warning("failed sign-in for %r from %s (%d in the window)", account[:64], address,
                       throttle.accounts.count(account))
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    throttle.succeeded(account, address)
    access = create_token(settings, user)
    response.set_cookie(
        COOKIE_NAME, access, httponly=True, samesite="lax", max_age=settings.token_ttl_minutes * 60,
        secure=settings.secure_cookies, path="/",
    )
    return Token(access_token=access)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, session: SessionDep, settings: SettingsDep, revoke_keys: bool = False) -> Response:
    """Sign out: the cookie is cleared and, if the request carries a valid token, every token of
    that user stops working (this browser, other devices, scripts holding a copy, open chat sockets
    at their next request); with ``?revoke_keys=true`` every API key of theirs is revoked too. An
    API key cannot sign sessions out (403): revoke the key instead."""
    token = token_from_request(request)
    if token and token.startswith(API_KEY_PREFIX):
        raise HTTPException(status.HTTP_403_FORBIDDEN, SESSION_ONLY)
    user = user_for_token(settings, request.app.state.db, token)
    if user is not None:
        end_sessions(session, user)
        logger.info("user %s signed out everywhere", user.id)
        if revoke_keys:
            user_id = pk(user)
            for key in crud.list_api_keys(session, user_id=user_id):
                crud.delete_api_key(session, user_id=user_id, key_id=pk(key))
            logger.info("user %s revoked every API key at sign-out", user.id)
    response.delete_cookie(COOKIE_NAME, path="/")
    response.status_code = status.HTTP_204_NO_CONTENT
    return response


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    return public(user)


@router.get("/feedback/reasons")
def reasons(_: CurrentUser) -> dict:
    return {"positive": list(POSITIVE_REASONS), "negative": list(NEGATIVE_REASONS), "harm": list(HARM_REASONS)}
