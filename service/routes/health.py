"""Health and metrics: public (no auth), for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    state = request.app.state
    db_ok = True
    try:
        with state.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        db_ok = False
    model_ok = state.engine is not None and getattr(state.engine, "tokenizer", None) is not None
    ok = db_ok and model_ok
    body = {"status": "ok" if ok else "degraded", "database": db_ok, "model": model_ok, "engine": state.engine.stats() if model_ok else None,
            "base": state.base_watch.describe() if getattr(state, "base_watch", None) is not None else None}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)  # documents text/plain in the OpenAPI schema
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
