"""Child processes that answer over loopback (a server under test, a benchmark's peer, vLLM): a free port to
give them, and the wait until they answer."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """End ``proc``: SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_http(proc: subprocess.Popen, url: str, *, polls: int, interval_s: float) -> str | None:
    """Poll ``url`` until it answers 200 while ``proc`` runs; None once it does, else why not. Counts polls,
    not clock time: on a shared VM the clock can jump."""
    for _ in range(polls):
        if proc.poll() is not None:
            return f"it exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        time.sleep(interval_s)
    return f"it did not answer {url} in {polls} polls"
