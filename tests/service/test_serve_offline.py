"""`assistant serve` starts with HF_HUB_OFFLINE=1 on a fresh data dir and answers a chat over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.servers import free_port, start_server, stop_server


def test_serve_starts_offline(tmp_path, model_data_dir):
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(model_data_dir / "models")
    env = dict(HF_HUB_OFFLINE="1", ASSISTANT_DATA_DIR=str(data), ASSISTANT_ADMIN_PASSWORD="admin-pass-1",
               ASSISTANT_DEFAULT_MAX_NEW_TOKENS="4", HF_HOME=str(tmp_path / "empty-hf-home"))
    proc = start_server(env, port, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        tok = httpx.post(f"{base}/api/auth/token", data={"username": "admin", "password": "admin-pass-1"}).json()["access_token"]
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]},
                       headers={"Authorization": f"Bearer {tok}"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        stop_server(proc)


def test_serve_refuses_default_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env["ASSISTANT_DATA_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--no-worker"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "ASSISTANT_SECRET_KEY" in r.stderr
