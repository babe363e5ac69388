"""The FastAPI application factory.

``create_app(settings, engine=None)``: tests pass a shared engine; ``assistant
serve`` passes none and the app loads the model at start. The training
scheduler never runs inside this process's lifespan: ``assistant serve``
starts it as a separate worker process.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import crud
from service.chat import ChatService
from service.base_watch import BaseWatcher
from service.db import init_db, make_engine
from service.engine.base import Engine
from service.heavy_reads import HeavyReads
from service.metrics import Metrics
from service.middleware import BodySizeLimit, CookieOriginCheck, SecurityHeaders
from service.auth import SignInThrottle, address_matcher
from service.ratelimit import SlidingWindow
from service.routes import admin, auth, chat_ws, conversations, health, me, openai_compat, users
from service.routes.openai_compat import openai_error
from service.settings import DEFAULT_SECRET, Settings, get_settings

logger = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
# The only routes that answer without a signed-in user. Everything else requires auth (tested).
PUBLIC_ROUTES = {
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/token"),
    ("POST", "/api/auth/logout"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
}


def _bootstrap(settings: Settings, db) -> None:
    init_db(db)
    with Session(db) as session:
        if settings.admin_password:
            crud.ensure_admin(session, password=settings.admin_password)
            logger.info("operator account 'admin' is ready")
        crud.get_or_create_schedule(session, settings=settings)


def _dev_secret(data_dir: Path) -> str:
    """Dev mode's signing key: random, made once per data dir (mode 0600), never a published one."""
    path = data_dir / "dev-secret-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _is_openai(request: Request) -> bool:
    """Under /v1 every error is OpenAI's error object (its SDKs show nothing else)."""
    return request.url.path == "/v1" or request.url.path.startswith("/v1/")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.dev_mode and settings.secret_key == DEFAULT_SECRET:
        settings.secret_key = _dev_secret(settings.data_dir)
    db = make_engine(settings)
    _bootstrap(settings, db)
    metrics = Metrics()
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if owns_engine:  # a caller that passes an engine starts and stops it itself
            from service.engine import build_engine

            app.state.engine = build_engine(settings)
            app.state.engine.start()
            app.state.base_watch = BaseWatcher(settings, app.state.engine).start()
        app.state.chat = ChatService(settings, db, app.state.engine, metrics)
        logger.info("serving on http://%s:%s", settings.host, settings.port)
        try:
            yield
        finally:
            if owns_engine:
                app.state.base_watch.stop()
                app.state.engine.stop()

    # The interactive docs load scripts from a CDN on this origin: dev mode only (issue 12, finding 15).
    docs: dict[str, Any] = {} if settings.dev_mode else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="assistant", version="0.1.0", lifespan=lifespan, **docs)
    app.state.settings, app.state.db, app.state.metrics, app.state.engine = settings, db, metrics, engine
    app.state.base_watch = None  # set when the app owns its engine
    metrics.watch_engine(lambda: app.state.engine.stats() if app.state.engine is not None else {})
    metrics.watch_training(db, settings.metrics_refresh_s)
    app.state.registrations = SlidingWindow(settings.registration_limit, 3600.0)
    app.state.heavy_reads = HeavyReads(settings)
    app.state.passwords = CapacityLimiter(settings.password_threads)
    app.state.sign_in = SignInThrottle(settings)
    app.state.trusted_proxies = address_matcher(settings.trusted_proxies)
    app.state.proxy_new_users = SlidingWindow(settings.proxy_users_per_hour, 3600.0)
    app.state.proxy_addresses = address_matcher(settings.proxy_addresses) if settings.proxy_addresses.strip() else None
    app.state.ws_handshakes = SlidingWindow(settings.handshake_limit, 60.0)
    app.state.ws_sockets = {}  # user id -> open chat sockets (one event loop: no lock needed)
    if engine is not None:
        app.state.chat = ChatService(settings, db, engine, metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes each bad value back ("input"): a password, or a NaN or lone
        # surrogate that cannot even be written as JSON (a 500). Say where and what, never the value.
        errors = [{"type": e.get("type"), "loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")} for e in exc.errors()]
        if _is_openai(request):  # OpenAI answers a bad parameter with 400 and names it
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            param = ".".join(p for p in first["loc"] if p != "body") or None
            return openai_error(400, "; ".join(f"{'.'.join(p for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors),
                                param=param, code="invalid_value")
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if _is_openai(request):
            return openai_error(exc.status_code, str(exc.detail), param=getattr(exc, "param", None),
                                code=getattr(exc, "code", None) or ("invalid_api_key" if exc.status_code == 401 else None),
                                headers=getattr(exc, "headers", None))
        return await http_exception_handler(request, exc)

    @app.exception_handler(UnicodeEncodeError)
    async def invalid_text(request: Request, exc: UnicodeEncodeError):
        return JSONResponse({"detail": "text must be valid Unicode (a lone surrogate such as \\ud800 is not)"}, status_code=422)

    @app.exception_handler(PoolTimeout)
    async def database_busy(request: Request, exc: PoolTimeout):
        logger.warning("no free database connection within %.0f s for %s %s", settings.db_pool_timeout,
                       request.method, request.url.path)
        message = "the server is busy (no free database connection); retry shortly"
        if _is_openai(request):
            return openai_error(503, message, headers={"Retry-After": "2"})
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "2"})

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(request.method, getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(CookieOriginCheck, allowed=settings.origins)
    app.add_middleware(SecurityHeaders, hsts=settings.secure_cookies, docs=settings.dev_mode)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.host_allowlist)  # outermost: 400 first
    for module in (health, auth, conversations, chat_ws, openai_compat, admin, users, me):
        app.include_router(module.router)
    if FRONTEND_DIR.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn service.app:app_from_env --factory`` (settings from ASSISTANT_* env)."""
    return create_app(Settings())
