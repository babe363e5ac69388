"""Open WebUI in front of this product, wired in one command (issue 31): ``make openwebui``.

1. Installs Open WebUI (``OPENWEBUI_VERSION``, pinned) into its own virtual environment
   (``OPENWEBUI_VENV``, default ``.openwebui/venv``), never into the product's. Done once; the
   install time is printed apart.
2. Starts it offline (no model hub, no telemetry, no update check; see ``openwebui_env``), pointed
   at this product's ``/v1`` with the trusted-proxy key and forwarding each user's identity (signed:
   ``FORWARD_USER_INFO_HEADER_JWT_SECRET`` here, ``ASSISTANT_PROXY_JWT_SECRET`` there), with
   ordinary sign-up open (new users are active, not pending) and the models visible to every user.
3. Makes its first admin (``OPENWEBUI_ADMIN_EMAIL``; the password is ``OPENWEBUI_ADMIN_PASSWORD`` or
   one generated and kept in the data dir) and an admin API key, with which this product reads Open
   WebUI's ratings every ``ASSISTANT_OPENWEBUI_SYNC_S`` seconds (``service/openwebui_sync.py``).
4. Starts this product (``assistant serve``) in trusted-proxy mode with that sync, and prints the URL.

Ctrl-C stops both. Everything Open WebUI keeps (its database, the keys) lives under
``$ASSISTANT_DATA_DIR/openwebui`` (default ``data/openwebui``), so a second run reuses it.
Run with the product's Python: ``.venv/bin/python deploy/openwebui/run.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = os.environ.get("OPENWEBUI_VERSION", "0.12.4")
VENV = Path(os.environ.get("OPENWEBUI_VENV", ROOT / ".openwebui" / "venv"))
DATA = Path(os.environ.get("ASSISTANT_DATA_DIR", ROOT / "data")).resolve() / "openwebui"
HOST = os.environ.get("OPENWEBUI_HOST", "127.0.0.1")
PORT = int(os.environ.get("OPENWEBUI_PORT", "8080"))
ASSISTANT_PORT = int(os.environ.get("ASSISTANT_PORT", "8000"))
ADMIN_EMAIL = os.environ.get("OPENWEBUI_ADMIN_EMAIL", "admin@example.com")
START_TIMEOUT_S = float(os.environ.get("OPENWEBUI_START_TIMEOUT_S", "600"))


def say(message: str) -> None:
    print(f"[openwebui] {message}", flush=True)


def secret_file(name: str, make) -> str:
    """A value kept under the data dir (created once, owner-only), so a second run reuses it."""
    path = DATA / name
    if path.is_file():
        return path.read_text().strip()
    value = make()
    DATA.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def install() -> Path:
    """Open WebUI's own virtual environment; returns its ``open-webui`` command."""
    exe = VENV / "bin" / "open-webui"
    have = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('open-webui'))"],
                          capture_output=True, text=True) if exe.exists() else None
    if have is not None and have.returncode == 0 and have.stdout.strip() == VERSION:
        return exe
    say(f"installing Open WebUI {VERSION} into {VENV} (its own environment; a few minutes, several GB)")
    started = time.monotonic()
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"open-webui=={VERSION}"], check=True)
    say(f"installed in {time.monotonic() - started:.0f} s")
    return exe


def openwebui_env(proxy_key: str, jwt_secret: str) -> dict[str, str]:
    """Open WebUI's settings: this product as its only connection, offline, users forwarded."""
    return {
        **os.environ,
        "DATA_DIR": str(DATA / "data"),
        "WEBUI_SECRET_KEY": secret_file("webui-secret-key", lambda: secrets.token_urlsafe(32)),
        "HOST": HOST, "PORT": str(PORT),
        # the product's OpenAI-compatible API, one connection for everyone (trusted proxy)
        "OPENAI_API_BASE_URL": f"http://127.0.0.1:{ASSISTANT_PORT}/v1",
        "OPENAI_API_KEY": proxy_key,
        "ENABLE_OPENAI_API": "True",
        "ENABLE_FORWARD_USER_INFO_HEADERS": "True",  # the user, and X-OpenWebUI-Chat-Id
        "FORWARD_USER_INFO_HEADER_JWT_SECRET": jwt_secret,  # the user as a signed X-OpenWebUI-User-Jwt
        "ENABLE_OLLAMA_API": "False",
        "ENABLE_EVALUATION_ARENA_MODELS": "False",
        # every user sees the product's models (else only the admin does), and may sign up as a user
        "BYPASS_MODEL_ACCESS_CONTROL": "True",
        "ENABLE_SIGNUP": "True",
        "DEFAULT_USER_ROLE": "user",
        # the admin's API key reads the ratings (ASSISTANT_OPENWEBUI_TOKEN)
        "ENABLE_API_KEYS": "True",
        # offline: no model hub (its RAG embedding model would be its one download), no telemetry
        "OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "RAG_EMBEDDING_ENGINE": "openai", "ENABLE_RAG_WEB_SEARCH": "False", "ENABLE_WEB_SEARCH": "False",
        "ANONYMIZED_TELEMETRY": "False", "DO_NOT_TRACK": "True", "SCARF_NO_ANALYTICS": "True",
        "ENABLE_VERSION_UPDATE_CHECK": "False",
    }


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def wait_until_up(url: str, proc: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before answering {url}")
        try:
            if http("GET", url)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    raise SystemExit(f"{name} did not answer {url} within {START_TIMEOUT_S:.0f} s")


def admin_api_key(base: str) -> str:
    """The admin's API key: signs the admin up (the first account is the admin) or in, reopens sign-up
    (Open WebUI closes it after its first account; ``OPENWEBUI_SIGNUP=0`` leaves it closed), then
    reads or makes the admin's key."""
    password = os.environ.get("OPENWEBUI_ADMIN_PASSWORD") or secret_file("admin-password", lambda: secrets.token_urlsafe(16))
    status, body = http("POST", f"{base}/api/v1/auths/signup", {"name": "Admin", "email": ADMIN_EMAIL, "password": password})
    if status != 200:
        status, body = http("POST", f"{base}/api/v1/auths/signin", {"email": ADMIN_EMAIL, "password": password})
    if status != 200 or not isinstance(body, dict) or body.get("role") != "admin":
        raise SystemExit(f"cannot sign in as Open WebUI's admin {ADMIN_EMAIL} ({status}: {body}); set "
                         "OPENWEBUI_ADMIN_EMAIL and OPENWEBUI_ADMIN_PASSWORD to its admin account")
    token = body["token"]
    if os.environ.get("OPENWEBUI_SIGNUP", "1") != "0":
        status, config = http("GET", f"{base}/api/v1/auths/admin/config", token=token)
        if status == 200 and isinstance(config, dict) and not (config.get("ENABLE_SIGNUP") and config.get("DEFAULT_USER_ROLE") == "user"):
            status, config = http("POST", f"{base}/api/v1/auths/admin/config",
                                  {**config, "ENABLE_SIGNUP": True, "DEFAULT_USER_ROLE": "user"}, token=token)
        if status != 200:
            say(f"could not open sign-up ({status}: {config}); the admin can, in Admin Panel > Settings > General")
    status, key = http("GET", f"{base}/api/v1/auths/api_key", token=token)
    if status != 200 or not isinstance(key, dict) or not key.get("api_key"):
        status, key = http("POST", f"{base}/api/v1/auths/api_key", token=token)
    if status != 200 or not isinstance(key, dict) or not key.get("api_key"):
        raise SystemExit(f"Open WebUI made no API key for its admin ({status}: {key}); the rating sync needs one")
    return key["api_key"]


def main() -> None:
    exe = install()
    proxy_key = os.environ.get("ASSISTANT_PROXY_KEY") or secret_file("proxy-key", lambda: secrets.token_urlsafe(32))
    jwt_secret = os.environ.get("ASSISTANT_PROXY_JWT_SECRET") or secret_file("jwt-secret", lambda: secrets.token_urlsafe(32))
    DATA.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def stop(*_) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base = f"http://127.0.0.1:{PORT}"
    started = time.monotonic()
    say(f"starting Open WebUI on {base} (offline; data in {DATA})")
    procs.append(subprocess.Popen([str(exe), "serve", "--host", HOST, "--port", str(PORT)], env=openwebui_env(proxy_key, jwt_secret),
                                  cwd=DATA))
    wait_until_up(f"{base}/health", procs[-1], "Open WebUI")
    token = admin_api_key(base)
    say(f"Open WebUI up in {time.monotonic() - started:.0f} s; its admin: {ADMIN_EMAIL} "
        f"(password: OPENWEBUI_ADMIN_PASSWORD or {DATA / 'admin-password'})")
    env = {**os.environ, "ASSISTANT_PROXY_KEY": proxy_key, "ASSISTANT_PROXY_JWT_SECRET": jwt_secret, "ASSISTANT_OPENWEBUI_URL": base,
           "ASSISTANT_OPENWEBUI_TOKEN": token, "ASSISTANT_PORT": str(ASSISTANT_PORT), "HF_HUB_OFFLINE": "1"}
    env.setdefault("ASSISTANT_DEV_MODE", "1")
    procs.append(subprocess.Popen([str(Path(sys.executable).with_name("assistant")), "serve"], env=env, cwd=ROOT))
    wait_until_up(f"http://127.0.0.1:{ASSISTANT_PORT}/healthz", procs[-1], "the assistant")
    say(f"wired in {time.monotonic() - started:.0f} s: open {base} (sign up: each Open WebUI user is their own user "
        f"here, with their own adapter; thumbs reach training within ASSISTANT_OPENWEBUI_SYNC_S). Ctrl-C stops both.")
    while all(p.poll() is None for p in procs):
        time.sleep(1)
    stop()


if __name__ == "__main__":
    main()
