"""Passwords (argon2), signed session tokens (JWT HS256), and the request dependencies.

A token is accepted from the ``Authorization: Bearer`` header or from the
HttpOnly session cookie the web UI gets at sign-in. Tokens and passwords are
never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session

from service.models import Role, User
from service.settings import Settings

logger = logging.getLogger(__name__)

COOKIE_NAME = "assistant_session"
_hasher = PasswordHasher()
# Verifying against this keeps the timing of "no such user" close to "wrong password".
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_token(settings: Settings, user: User) -> str:
    now = int(time.time())
    payload = {"sub": str(user.id), "role": user.role.value, "iat": now, "exp": now + settings.token_ttl_minutes * 60}
    return jwt.encode(payload, settings.secret_key, algorithm="HS256")


def decode_token(settings: Settings, token: str) -> int | None:
    """The user id in a valid token, else None (expired, forged or malformed)."""
    try:
        payload = jwt.decode(token, settings.secret_key, algorithms=["HS256"], options={"require": ["sub", "exp"]})
        return int(payload["sub"])
    except (jwt.PyJWTError, ValueError, KeyError):
        return None


def authenticate(session: Session, username: str, password: str) -> User | None:
    from service import crud

    user = crud.get_user_by_username(session, username=username)
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash) else None


# --- dependencies -------------------------------------------------------------

def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request):
    with Session(request.app.state.db, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]

_UNAUTHORIZED = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="not signed in: send a Bearer token from POST /api/auth/token or sign in on the web UI",
    headers={"WWW-Authenticate": "Bearer"},
)


def token_from_request(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE_NAME)


def get_current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    token = token_from_request(request)
    if not token:
        raise _UNAUTHORIZED
    user_id = decode_token(settings, token)
    user = session.get(User, user_id) if user_id is not None else None
    if user is None:
        raise _UNAUTHORIZED
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_operator(user: CurrentUser) -> User:
    if user.role != Role.operator:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="operator role required")
    return user


OperatorUser = Annotated[User, Depends(require_operator)]
