"""The server serves the safe base as soon as the learning worker has trained it.

A fresh install starts serving the plain base at once (``make run`` is healthy in minutes); the
worker trains the shared safety stage in the background at its first start (``learning.safety``)
and saves it beside the base. This watcher notices the new weights (``resolve_model_path`` changes),
loads them off the engine thread and hands them to the engine, which swaps them in between passes
(``BatchedEngine.replace_base``). Nothing restarts, nobody acts.
"""

from __future__ import annotations

import logging
import threading

from service.model_loading import base_model_hash, resolve_model_path
from service.settings import Settings

logger = logging.getLogger(__name__)


class BaseWatcher:
    def __init__(self, settings: Settings, engine, *, interval_s: float = 30.0) -> None:
        self.settings = settings
        self.engine = engine
        self.interval_s = interval_s
        self.path = resolve_model_path(settings)
        self.hash = base_model_hash(settings)
        # once: /healthz asks describe() often, and resolving a path hashes a megabyte of weights
        self.plain_path = resolve_model_path(settings.model_copy(update={"safety_stage": False}))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def describe(self) -> dict[str, object]:
        """What /healthz reports: which base is served, by its provenance hash."""
        return {"safety_stage": self.path != self.plain_path, "hash": self.hash}

    def check_once(self) -> bool:
        """Swap in the base every process would now load, if it changed; True when it did."""
        path = resolve_model_path(self.settings)
        if path == self.path:
            return False
        replace = getattr(self.engine, "replace_base", None)
        if replace is None:
            logger.warning("a new base model is at %s; this engine cannot swap it in: restart the server to serve it", path)
            self.path = path
            return False
        from service.model_loading import load_base_model

        replace(load_base_model(self.settings))
        self.path, self.hash = path, base_model_hash(self.settings)
        logger.info("serving the base at %s (hash %s)", path, self.hash)
        return True

    def start(self) -> "BaseWatcher":
        self._thread = threading.Thread(target=self._run, name="base-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # a half-written or unreadable base: keep serving the current one, try again later
                logger.exception("could not load the new base model; still serving %s", self.path)
