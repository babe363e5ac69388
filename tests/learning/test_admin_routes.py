"""The operator API for the learning loop and a user's own adapter, through the real app."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from service import adapter_store
from service.models import AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, TrainingSnapshot

ADMIN_PASSWORD = "operator-password-123"


class NoEngine:
    """The admin routes never generate; the app only needs something shaped like an engine."""

    tokenizer = None

    def start(self): ...

    def stop(self): ...

    def stats(self):
        return {}


@pytest.fixture
def app(tmp_path):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", dev_mode=True, admin_password=ADMIN_PASSWORD)
    application = create_app(settings, engine=NoEngine())
    with TestClient(application, base_url="http://127.0.0.1:8000") as client:
        yield client, application.state.db


def login(client, username, password):
    r = client.post("/api/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def register(client, username):
    r = client.post("/api/auth/register", json={"username": username, "password": "correct-horse-1"})
    assert r.status_code == 201, r.text
    return r.json()["id"], login(client, username, "correct-horse-1")


def add_version(db, user_id, version, status=AdapterStatus.promoted, activate=True):
    with Session(db) as s:
        row = AdapterVersion(user_id=user_id, version=version, status=status, path=f"x/v{version}",
                             metrics={"gate/candidate/mean_reward": 0.1 * version})
        s.add(row)
        s.commit()
        if activate:
            adapter_store.activate(s, user_id=user_id, version_id=row.id)
        return row.id


def test_users_get_403_on_every_operator_route(app):
    client, _ = app
    _, user = register(client, "alice")
    for method, path, body in [
        ("post", "/api/admin/training-runs", {"user_ids": None}),
        ("get", "/api/admin/training-runs", None),
        ("get", "/api/admin/training-runs/1", None),
        ("get", "/api/admin/adapters", None),
        ("post", "/api/admin/users/1/adapter/rollback", None),
        ("get", "/api/admin/schedule", None),
        ("put", "/api/admin/schedule", {"cron": "0 3 * * *", "enabled": True}),
        ("get", "/api/admin/stats", None),
    ]:
        r = client.request(method, path, json=body, headers=user)
        assert r.status_code == 403, (method, path, r.text)
        assert client.request(method, path, json=body).status_code == 401


def test_queue_runs_with_conflicts_and_read_them_back(app):
    client, db = app
    op = login(client, "admin", ADMIN_PASSWORD)
    alice, _ = register(client, "alice")
    bob, _ = register(client, "bob")

    r = client.post("/api/admin/training-runs", json={"user_ids": [alice]}, headers=op)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    first = r.json()["id"]
    assert client.post("/api/admin/training-runs", json={"user_ids": [alice, bob]}, headers=op).status_code == 409
    assert client.post("/api/admin/training-runs", json={"user_ids": None}, headers=op).status_code == 409
    r = client.post("/api/admin/training-runs", json={"user_ids": [bob]}, headers=op)
    assert r.status_code == 202
    second = r.json()["id"]
    assert client.post("/api/admin/training-runs", json={"user_ids": [999]}, headers=op).status_code == 422

    with Session(db) as s:  # the worker finished the first run
        run = s.get(TrainingRun, first)
        run.status, run.progress = RunStatus.succeeded, 1.0
        s.add(run)
        s.commit()
        vid = add_version(db, alice, 1)
        s.add(TrainingResult(run_id=first, user_id=alice, adapter_version_id=vid, promoted=True, reason="promoted: x",
                             metrics={"ppo/steps": 2}, status=RunStatus.succeeded))
        s.add(TrainingSnapshot(run_id=first, sha256="f" * 64, stats={"models": {
            "reward/heldout_accuracy": 0.75, "reward/length_baseline_accuracy": 0.5, "reward/heldout_pairs": 4},
            "pool_audit": {str(alice): {"labels": 9, "thumbs_up": 5, "favoured": 5, "favoured_flagged": 4, "harm_flags": 0,
                                        "excluded": True, "reason": "4 of the 5 replies they favoured"}}}))
        s.commit()

    detail = client.get(f"/api/admin/training-runs/{first}", headers=op).json()
    assert detail["status"] == "succeeded" and detail["user_ids"] == [alice] and detail["trigger"] == "manual"
    assert detail["results"] == [{"user_id": alice, "adapter_version": 1, "promoted": True, "reason": "promoted: x",
                                  "metrics": {"ppo/steps": 2}}]
    assert [r["id"] for r in client.get("/api/admin/training-runs", headers=op).json()] == [second, first]
    assert client.get("/api/admin/training-runs/424242", headers=op).status_code == 404
    stats = client.get("/api/admin/stats", headers=op).json()
    assert stats["reward_model"]["accuracy"] == 0.75 and stats["reward_model"]["length_baseline_accuracy"] == 0.5
    assert stats["pool_audit"] == [{"user_id": alice, "username": "alice", "run_id": first, "labels": 9, "thumbs_up": 5,
                                    "favoured": 5, "favoured_flagged": 4, "harm_flags": 0, "excluded": True,
                                    "reason": "4 of the 5 replies they favoured"}]


def test_adapters_listing_and_rollback(app):
    client, db = app
    op = login(client, "admin", ADMIN_PASSWORD)
    alice, _ = register(client, "alice")
    add_version(db, None, 1)
    add_version(db, alice, 1)
    add_version(db, alice, 2)

    listing = client.get("/api/admin/adapters", headers=op).json()
    assert listing[0]["user_id"] is None and listing[0]["active_version"] == 1
    assert listing[1]["user_id"] == alice and listing[1]["active_version"] == 2
    assert [v["version"] for v in listing[1]["versions"]] == [2, 1]

    r = client.post(f"/api/admin/users/{alice}/adapter/rollback", headers=op)
    assert r.status_code == 200 and r.json()["active_version"] == 1
    assert [v["status"] for v in r.json()["versions"]] == ["retired", "promoted"]
    assert client.post("/api/admin/users/999/adapter/rollback", headers=op).status_code == 404


def test_schedule_round_trip_and_bad_cron(app):
    client, _ = app
    op = login(client, "admin", ADMIN_PASSWORD)
    assert client.get("/api/admin/schedule", headers=op).json()["cron"] == "0 2 * * *"
    r = client.put("/api/admin/schedule", json={"cron": "30  4 * * 1", "enabled": False}, headers=op)
    assert r.status_code == 200 and r.json()["cron"] == "30 4 * * 1" and r.json()["enabled"] is False
    assert client.get("/api/admin/schedule", headers=op).json()["enabled"] is False
    r = client.put("/api/admin/schedule", json={"cron": "every night", "enabled": True}, headers=op)
    assert r.status_code == 422 and "0 2 * * *" in r.json()["detail"]


def test_me_adapter_shows_own_versions_and_delete_falls_back_to_global(app):
    client, db = app
    alice, me = register(client, "alice")
    _, other = register(client, "bob")
    add_version(db, None, 1)
    add_version(db, alice, 1)

    mine = client.get("/api/me/adapter", headers=me).json()
    assert mine["policy"] == "user" and mine["active_version"] == 1 and mine["active_label"] == f"u{alice}-v1"
    assert client.get("/api/me/adapter", headers=other).json()["versions"] == []  # only your own

    r = client.delete("/api/me/adapter", headers=me)
    assert r.status_code == 200
    assert r.json()["policy"] == "global" and r.json()["active_label"] == "global-v1" and r.json()["active_version"] is None
    assert [v["status"] for v in r.json()["versions"]] == ["retired"]
