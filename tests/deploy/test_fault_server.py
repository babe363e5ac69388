"""kill -9 the web server under a load of ratings, restart it: no acknowledged rating is lost.

A real ``assistant serve --no-worker`` process on loopback; eight client threads rate distinct
assistant replies (seeded straight into the database) as fast as they can. The server is killed
with SIGKILL twice mid-load and restarted; afterwards every rating that got an HTTP 200 is in the
database exactly once, with the rating the client sent.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from sqlmodel import Session, select

from service.db import init_db, make_engine
from service.models import Feedback, User

from tests.learning.conftest import Seeder
from tests.servers import free_port, start_server, stop_server

pytestmark = pytest.mark.e2e

KILLS = 2
CLIENTS = 8


def server_env(settings) -> dict[str, str]:
    return {"PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "ASSISTANT_DATA_DIR": str(settings.data_dir)}


def test_kill_minus_nine_under_rating_load_loses_no_acknowledged_rating(make_settings, tmp_path):
    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = start_server(server_env(settings), port, log)
    acked: dict[int, str] = {}  # message id -> rating, for every HTTP 200
    try:
        httpx.post(f"{base}/api/auth/register", json={"username": "rater", "password": "pass-word-123"}).raise_for_status()
        token = httpx.post(f"{base}/api/auth/token", data={"username": "rater", "password": "pass-word-123"}).json()["access_token"]
        seeder = Seeder(engine)
        with Session(engine) as s:
            uid = s.exec(select(User.id).where(User.username == "rater")).one()
        messages = [m for i in range(200) for m in seeder.turn(uid, f"question {i}", [f"answer {i}a", f"answer {i}b"])]
        todo = list(messages)
        todo_lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
                while not stop.is_set():
                    with todo_lock:
                        if not todo:
                            return
                        mid = todo.pop()
                    rating = "up" if mid % 2 else "down"
                    try:
                        r = http.post(f"/api/messages/{mid}/feedback", json={"rating": rating})
                    except httpx.TransportError:  # server down: not acknowledged; try it again later
                        with todo_lock:
                            todo.insert(0, mid)
                        time.sleep(0.2)
                        continue
                    if r.status_code == 200:
                        acked[mid] = rating
                    else:
                        assert r.status_code >= 500, r.text  # never a 4xx for a valid rating

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for _ in range(KILLS):
            before = len(acked)
            for _ in range(600):  # until 40 more ratings went through (or 600 polls)
                if len(acked) >= before + 40:
                    break
                time.sleep(0.05)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            server = start_server(server_env(settings), port, log)
        for t in threads:
            t.join(timeout=120)
        stop.set()
    finally:
        stop_server(server)
    assert len(acked) == len(messages), "the load did not finish (see server.log)"
    with Session(engine) as s:
        rows = s.exec(select(Feedback).where(Feedback.user_id == uid)).all()
    by_message: dict[int, list[str]] = {}
    for row in rows:
        by_message.setdefault(row.message_id, []).append(row.rating.value)
    missing = [m for m in acked if m not in by_message]
    assert not missing, f"{len(missing)} acknowledged ratings lost, e.g. {missing[:5]}"
    assert all(by_message[m] == [acked[m]] for m in acked)  # exactly once, as sent
