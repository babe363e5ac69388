"""Browser-test fixtures: a real server in a subprocess and Debian's Chromium via Playwright.

The server is ``assistant serve --no-worker`` on a free port with its own data dir
(the converted model is shared with the rest of the suite via ``model_data_dir``).
Playwright drives ``/usr/bin/chromium`` (``playwright install`` cannot download
browsers here); ``make test`` installs it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import free_port, start_server, stop_server

CHROMIUM = os.environ.get("ASSISTANT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
ADMIN_PASSWORD = "operator-pass-123"



class Server:
    def __init__(self, url: str, data_dir: Path, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.data_dir, self.proc, self.log = url, data_dir, proc, log

    def db_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the server's SQLite database directly (the source of truth for what was stored)."""
        import sqlite3

        with sqlite3.connect(self.data_dir / "assistant.db") as con:
            return con.execute(sql, params).fetchall()


# Package scope: the server and Playwright (whose sync API keeps an event loop running in this
# thread) are closed when the browser tests end, so later tests can use asyncio.run().
@pytest.fixture(scope="package")
def server(request, tmp_path_factory):
    # For iterating on the UI: point at an already running server started with the same
    # settings as below (ASSISTANT_TEST_SERVER=http://127.0.0.1:8765,/path/to/its/data_dir).
    external = os.environ.get("ASSISTANT_TEST_SERVER")
    if external:
        url, data_dir = external.split(",", 1)
        yield Server(url.rstrip("/"), Path(data_dir), None, Path(data_dir) / "server.log")
        return
    yield from _serve(request.getfixturevalue("model_data_dir"), tmp_path_factory)


@pytest.fixture
def own_server(model_data_dir, tmp_path_factory):
    """A server of the test's own, for a test whose data (a training run) would show on the shared
    server's operator pages."""
    yield from _serve(model_data_dir, tmp_path_factory)


def _serve(model_data_dir: Path, tmp_path_factory):
    data = tmp_path_factory.mktemp("browserdata")
    (data / "models").symlink_to(model_data_dir / "models")
    port = free_port()
    env = dict(
        ASSISTANT_DATA_DIR=str(data),
        ASSISTANT_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ASSISTANT_DEFAULT_MAX_NEW_TOKENS="16",
        ASSISTANT_ENGINE=os.environ.get("ASSISTANT_TEST_ENGINE", "batched"),
        ASSISTANT_EXPLORATION_SHARE="0",
    )
    log = data / "server.log"
    proc = start_server(env, port, log)
    url = f"http://127.0.0.1:{port}"
    yield Server(url, data, proc, log)
    stop_server(proc, timeout=15)


@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it with `apt-get install -y chromium` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.js_errors = errors  # tests assert the page threw nothing
    yield p
