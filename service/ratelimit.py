"""In-process rate limits: at most ``limit`` events per key in a sliding ``window`` of seconds.

One process's memory: behind several server processes each counts on its own (the limit is
then per process), which still bounds what one address can do cheaply.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class SlidingWindow:
    def __init__(self, limit: int, window: float, clock=time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Count one event for ``key``; None if allowed, else the seconds until one would be (not counted)."""
        return self._check(key, count=True)

    def retry_after(self, key: str) -> float | None:
        """Like ``hit`` without counting: None while ``key`` is under its limit."""
        return self._check(key, count=False)

    def count(self, key: str) -> int:
        with self._lock:
            return len(self._events.get(key, ()))

    def add(self, key: str) -> None:
        """Count one event for ``key`` even if it is over its limit (failures keep counting)."""
        with self._lock:
            self._events[key].append(self.clock())

    def discard(self, key: str) -> None:
        """Take back ``key``'s newest event (a reserved attempt that turned out not to count)."""
        with self._lock:
            events = self._events.get(key)
            if events:
                events.pop()

    def _check(self, key: str, count: bool) -> float | None:
        if self.limit <= 0:
            return None
        now = self.clock()
        with self._lock:
            events = self._events[key]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return max(1.0, events[0] + self.window - now)
            if count:
                events.append(now)
            if len(self._events) > 10_000:  # forget idle keys so the table stays bounded
                for k in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window]:
                    del self._events[k]
            return None
