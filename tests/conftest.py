"""Shared fixtures. Tests never touch the developer's ./data: everything lives in temp dirs.

The embedded model is converted once per test session into a shared temp data
dir (``ASSISTANT_TEST_MODEL_DIR`` may point at an existing one to save ~20 s).

Database tests run on both backends through the ``db_url`` fixture: SQLite
always, PostgreSQL when ``ASSISTANT_TEST_POSTGRES_URL`` names a server whose
role may CREATE DATABASE (``.ci/run`` starts one with ``deploy/dev-postgres.sh``;
locally: ``deploy/dev-postgres.sh start`` and
``export ASSISTANT_TEST_POSTGRES_URL=$(deploy/dev-postgres.sh url)``).
Each PostgreSQL test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Servers and workers started by tests never train the safety stage at start (minutes of CPU);
# tests/learning/test_safety.py trains it on purpose, with a few prompts.
os.environ.setdefault("ASSISTANT_SAFETY_TRAIN_AT_START", "0")
# Nor do their engines compile the one-row decode step in the background (minutes of CPU per server);
# tests/service/engine/test_compiled_decode.py compiles it on purpose, on a two-layer model.
os.environ.setdefault("ASSISTANT_COMPILE_DECODE", "0")

from service.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def model_data_dir(tmp_path_factory) -> Path:
    """A data dir holding the converted embedded model, shared by the whole session."""
    d = tmp_path_factory.mktemp("modeldata")
    cached = os.environ.get("ASSISTANT_TEST_MODEL_DIR")
    if cached and (Path(cached) / "models").exists():
        shutil.copytree(Path(cached) / "models", d / "models")
    from service.model_loading import provision_embedded

    provision_embedded(Settings(data_dir=d, dev_mode=True))
    return d


@pytest.fixture
def make_settings(tmp_path, model_data_dir):
    """Settings with a fresh data dir (own database) that reuses the converted model.

    ``make_settings(database_url=db_url)`` puts the database elsewhere (see ``db_url``).
    """

    def make(**overrides) -> Settings:
        data = tmp_path / f"data{len(list(tmp_path.iterdir()))}"
        data.mkdir()
        (data / "models").symlink_to(model_data_dir / "models")
        # "testserver": the Host of Starlette's TestClient WebSockets (it ignores base_url for them)
        base = dict(data_dir=data, dev_mode=True, default_max_new_tokens=8, default_temperature=0.0, allowed_hosts="testserver")
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture(scope="session")
def shared_engine(model_data_dir):
    """One started engine for the API tests (loading the model once)."""
    from service.engine import build_engine

    # float32 unless the run asks: ASSISTANT_DTYPE=auto times both dtypes and may pick either on a given
    # day, and a greedy reply asserted below may differ between them (tests/service/engine/test_dtype_probe.py
    # covers auto)
    settings = Settings(data_dir=model_data_dir, dev_mode=True, engine=os.environ.get("ASSISTANT_TEST_ENGINE", "batched"),
                        dtype=os.environ.get("ASSISTANT_TEST_DTYPE", "float32"))
    engine = build_engine(settings)
    engine.start()
    yield engine
    engine.stop()


POSTGRES_URL_ENV = "ASSISTANT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server for tests; skips when none is configured (CI always configures one)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is unset: start one with `deploy/dev-postgres.sh start` "
                    f"and export {POSTGRES_URL_ENV}=$(deploy/dev-postgres.sh url)")
    return url


@pytest.fixture
def make_postgres_database(postgres_admin_url) -> Iterator[Callable[[], str]]:
    """Creates empty PostgreSQL databases (``test_<hex>``) and returns their URLs; drops them after the test."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    made: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)

    yield make
    for name in made:
        _drop_database(admin, name)
    admin.dispose()


def _drop_database(admin, name: str, attempts: int = 40) -> None:
    """DROP ... WITH (FORCE): the app under test may still hold pooled connections. FORCE may not end
    a backend of another role, and an autovacuum worker (the superuser's) that happens to be in the
    database just used refuses it ("must be a member of the role whose process is being terminated",
    seen once in CI): it finishes within moments, so try again."""
    import time

    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)


@pytest.fixture(params=["sqlite", "postgresql"])
def make_db_url(request, tmp_path_factory) -> Callable[[], str]:
    """Makes URLs of empty databases on one backend per parametrization (SQLite files, or PostgreSQL databases)."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'db.sqlite'}"
    return request.getfixturevalue("make_postgres_database")


@pytest.fixture
def db_url(make_db_url) -> str:
    """An empty database on each backend in turn: pass it as ``make_settings(database_url=db_url)``.

    Calls to ``make_settings`` with the same URL in one test share the database (a restart).
    """
    return make_db_url()
