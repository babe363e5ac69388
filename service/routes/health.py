"""Health and metrics, for load balancers and Prometheus.

Public by default. With ``ASSISTANT_METRICS_TOKEN`` set (issue 28, L6), ``/metrics`` answers only a
request with ``Authorization: Bearer <token>``, and ``/healthz`` tells anyone else only whether the
server is up (the engine's and base model's details go to the token's holder alone).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

router = APIRouter(tags=["health"])


def _monitor(request: Request) -> bool:
    """Whether the request may see the details: no token configured, or the right one sent."""
    token = request.app.state.settings.metrics_token
    if token is None:
        return True
    sent = request.headers.get("authorization", "")
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


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
    if not _monitor(request):
        body = {"status": body["status"]}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)  # documents text/plain in the OpenAPI schema
def metrics(request: Request) -> Response:
    if not _monitor(request):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send Authorization: Bearer <ASSISTANT_METRICS_TOKEN>",
                            headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
