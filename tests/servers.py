"""Real `assistant serve --no-worker` processes for tests that need a server over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path, *, polls: int = 400) -> subprocess.Popen:
    """Start a server with ``env`` (added to os.environ) on ``port``, appending its output to ``log``;
    return once /healthz answers 200. Counts polls, not clock time: on a shared VM the clock can jump."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ASSISTANT_DEV_MODE": "1", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )
    for _ in range(polls):
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"the server did not answer /healthz in {polls} polls:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
