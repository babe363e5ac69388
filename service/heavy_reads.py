"""Reads that cost more than a page of rows: search and the exports (issue 28, M7).

Each is counted against a per-user rate (``ASSISTANT_HEAVY_READS_PER_MINUTE``) and runs on a few
threads of its own (``ASSISTANT_HEAVY_READ_THREADS``), so one user's crafted search or a handful
of exports can take neither every route thread nor every database connection; a search also stops
at a deadline (``ASSISTANT_SEARCH_TIMEOUT_S``, enforced by the database: SQLite's progress handler,
PostgreSQL's ``statement_timeout``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import HTTPException, status
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from service.ratelimit import SlidingWindow
from service.settings import Settings

T = TypeVar("T")


class SearchTimeout(RuntimeError):
    """The search ran past its deadline and the database stopped it."""


class HeavyReads:
    def __init__(self, settings: Settings) -> None:
        self.rate = SlidingWindow(settings.heavy_read_limit, 60.0)
        self.threads = CapacityLimiter(settings.heavy_read_threads)

    def admit(self, user_id: int) -> None:
        """Count one heavy read for the user; 429 with Retry-After above their rate."""
        wait = self.rate.hit(str(user_id))
        if wait is not None:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many searches and exports; wait before the next one",
                                headers={"Retry-After": str(int(wait) + 1)})

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on one of the heavy reads' own threads."""
        return await to_thread.run_sync(fn, limiter=self.threads)


@contextlib.contextmanager
def deadline(session: Session, seconds: float) -> Iterator[None]:
    """Statements run inside stop after ``seconds`` (SearchTimeout); 0 = no deadline."""
    if seconds <= 0:
        yield
        return
    dialect = session.get_bind().dialect.name
    raw = session.connection().connection.driver_connection if dialect == "sqlite" else None
    try:
        if raw is not None:
            stop_at = time.monotonic() + seconds
            raw.set_progress_handler(lambda: int(time.monotonic() > stop_at), 1000)
        elif dialect == "postgresql":
            session.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
        yield
    except DBAPIError as exc:
        message = str(exc.orig).lower()
        if "interrupted" in message or "statement timeout" in message:
            session.rollback()
            raise SearchTimeout(f"the search took longer than {seconds:g} s") from exc
        raise
    finally:
        if raw is not None:
            raw.set_progress_handler(None, 0)
