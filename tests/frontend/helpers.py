"""Helpers shared by the browser tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def shot(page, name: str, *, full_page: bool = False) -> None:
    """Save a screenshot to artifacts/screenshots/ (gitignored) for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


_counter = iter(range(1, 10_000))


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{os.getpid() % 1000}_{next(_counter)}"


def sign_up(page, server, username: str, password: str = "correct-horse-1") -> None:
    page.goto(server.url + "/")
    page.get_by_test_id("auth-username").fill(username)
    page.get_by_test_id("auth-password").fill(password)
    page.get_by_test_id("auth-register").click()
    page.get_by_test_id("composer-input").wait_for(state="visible")


def sign_in(page, server, username: str, password: str) -> None:
    page.goto(server.url + "/")
    page.get_by_test_id("auth-username").fill(username)
    page.get_by_test_id("auth-password").fill(password)
    page.get_by_test_id("auth-login").click()
    page.get_by_test_id("composer-input").wait_for(state="visible")


def send(page, text: str) -> None:
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("composer-send").click()


# Generous: replies are short, but a loaded 2-core CI machine can be slow.
REPLY_TIMEOUT_MS = 90_000


def wait_reply_done(page, locator):
    """Wait until a reply element has a finish reason (the end frame arrived)."""
    locator.and_(page.locator("[data-finish-reason]:not([data-finish-reason=''])")).wait_for(timeout=REPLY_TIMEOUT_MS)
    return locator


def api_get(page, path: str):
    """GET the JSON API with the page's cookies (the browser's session)."""
    r = page.request.get(path if path.startswith("http") else page.url.split("#")[0].rstrip("/") + path)
    assert r.ok, f"{path}: {r.status} {r.text()}"
    return r.json()
