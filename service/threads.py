"""CPU budgets for the torch work of the server and the worker.

Two measured facts shape this module (2-core VM, SmolLM2-135M, bf16 decode step):

- Two processes each running torch on every core oversubscribe the machine: a PPO step
  that took ~20 s alone took 376 s beside a generating server, and the server slowed
  several-fold. So each process sets its own thread count from the settings, and the
  worker lowers its CPU priority: while users chat, the kernel runs the server's
  generation first and training fills the idle time.
- Inside one process, torch's OpenMP pool belongs to the thread that first runs a
  parallel op. If the main thread has run one (loading the model, casting weights), the
  engine thread's forward pass is about 2x slower (one row: 47 vs 23 ms per step; 16
  rows: 68 vs 35 ms), and resetting the main thread's count afterwards does not undo it.
  So in the server the main thread does its torch work with one thread
  (``single_threaded_control``), the engine thread sets the serving budget when it starts,
  and measurements that must see the serving budget run in a short-lived helper thread
  (``run_in_thread``; a finished thread's pool does not slow the next one).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def cores() -> int:
    return os.cpu_count() or 1


def apply_thread_budget(role: str, threads: int | None, *, nice: int = 0) -> int:
    """Set this thread's torch threads (default: every core) and lower the process's priority by ``nice``."""
    import torch

    n = threads or cores()
    torch.set_num_threads(n)
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
    logger.info("%s: %d torch threads, nice %d", role, n, os.nice(0) if hasattr(os, "nice") else 0)
    return n


def single_threaded_control() -> None:
    """The calling (main) thread runs torch with one thread; engine threads set their own budget."""
    import torch

    torch.set_num_threads(1)


def omp_single_thread() -> bool:
    """Limit the calling thread's OpenMP team to itself, touching no process-wide setting.

    ``torch.set_num_threads`` also sets process-wide state (MKL's thread count, the default
    for new threads): called in a helper thread, it drops the engine thread to one core
    (measured: 26 tok/s on one core instead of two). OpenMP's own ``omp_set_num_threads``
    changes only the calling thread, so background threads that run small torch ops (the
    adapter loader) use it, through the libgomp torch itself loaded. False if not found.
    """
    import ctypes

    import torch

    lib = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not lib.is_file():
        return False
    torch.get_num_threads()  # torch sets each thread's OpenMP count once, lazily: let it happen first
    try:
        omp = ctypes.CDLL(str(lib))
        omp.omp_set_num_threads(1)
        return omp.omp_get_max_threads() == 1
    except (OSError, AttributeError):
        return False


def run_in_thread(fn: Callable[[], T], *, threads: int, name: str = "torch-helper") -> T:
    """Run ``fn`` in a new thread with ``threads`` torch threads; return its result or raise its error."""
    import torch

    out: dict = {}

    def target() -> None:
        torch.set_num_threads(threads)
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
