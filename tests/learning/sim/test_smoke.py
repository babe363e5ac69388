"""Smoke size, end to end on the real embedded model: a real server, simulated users over the public
contract, a training run through the admin API executed by a worker process, then the evaluation.

Tiny budgets (2 users, a handful of votes, 1 PPO step, 8-token replies) so it checks the mechanics,
not the learning, in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from learning.sim.evaluate import add_evaluate_arguments, main_evaluate
from learning.sim.simulate import add_simulate_arguments, main_simulate, simulations_dir
from service.settings import Settings
from tests.servers import free_port, start_server, stop_server

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "sim-admin-password"
# Training budgets for the worker: the smallest run that still trains, gates and publishes.
TINY_BUDGETS = {
    "ASSISTANT_PPO_STEPS": "1", "ASSISTANT_PPO_BATCH_SIZE": "2", "ASSISTANT_PPO_MINIBATCH_SIZE": "2",
    "ASSISTANT_PPO_GROUP_SIZE": "2", "ASSISTANT_WARM_START_PROMPTS": "2", "ASSISTANT_WARM_START_SAMPLES": "2",
    "ASSISTANT_WARM_START_EPOCHS": "1",
    "ASSISTANT_PPO_EPOCHS": "1", "ASSISTANT_PPO_MAX_NEW_TOKENS": "8", "ASSISTANT_REWARD_STEPS": "20",
    "ASSISTANT_GATE_PROMPTS": "2", "ASSISTANT_GATE_HARM_PROMPTS": "1", "ASSISTANT_GATE_HARM_SAMPLES": "3",
    "ASSISTANT_GATE_BASE_HARM_SAMPLES": "0", "ASSISTANT_MIN_USER_LABELS": "3", "ASSISTANT_MIN_GLOBAL_LABELS": "3",
    "ASSISTANT_LORA_R": "4", "ASSISTANT_LORA_ALPHA": "8",
}


def _parse(add, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def service(tmp_path_factory, model_data_dir):
    """`assistant serve --no-worker` on a fresh data dir; yields (base url, data dir, env)."""
    tmp = tmp_path_factory.mktemp("sim")
    data = tmp / "data"
    data.mkdir()
    (data / "models").symlink_to(model_data_dir / "models")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ASSISTANT_DATA_DIR=str(data),
               ASSISTANT_DEV_MODE="1", ASSISTANT_ADMIN_PASSWORD=ADMIN_PASSWORD, ASSISTANT_DEFAULT_MAX_NEW_TOKENS="8",
               ASSISTANT_SCHEDULE_ENABLED="0", ASSISTANT_PORT=str(port), **TINY_BUDGETS)
    proc = start_server(env, port, tmp / "serve.log", polls=600)
    try:
        yield f"http://127.0.0.1:{port}", data, env
    finally:
        stop_server(proc)


def _settings(data: Path) -> Settings:
    return Settings(data_dir=data, dev_mode=True, admin_password=ADMIN_PASSWORD)


def _evaluate(data: Path, sim_path: Path) -> dict:
    args = _parse(add_evaluate_arguments, ["--simulation", str(sim_path), "--heldout", "3", "--red-team", "3",
                                           "--benign", "3", "--max-new-tokens", "8", "--samples", "2", "--base-samples", "2",
                                           "--red-team-samples", "2", "--base-red-team-samples", "3", "--benign-samples", "1"])
    paths = main_evaluate(args, _settings(data))
    for key in ("json", "markdown", "win_rate", "harm", "rounds", "latest"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["json"].parent.parent == data / "reports"
    latest = json.loads((data / "reports" / "latest.json").read_text())
    assert latest == json.loads(paths["json"].read_text())
    return latest


def test_simulate_then_evaluate_without_training(service):
    base, data, _ = service
    out = data / "reports" / "simulations" / "no-train.json"
    args = _parse(add_simulate_arguments, ["--base-url", base, "--users", "2", "--profiles", "concise,enthusiastic",
                                           "--ratings-per-round", "3", "--max-new-tokens", "8", "--no-train",
                                           "--no-evaluate", "--user-prefix", "plain", "--out", str(out)])
    record = main_simulate(args, _settings(data))

    # the votes went in through the public API and are visible there
    assert [u["profile"]["name"] for u in record["users"]] == ["concise", "enthusiastic"]
    for u in record["users"]:
        stats = record["rounds"][0]["users"][u["username"]]
        assert stats["ratings"] >= 3 and stats["turns"] >= 1 and stats["mean_score"] is not None
        tok = httpx.post(f"{base}/api/auth/token", data={"username": u["username"], "password": "sim-user-password"}).json()["access_token"]
        export = httpx.get(f"{base}/api/me/feedback/export", headers={"Authorization": f"Bearer {tok}"}).json()
        assert len(export["feedback"]) + len(export["rankings"]) == stats["thumbs_up"] + stats["thumbs_down"] + stats["rankings"]
    assert (simulations_dir(data) / "latest.json").is_file()

    report = _evaluate(data, out)
    assert {u["username"] for u in report["users"]} == {u["username"] for u in record["users"]}
    for u in report["users"]:
        # no adapter yet: the served policy is the base model, so every comparison is a tie
        assert u["adapter"] is None and u["win_rate"]["rate"] == 0.5 and u["win_rate"]["prompts"] == 3
        assert u["win_rate"]["n"] == 3 * 2 * 2  # every served sample against every base sample
        lo, hi = u["win_rate"]["wilson"]
        assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert set(report["harm"]) == {"base"} and 0.0 <= report["harm"]["base"]["harmful_share"] <= 1.0
    assert report["benign"]["base"]["n"] == 3 * 2 and report["kl"] == {}
    assert report["harm"]["base"]["n"] == 3 * 3  # the base's own, larger, red-team sample
    assert report["timings"]["base_cache"]["drawn"] == 3 * 2 + 3 * 3 + 3 * 2
    md = (data / "reports" / report["files"]["markdown"]).read_text()
    assert all(u["username"] in md for u in report["users"])


def _admin_training_routes(base: str) -> bool:
    tok = httpx.post(f"{base}/api/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}).json()["access_token"]
    return httpx.get(f"{base}/api/admin/training-runs", headers={"Authorization": f"Bearer {tok}"}).status_code == 200


def test_simulate_train_through_admin_api_then_evaluate(service, tmp_path):
    base, data, env = service
    # the admin route is the contract the simulation trains through: broken is a failure, never a skip
    assert _admin_training_routes(base), "GET /api/admin/training-runs does not answer 200 (service/routes/admin.py)"
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, stdout=worker_log,
                              stderr=subprocess.STDOUT)
    out = data / "reports" / "simulations" / "train.json"
    try:
        args = _parse(add_simulate_arguments, ["--base-url", base, "--users", "2", "--profiles", "concise,detailed",
                                               "--ratings-per-round", "4", "--max-new-tokens", "8", "--rounds", "1",
                                               "--run-timeout", "900", "--no-evaluate", "--user-prefix", "train",
                                               "--out", str(out)])
        record = main_simulate(args, _settings(data))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        worker_log.close()
    run = record["rounds"][0]["training_run"]
    assert run is not None and run["status"] == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]

    report = _evaluate(data, out)
    history = report["rounds"]["training"]
    assert history and all(h["run_id"] == run["id"] for h in history)
    trained = [h for h in history if h["adapter_version_id"] is not None]
    assert trained and all(h["reward_mean"] is not None and h["kl_per_token"] is not None for h in trained)
    # every adapter that serves someone, and the newest candidates, were evaluated: harm, refusals, KL to the base
    assert report["policies"]["adapters"]
    # (a user with fewer than min_user_labels labels is skipped by the run: sampling decides how
    #  many of their 4 ratings make labels, so one may have no adapter of their own to evaluate)
    trained_users = {h["user_id"] for h in trained}
    for u in report["users"]:
        assert u["adapter"] is not None or u["candidate"] is not None or u["user_id"] not in trained_users, (u, history)
    for label in report["policies"]["adapters"]:
        assert label in report["harm"] and label in report["benign"] and report["kl"][label] >= 0.0
    assert report["reward_model"]["global"]["length_baseline_accuracy"] is None or \
        0.0 <= report["reward_model"]["global"]["length_baseline_accuracy"] <= 1.0
