"""Open WebUI's thumbs, fetched as they are clicked (issue 31): the learning worker reads Open WebUI's
feedback export every ``ASSISTANT_OPENWEBUI_SYNC_S`` seconds (``GET /api/v1/evaluations/feedbacks/all/export``
with an admin's API key, ``ASSISTANT_OPENWEBUI_TOKEN``) and imports it (``service.openwebui_import``):
a thumbs-down given in Open WebUI is a label here within that interval, and a rating deleted there is
deleted here. Nothing to install in Open WebUI; the manual import stays for history.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from sqlmodel import Session

from service.openwebui_import import ImportReport, import_feedback
from service.settings import Settings

logger = logging.getLogger(__name__)

EXPORT_PATH = "/api/v1/evaluations/feedbacks/all/export"


class SyncError(RuntimeError):
    """Open WebUI could not be read (down, wrong key, not its export): nothing was changed here."""


def fetch_feedback(url: str, token: str, timeout: float = 30.0) -> list[Any]:
    """Open WebUI's whole feedback table, as its admin export returns it."""
    try:
        r = httpx.get(url.rstrip("/") + EXPORT_PATH, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SyncError(f"cannot reach Open WebUI at {url}: {exc}") from exc
    if r.status_code != 200:
        raise SyncError(f"Open WebUI answered {r.status_code} to {EXPORT_PATH} (ASSISTANT_OPENWEBUI_TOKEN must be an "
                        "admin's API key)")
    try:
        records = r.json()
    except ValueError as exc:
        raise SyncError(f"Open WebUI's {EXPORT_PATH} did not answer JSON") from exc
    if not isinstance(records, list):
        raise SyncError(f"Open WebUI's {EXPORT_PATH} did not answer a list of feedback records")
    return records


def sync_feedback(settings: Settings, db) -> ImportReport:
    """One sync: fetch the export, import it, delete what left it. Raises SyncError, changing nothing,
    when Open WebUI cannot be read."""
    if not (settings.openwebui_url and settings.openwebui_token):
        raise SyncError("set ASSISTANT_OPENWEBUI_URL and ASSISTANT_OPENWEBUI_TOKEN to sync Open WebUI's ratings")
    records = fetch_feedback(settings.openwebui_url, settings.openwebui_token)
    with Session(db) as session:
        return import_feedback(session, records, sync_deletions=True)
