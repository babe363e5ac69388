"""Child processes that answer over loopback (a server under test, a benchmark's peer, vLLM): a free port to
give them, and the wait until they answer."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

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


def run_step(command: list[str], env: dict[str, str], log: Path, *, cwd: Path | None = None) -> int:
    """Run ``command`` to completion, output appended to ``log``; its exit code. Interrupted (Ctrl-C, or
    SIGTERM under ``exit_on_sigterm``), it stops the child first: a protocol's training step left running on
    its own once shared the CPU with the next experiment for 50 minutes, unseen (2026-12-07)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        finally:
            stop(proc)


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, through ``finally`` blocks, so ``run_step`` and the
    servers started here stop their children (by default SIGTERM ends Python at once and orphans them)."""
    def _exit(signum, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
