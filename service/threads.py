"""CPU budgets for the two torch processes that share a machine (server and worker).

Two processes each running torch on every core oversubscribe it: measured on a 2-core
box, a PPO step that took ~20 s alone took 376 s beside a generating server, and the
server slowed several-fold. Each process sets its own torch thread count from the
settings, and the worker lowers its CPU priority, so while users chat the kernel runs
the server's generation first and training fills the idle time.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def apply_thread_budget(role: str, threads: int | None, *, nice: int = 0) -> int:
    """Set this process's torch threads (default: every core) and lower its priority by ``nice``."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
    logger.info("%s process: %d torch threads, nice %d", role, n, os.nice(0) if hasattr(os, "nice") else 0)
    return n
