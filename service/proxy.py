"""Trusted-proxy mode: a chat front end (Open WebUI, LibreChat) in front of the product, one
connection for all its users, each of them still their own product user.

The front end sends the operator's proxy key (``ASSISTANT_PROXY_KEY``) as its API key and, per
request, the user headers Open WebUI forwards when ``ENABLE_FORWARD_USER_INFO_HEADERS=true``:
``X-OpenWebUI-User-Id`` (required), ``-Name``, ``-Email``, ``-Role``. With ``ASSISTANT_PROXY_JWT_SECRET``
(Open WebUI's ``FORWARD_USER_INFO_HEADER_JWT_SECRET``) the user comes only from the signed
``X-OpenWebUI-User-Jwt`` header Open WebUI then sends instead (HS256, issuer "open-webui", its
``sub`` the user id), so whoever holds the proxy key still cannot name a user. Each id maps to the product
user ``owui-<id>``, created on first sight (approved: the operator vouched for the proxy), with
no password (they cannot sign in on the web UI). Their adapter, limits and data are theirs alone.

A front end's background calls (titles, tags, follow-up questions, search queries) are not
conversations: ``is_task_prompt`` tells them apart, and the route serves them without keeping
them, so they neither list as conversations nor become training prompts.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets

import jwt
from sqlmodel import Session

from service import crud
from service.models import User

logger = logging.getLogger(__name__)

USER_ID_HEADER = "x-openwebui-user-id"
USER_JWT_HEADER = "x-openwebui-user-jwt"
JWT_ISSUER = "open-webui"
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,58}$")  # Open WebUI's ids are UUIDs
USERNAME_PREFIX = "owui-"

# The first words of known front ends' background prompts (Open WebUI's task templates all start
# "### Task:"; LibreChat's title prompt with the second).
TASK_PREFIXES = ("### Task:", "Please generate a concise, 5-word-or-less title")


def is_proxy_key(settings, token: str | None) -> bool:
    return bool(settings.proxy_key and token and hmac.compare_digest(token.encode(), settings.proxy_key.encode()))


class ProxyError(ValueError):
    pass


def signed_user_id(headers, secret: str) -> str:
    """The user id in Open WebUI's signed identity header, verified; ProxyError when it is missing,
    forged, from another issuer or expired."""
    token = (headers.get(USER_JWT_HEADER) or "").strip()
    if not token:
        raise ProxyError("ASSISTANT_PROXY_JWT_SECRET is set: the proxy key needs Open WebUI's signed X-OpenWebUI-User-Jwt "
                         "header (FORWARD_USER_INFO_HEADER_JWT_SECRET, the same secret)")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=JWT_ISSUER, options={"require": ["sub", "exp"]})
    except jwt.PyJWTError as exc:
        raise ProxyError(f"X-OpenWebUI-User-Jwt refused: {exc}") from exc
    return str(claims["sub"]).strip()


def user_for_proxy(db, headers, new_users=None, jwt_secret: str | None = None) -> User:
    """The product user a proxied request acts for (made on first sight). ``new_users``: the
    ``SlidingWindow`` that bounds how many users the proxy may create per hour (issue 28, M2: they
    are approved on creation, so a leaked key or a runaway front end could fill the pool). With
    ``jwt_secret`` the user is the signed header's, and the plain one is ignored."""
    external = signed_user_id(headers, jwt_secret) if jwt_secret else (headers.get(USER_ID_HEADER) or "").strip()
    if not external:
        raise ProxyError("the proxy key needs an X-OpenWebUI-User-Id header naming the user (Open WebUI: "
                         "ENABLE_FORWARD_USER_INFO_HEADERS=true)")
    if not EXTERNAL_ID.match(external):
        raise ProxyError("X-OpenWebUI-User-Id must be 1-58 letters, digits or _ . @ -")
    username = USERNAME_PREFIX + external
    with Session(db, expire_on_commit=False) as session:
        user = crud.get_user_by_username(session, username=username)
        if user is None:
            if new_users is not None and new_users.hit("proxy") is not None:
                logger.warning("trusted proxy: refused a new user %s (over ASSISTANT_PROXY_USERS_PER_HOUR)", username)
                raise ProxyError("the front end created more users this hour than ASSISTANT_PROXY_USERS_PER_HOUR allows; "
                                 "try again later or raise the limit")
            try:
                user = crud.create_user(session, username=username, password=secrets.token_urlsafe(32), approved=True)
                logger.info("trusted proxy: new user %s for %s", user.id, username)
            except crud.Conflict:  # made by a concurrent request meanwhile
                user = crud.get_user_by_username(session, username=username)
                if user is None:
                    raise LookupError(f"user {username} was made by a concurrent request and deleted meanwhile")
        session.expunge(user)
        return user


def is_task_prompt(messages: list[dict]) -> bool:
    """A front end's background call (a title, tags, follow-ups), not the user talking."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return last.lstrip().startswith(TASK_PREFIXES)
