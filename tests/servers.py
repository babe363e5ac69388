"""Real `assistant serve --no-worker` processes for tests that need a server over loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.local_process import free_port, stop, wait_for_http

__all__ = ["REPO", "free_port", "start_server"]

REPO = Path(__file__).resolve().parents[1]


def start_server(env: dict[str, str], port: int, log: Path, *, polls: int = 400) -> subprocess.Popen:
    """Start a server with ``env`` (added to os.environ) on ``port``, appending its output to ``log``;
    return once /healthz answers 200. Counts polls, not clock time: on a shared VM the clock can jump."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ASSISTANT_DEV_MODE": "1", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )
    why = wait_for_http(proc, f"http://127.0.0.1:{port}/healthz", polls=polls, interval_s=0.3)
    if why is None:
        return proc
    proc.kill()
    raise AssertionError(f"the server did not start: {why}:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    stop(proc, timeout_s=timeout)
