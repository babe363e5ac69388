"""Who is asking: sign-in, signed session tokens (JWT HS256), API keys, and the request dependencies.

A token is accepted from the ``Authorization: Bearer`` header or from the
HttpOnly session cookie the web UI gets at sign-in; an API key (``ak_…``, made
on the Settings page or with ``POST /api/me/api-keys``) from the header. Tokens,
keys and passwords are never logged.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from datetime import timedelta, timezone
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session, select

from service import crud, proxy
from service.api_keys import API_KEY_PREFIX, hash_api_key
from service.models import ApiKey, Role, User, utcnow
from service.passwords import check_password
from service.ratelimit import SlidingWindow
from service.settings import Settings

logger = logging.getLogger(__name__)

COOKIE_NAME = "assistant_session"
def create_token(settings: Settings, user: User) -> str:
    now = int(time.time())
    payload = {"sub": str(user.id), "role": user.role.value, "tv": user.token_version, "ts": user.token_salt, "iat": now,
               "exp": now + settings.token_ttl_minutes * 60}
    return jwt.encode(payload, settings.secret_key, algorithm="HS256")


def _claims(settings: Settings, token: str) -> tuple[int, int, str] | None:
    """(user id, token version, account salt) of a valid token, else None (expired, forged or malformed)."""
    try:
        payload = jwt.decode(token, settings.secret_key, algorithms=["HS256"], options={"require": ["sub", "exp", "ts"]})
        user_id, version, salt = int(payload["sub"]), int(payload.get("tv", 0)), payload["ts"]
    except (jwt.PyJWTError, ValueError, KeyError, TypeError, OverflowError):
        return None
    return (user_id, version, salt) if 1 <= user_id <= 2**31 - 1 and isinstance(salt, str) and salt else None


def decode_token(settings: Settings, token: str) -> int | None:
    """The user id in a valid token, else None (expired, forged or malformed); see ``user_for_token``."""
    claims = _claims(settings, token)
    return claims[0] if claims else None


_LAST_USED_EVERY = timedelta(minutes=1)  # at most one write per key per minute, not one per request


def _user_for_api_key(db, key: str) -> User | None:
    with Session(db, expire_on_commit=False) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).first()
        if row is None:
            return None
        now = utcnow()
        last = row.last_used_at
        if last is None or now - (last if last.tzinfo else last.replace(tzinfo=timezone.utc)) > _LAST_USED_EVERY:
            row.last_used_at = now
            session.add(row)
            session.commit()
        user = session.get(User, row.user_id)
        if user is not None:
            session.expunge(user)
        return user


def user_for_token(settings: Settings, db, token: str | None) -> User | None:
    """The user a token or API key signs in, read in a short session of its own (closed before
    returning, so a caller that then waits on the engine holds no database connection); None if the
    token is invalid or was ended by signing out or a password change (its version is older), or
    the API key was revoked."""
    if token and token.startswith(API_KEY_PREFIX):
        return _user_for_api_key(db, token)
    claims = _claims(settings, token) if token else None
    if claims is None:
        return None
    with Session(db, expire_on_commit=False) as session:
        user = session.get(User, claims[0])
        # the salt binds the token to this row: a later account that got a deleted one's id is not it
        if user is None or user.token_version != claims[1] or not hmac.compare_digest(user.token_salt, claims[2]):
            return None
        session.expunge(user)
        return user


def end_sessions(session: Session, user: User) -> None:
    """Sign ``user`` out everywhere: every token issued so far stops working."""
    row = session.get(User, user.id)
    if row is None:
        raise LookupError(f"user {user.id} no longer exists")
    row.token_version += 1
    session.add(row)
    session.commit()


class SignInThrottle:
    """Failed sign-ins per account and per client address in a sliding window (issue 12, finding 5):
    past either limit, sign-in answers 429 until the window's oldest failure ages out. An attempt
    counts from before its password is checked (``reserve``) until it proves right (``succeeded``).

    Slowing, not locking out (issue 28, M6): an address that signed in to an account before is the
    owner's, and the account's limit does not apply to it (its own address limit does), so anyone
    failing on purpose against ``admin`` slows every other address down but cannot lock the
    operator out of their own."""

    KNOWN_PER_ACCOUNT = 16  # addresses remembered per account (the newest)
    KNOWN_ACCOUNTS = 10_000  # accounts remembered (the oldest forgotten first)

    def __init__(self, settings: Settings) -> None:
        window = settings.sign_in_window_s
        self.accounts = SlidingWindow(settings.sign_in_failures_per_account, window)
        self.addresses = SlidingWindow(settings.sign_in_failures_per_address, window)
        self._known: dict[str, list[str]] = {}  # account -> addresses that signed in to it
        self._lock = threading.Lock()

    def _is_known(self, account: str, address: str) -> bool:
        return address in self._known.get(account, ())

    def retry_after(self, account: str, address: str) -> float | None:
        limits = [self.addresses.retry_after(address)]
        if not self._is_known(account, address):
            limits.append(self.accounts.retry_after(account))
        waits = [w for w in limits if w is not None]
        return max(waits) if waits else None

    def reserve(self, account: str, address: str) -> float | None:
        """Count this attempt as a failure *before* the password is checked (None: go ahead; else
        the seconds to wait, nothing counted). Counting only after the slow hash let a burst of
        concurrent guesses all pass the check first, about 40 per window instead of 5 (issue 28,
        M6); ``succeeded`` takes the reservation back."""
        with self._lock:
            wait = self.retry_after(account, address)
            if wait is None:
                if not self._is_known(account, address):
                    self.accounts.add(account)
                self.addresses.add(address)
            return wait

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            if not self._is_known(account, address):
                self.accounts.discard(account)
            self.addresses.discard(address)
            known = [a for a in self._known.pop(account, []) if a != address] + [address]
            self._known[account] = known[-self.KNOWN_PER_ACCOUNT:]
            if len(self._known) > self.KNOWN_ACCOUNTS:
                self._known.pop(next(iter(self._known)))



def authenticate(session: Session, username: str, password: str) -> User | None:
    user = crud.get_user_by_username(session, username=username)
    return user if check_password(password, user.password_hash if user else None) else None


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


def client_address(request: Request) -> str:
    """The address the sign-in and registration limits key on (issue 28, M2/M6): the TCP peer, or,
    when the peer is a trusted reverse proxy (``ASSISTANT_TRUSTED_PROXIES``), the nearest address of
    its X-Forwarded-For that is not one (a client can prepend anything; proxies append)."""
    peer = request.client.host if request.client else "unknown"
    trusted = request.app.state.trusted_proxies
    if not trusted(peer):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


def get_current_user(request: Request, settings: SettingsDep) -> User:
    """The signed-in user. Not a ``SessionDep``: a route that waits on the engine (a reply
    generating) must not hold a database connection meanwhile (issue 12, finding 4)."""
    token = token_from_request(request)
    if proxy.is_proxy_key(settings, token):
        allowed = request.app.state.proxy_addresses
        if allowed is not None and not allowed(client_address(request)):  # issue 28, L1: a leaked key is not enough
            logger.warning("proxy key refused from %s (not in ASSISTANT_PROXY_ADDRESSES)", client_address(request))
            raise _UNAUTHORIZED
        try:
            return proxy.user_for_proxy(request.app.state.db, request.headers, request.app.state.proxy_new_users,
                                        settings.proxy_jwt_secret)
        except proxy.ProxyError as exc:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
    user = user_for_token(settings, request.app.state.db, token)
    if user is None:
        raise _UNAUTHORIZED
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_caller(request: Request, settings: SettingsDep) -> User | None:
    """For routes that read nothing of a user's (``GET /v1/models``): a signed-in user, or None for the
    trusted proxy itself, which creates no product user here (issue 31: Open WebUI lists models
    for its users, with or without their headers, and each listing made an account)."""
    token = token_from_request(request)
    if proxy.is_proxy_key(settings, token):
        allowed = request.app.state.proxy_addresses
        if allowed is not None and not allowed(client_address(request)):
            logger.warning("proxy key refused from %s (not in ASSISTANT_PROXY_ADDRESSES)", client_address(request))
            raise _UNAUTHORIZED
        return None
    return get_current_user(request, settings)


Caller = Annotated[User | None, Depends(get_caller)]


SESSION_ONLY = ("this needs a signed-in session (sign in with your password): an API key may chat, rate, read and call "
                "/v1, but not manage keys, export or delete data, or sign sessions out")


def require_session(request: Request, user: CurrentUser) -> User:
    """The signed-in user, when the request is not signed with an API key (audit 2026-12-05, M4: a leaked
    key must not mint keys that outlive it, export everything or delete the account). The trusted proxy
    is its users' session."""
    token = token_from_request(request)
    if token and token.startswith(API_KEY_PREFIX):
        raise HTTPException(status.HTTP_403_FORBIDDEN, SESSION_ONLY)
    return user


SessionUser = Annotated[User, Depends(require_session)]


NOT_APPROVED = "your account is waiting for an operator's approval: you can sign in, but not chat or rate yet"


def require_approved(user: CurrentUser) -> User:
    if not user.approved:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=NOT_APPROVED)
    return user


ApprovedUser = Annotated[User, Depends(require_approved)]


def require_operator(user: CurrentUser) -> User:
    if user.role != Role.operator:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="operator role required")
    return user


OperatorUser = Annotated[User, Depends(require_operator)]


def address_matcher(spec: str):
    """``spec``: comma-separated addresses or CIDR networks (a name that is neither, such as the test
    client's ``testclient``, matches itself). Returns address -> bool."""
    import ipaddress

    networks, names = [], set()
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            names.add(item)

    def matches(address: str) -> bool:
        if address in names:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in networks)

    return matches
