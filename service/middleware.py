"""ASGI middleware: request body size limit, and the cookie-origin (CSRF) check."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import COOKIE_NAME

logger = logging.getLogger(__name__)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodySizeLimit:
    """Reject request bodies over ``limit`` bytes with 413 before they reach a route."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = f'{{"detail":"request body over {self.limit} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class CookieOriginCheck:
    """Refuse (403) an unsafe request that signs in with the session cookie from a foreign origin.

    A browser attaches the cookie to a form POST or ``fetch`` from any site (SameSite=Lax still
    sends it on top-level form POSTs); it always says where an unsafe request comes from in
    ``Origin`` (or at least ``Referer``), so one that carries the cookie is served only when that
    origin is allowed: a foreign one and a missing one are both refused. Requests signed in with
    ``Authorization: Bearer`` cannot be forged that way and are not checked; nor are those without
    the cookie. Registering and signing in do not act on the session the cookie holds, so a
    script's cookie jar may call them without an ``Origin``; a foreign one is refused there even
    without the cookie (SameSite=Lax sends none on a cross-site POST): a login CSRF would sign the
    victim into the attacker's account (issue 28, M5). The WebSocket does the same
    check at its handshake (service/routes/chat_ws.py).
    """

    SESSIONLESS = frozenset({"/api/auth/register", "/api/auth/token"})

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app, self.allowed = app, {o.rstrip("/") for o in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            origin, path = _origin_of(headers), scope.get("path")
            with_cookie = (f"{COOKIE_NAME}=" in headers.get("cookie", "")
                           and not headers.get("authorization", "").lower().startswith("bearer "))
            if origin is not None:  # a browser named where the request comes from
                refused = origin not in self.allowed and (with_cookie or path in self.SESSIONLESS)
            else:  # a script; a browser never leaves it out of an unsafe request
                refused = with_cookie and path not in self.SESSIONLESS
            if refused:
                logger.warning("%s %s from %s refused", scope["method"], path,
                               f"foreign origin {origin!r}" if origin is not None else "no Origin or Referer, with the session cookie")
                body = b'{"detail":"cross-site request refused: this origin may not use the session cookie"}'
                await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# The page's policy (also in frontend/index.html's meta tag), plus what only a header can say.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """CSP (with ``frame-ancestors 'none'``), nosniff, a referrer policy and, behind TLS, HSTS on
    every HTTP response. The dev-mode API docs (``/docs``, ``/redoc``) load their scripts from a
    CDN, so they get no CSP; outside dev mode they do not exist."""

    def __init__(self, app: ASGIApp, hsts: bool, docs: bool) -> None:
        self.app, self.hsts, self.docs = app, hsts, docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not (self.docs and scope.get("path", "").startswith(("/docs", "/redoc")))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                         (b"x-frame-options", b"DENY")]
                if csp:
                    extra.append((b"content-security-policy", CSP.encode()))
                if self.hsts:
                    extra.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _origin_of(headers: dict[str, str]) -> str | None:
    if "origin" in headers:
        return headers["origin"].rstrip("/")  # "null" (a sandboxed frame, a file) is never allowed
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"
    return None
