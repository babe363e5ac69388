"""The whole loop through the public contract on the real model: users chat and rate, an operator
triggers a run, a worker executes it, and each user's next reply comes from (and reports) whatever
adapter is now active. Also: a promoted adapter is served by the batched engine from the next message."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient
from sqlmodel import Session

from learning.worker import Worker
from service import adapter_store
from service.app import create_app
from service.bench import make_random_adapter
from service.models import AdapterStatus
from tests.learning.conftest import tiny_budgets
from tests.service.conftest import chat_turn, signup


def _app(make_settings, shared_engine, **kw) -> TestClient:
    settings = make_settings(admin_password="operator-pass-1", exploration_share=0.0, **kw)
    return TestClient(create_app(settings, engine=shared_engine), base_url="http://127.0.0.1:8000")


def _admin(client: TestClient) -> dict:
    tok = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    client.cookies.clear()
    return {"Authorization": f"Bearer {tok}"}


def test_rate_train_serve_via_api(make_settings, shared_engine):
    torch.manual_seed(0)
    with _app(make_settings, shared_engine) as client:
        alice = signup(client, "alice")
        for q in ("How do I boil an egg?", "Give me a tip for sleeping well.", "What is a good breakfast?", "How do I relax?"):
            out = chat_turn(client, alice["token"], q, alternatives=2, max_new_tokens=10, temperature=1.0)
            a, b = (s["message_id"] for s in out["starts"])
            short, long_ = sorted((a, b), key=lambda m: len(out["text"][m]))
            assert client.post("/api/rankings", json={"message_ids": [short, long_]}, headers=alice["headers"]).status_code == 201
            client.post(f"/api/messages/{short}/feedback", json={"rating": "up", "reasons": ["concise"]}, headers=alice["headers"])
            client.post(f"/api/messages/{long_}/feedback", json={"rating": "down", "reasons": ["too_long"]}, headers=alice["headers"])

        admin = _admin(client)
        r = client.post("/api/admin/training-runs", json={"user_ids": [alice["id"]]}, headers=admin)
        assert r.status_code == 202 and r.json()["status"] == "queued"
        run_id = r.json()["id"]
        assert client.post("/api/admin/training-runs", json={"user_ids": [alice["id"]]}, headers=admin).status_code == 409
        assert client.post("/api/admin/training-runs", json={"user_ids": None}, headers=alice["headers"]).status_code == 403

        worker = Worker(client.app.state.settings, budgets=tiny_budgets())
        assert worker.run_pending_once() == run_id

        run = client.get(f"/api/admin/training-runs/{run_id}", headers=admin).json()
        assert run["status"] == "succeeded" and run["progress"] == 1.0, run
        mine = [res for res in run["results"] if res["user_id"] == alice["id"]]
        assert mine and mine[0]["reason"] and mine[0]["metrics"], run["results"]

        me = client.get("/api/me/adapter", headers=alice["headers"]).json()
        out = chat_turn(client, alice["token"], "Any advice for a rainy day?", max_new_tokens=6)
        end = next(iter(out["ends"].values()))
        # The reply reports exactly the policy now active for alice (her adapter if promoted, else global/base).
        assert end["adapter_version"] == me["active_label"], (end, me)
        if mine[0]["promoted"]:
            assert me["policy"] == "user" and end["adapter_version"] == f"u{alice['id']}-v1"  # results hold the row id
        conv = client.get(f"/api/conversations/{out['starts'][0]['conversation_id']}", headers=alice["headers"]).json()
        assert conv["messages"][-1]["adapter_version"] == end["adapter_version"]

        # "What the assistant learned" shows this run's numbers, from alice's own ratings.
        learned = client.get("/api/me/learned", headers=alice["headers"]).json()
        first = learned["rounds"][0]
        assert first["version"] == 1 and first["new_labels"] == {"up": 4, "down": 4, "rankings": 4}, learned
        assert first["reward_labels"] and 0.0 <= first["win_rate_vs_base"] <= 1.0, first
        assert isinstance(first["reward"], float) and isinstance(first["base_reward"], float)
        assert learned["traits"] and all(t["description"] and isinstance(t["weight"], float) for t in learned["traits"])
        assert learned["traits_from"] == f"u{alice['id']}-v1"
        assert learned["rounds"][-1]["version"] is None and learned["rounds"][-1]["new_labels"] == {"up": 0, "down": 0, "rankings": 0}


def test_promoted_adapter_serves_next_message_and_rollback(make_settings, shared_engine, tmp_path):
    with _app(make_settings, shared_engine) as client:
        bob = signup(client, "bob")
        prompt = "Tell me about the moon."
        base = chat_turn(client, bob["token"], prompt, max_new_tokens=12, temperature=0)
        base_text = next(iter(base["text"].values()))
        assert next(iter(base["ends"].values()))["adapter_version"] is None

        settings = client.app.state.settings
        src = tmp_path / "adapter"
        _random_adapter(settings, src)
        with Session(client.app.state.db) as s:
            row = adapter_store.publish(settings, s, user_id=bob["id"], src_dir=src, metadata={"test": True},
                                        status=AdapterStatus.promoted, reason="test")
            adapter_store.activate(s, user_id=bob["id"], version_id=row.id)
            label = adapter_store.label_of(row)

        after = chat_turn(client, bob["token"], prompt, max_new_tokens=12, temperature=0)
        end = next(iter(after["ends"].values()))
        assert end["adapter_version"] == label == f"u{bob['id']}-v1"
        assert next(iter(after["text"].values())) != base_text, "the adapter changes the greedy reply"

        admin = _admin(client)
        assert client.post(f"/api/admin/users/{bob['id']}/adapter/rollback", headers=admin).status_code == 200
        back = chat_turn(client, bob["token"], prompt, max_new_tokens=12, temperature=0)
        assert next(iter(back["ends"].values()))["adapter_version"] is None
        assert next(iter(back["text"].values())) == base_text


def _random_adapter(settings, path):
    from service.model_loading import load_base_model

    make_random_adapter(load_base_model(settings), path, seed=7, b_std=0.5)
