"""The FastAPI application factory.

``create_app(settings, engine=None)``: tests pass a shared engine; ``assistant
serve`` passes none and the app loads the model at start. The training
scheduler never runs inside this process's lifespan: ``assistant serve``
starts it as a separate worker process.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from sqlmodel import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from service import crud
from service.chat import ChatService
from service.db import init_db, make_engine
from service.engine.base import Engine
from service.metrics import Metrics
from service.routes import admin, auth, chat_ws, conversations, health, openai_compat
from service.settings import Settings, get_settings

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

        async def limited() -> dict:
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


def _bootstrap(settings: Settings, db) -> None:
    init_db(db)
    with Session(db) as session:
        if settings.admin_password:
            crud.ensure_admin(session, password=settings.admin_password)
            logger.info("operator account 'admin' is ready")
        crud.get_or_create_schedule(session, settings=settings)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
        app.state.chat = ChatService(settings, db, app.state.engine, metrics)
        logger.info("serving on http://%s:%s", settings.host, settings.port)
        try:
            yield
        finally:
            if owns_engine:
                app.state.engine.stop()

    app = FastAPI(title="assistant", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.db, app.state.metrics, app.state.engine = settings, db, metrics, engine
    if engine is not None:
        app.state.chat = ChatService(settings, db, engine, metrics)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(request.method, getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    for module in (health, auth, conversations, chat_ws, openai_compat, admin):
        app.include_router(module.router)
    if FRONTEND_DIR.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn service.app:app_from_env --factory`` (settings from ASSISTANT_* env)."""
    return create_app(Settings())
