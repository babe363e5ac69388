"""Shared fixtures. Tests never touch the developer's ./data: everything lives in temp dirs.

The embedded model is converted once per test session into a shared temp data
dir (``ASSISTANT_TEST_MODEL_DIR`` may point at an existing one to save ~20 s).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
    """Settings with a fresh data dir (own database) that reuses the converted model."""

    def make(**overrides) -> Settings:
        data = tmp_path / f"data{len(list(tmp_path.iterdir()))}"
        data.mkdir()
        (data / "models").symlink_to(model_data_dir / "models")
        base = dict(data_dir=data, dev_mode=True, default_max_new_tokens=8, default_temperature=0.0)
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture(scope="session")
def shared_engine(model_data_dir):
    """One started engine for the API tests (loading the model once)."""
    from service.engine import build_engine

    settings = Settings(data_dir=model_data_dir, dev_mode=True, engine=os.environ.get("ASSISTANT_TEST_ENGINE", "naive"))
    engine = build_engine(settings)
    engine.start()
    yield engine
    engine.stop()
