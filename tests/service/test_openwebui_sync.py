"""Issue 31: Open WebUI's thumbs reach training as they are clicked, and deletions there reach here.
Before, a rating arrived only through a manual export and import, and one deleted in Open WebUI
stayed in training data. The stand-in below is an HTTP server answering Open WebUI's admin export
route with records in Open WebUI's own format (no Open WebUI process runs in ``make test``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session

from learning.worker import Worker
from service import crud
from service.models import Rating
from service.openwebui_sync import EXPORT_PATH, SyncError, sync_feedback
from tests.service.test_openwebui_import import MODEL, PROXY_KEY, _as, _ask, _record

ADMIN_KEY = "sk-owui-admin-key"


@pytest.fixture
def open_webui():
    """An HTTP server with Open WebUI's export route; ``records`` is what it exports now."""
    records: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path != EXPORT_PATH or self.headers.get("Authorization") != f"Bearer {ADMIN_KEY}":
                self.send_response(401 if self.path == EXPORT_PATH else 404)
                self.end_headers()
                return
            body = json.dumps(records).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", records
    server.shutdown()


def _ratings(client, username: str) -> dict[int, tuple]:
    with Session(client.app.state.db) as s:
        user = crud.get_user_by_username(s, username=username)
        return {f.message_id: (f.rating, f.score, f.source) for f in crud.list_feedback(s, user_id=user.id)}


def test_ratings_sync_from_open_webui_and_deletions_there_reach_here(app_factory, open_webui):
    url, records = open_webui
    client = app_factory(proxy_key=PROXY_KEY)
    ann = _as("ann-sync")
    egg, tea = _ask(client, ann, "How do I boil an egg?"), _ask(client, ann, "How do I make tea?")
    records += [_record("ann-sync", "How do I boil an egg?", egg, 1, "accurate_information", rid="r1", score=8),
                _record("ann-sync", "How do I make tea?", tea, -1, "too_verbose", rid="r2")]
    settings = client.app.state.settings.model_copy(update={"openwebui_url": url, "openwebui_token": ADMIN_KEY})
    db = client.app.state.db

    report = sync_feedback(settings, db)
    assert (report.imported, report.deleted) == (2, 0)
    got = _ratings(client, "owui-ann-sync")
    assert {v[:2] for v in got.values()} == {(Rating.up, 8), (Rating.down, None)}
    assert {v[2] for v in got.values()} == {"openwebui"}

    # Ann's own rating here (not from Open WebUI) is never touched by a sync
    fried = client.post("/v1/chat/completions", headers=ann, json={
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "How do I fry an egg?"}]}).json()["id"]
    assert client.post(f"/api/messages/{fried}/feedback", json={"rating": "up"}, headers=ann).status_code == 200

    # Ann deletes her thumbs-down on the tea in Open WebUI: the next sync deletes it here
    records.pop()
    report = sync_feedback(settings, db)
    assert (report.imported, report.unchanged, report.deleted) == (0, 1, 1)
    after = _ratings(client, "owui-ann-sync")
    assert sorted(v[:2] for v in after.values() if v[2] == "openwebui") == [(Rating.up, 8)]
    assert after[int(fried)] == (Rating.up, None, "human") and len(after) == 2

    # Open WebUI unreachable or the key wrong: an error, and nothing deleted
    for bad in (settings.model_copy(update={"openwebui_token": "wrong"}),
                settings.model_copy(update={"openwebui_url": "http://127.0.0.1:9"})):
        with pytest.raises(SyncError):
            sync_feedback(bad, db)
    assert _ratings(client, "owui-ann-sync") == after


def test_the_learning_worker_syncs_on_its_own(app_factory, open_webui):
    url, records = open_webui
    client = app_factory(proxy_key=PROXY_KEY)
    ben = _as("ben-sync")
    reply = _ask(client, ben, "Name a river.")
    records.append(_record("ben-sync", "Name a river.", reply, -1, "not_helpful", rid="b1"))
    settings = client.app.state.settings.model_copy(update={"openwebui_url": url, "openwebui_token": ADMIN_KEY,
                                                            "openwebui_sync_s": 5})
    worker = Worker(settings, client.app.state.db, poll_seconds=3600).start()
    try:
        deadline = time.monotonic() + 30
        while not _ratings(client, "owui-ben-sync") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    assert [v[:2] for v in _ratings(client, "owui-ben-sync").values()] == [(Rating.down, None)]
