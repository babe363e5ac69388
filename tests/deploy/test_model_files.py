"""The files the product writes can be read where they are used (issue 13, Docker): the provisioned
model by a server running as another user, and published adapters by tools on another machine."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlmodel import Session

from service import adapter_store
from service.bench import make_random_adapter
from service.db import init_db, make_engine
from service.model_loading import EMBEDDED_HUB_ID, load_base_model


def test_provisioned_model_is_readable_by_another_user(model_data_dir, tmp_path):
    model_dir = model_data_dir / "models" / "smollm2-135m-instruct"
    for f in model_dir.iterdir():
        assert f.stat().st_mode & 0o444 == 0o444, f"{f.name} is {stat.filemode(f.stat().st_mode)}: a non-root server cannot read it"
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root to switch users")
    # The test's temporary dirs are private (0700): link the file into a world-traversable one.
    shared = Path(tempfile.mkdtemp(prefix="model-read-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        link = shared / "model.safetensors"
        os.link(model_dir / "model.safetensors", link)  # the same inode, so the same mode
        # head(1), not this venv's python: the server's user need not be able to run our interpreter
        read = subprocess.run(["head", "-c", "16", str(link)], user=65534, group=65534, capture_output=True, cwd="/")
    finally:
        shutil.rmtree(shared)
    assert read.returncode == 0, read.stderr


def test_published_adapter_names_the_base_model_not_a_local_path(make_settings, tmp_path):
    settings = make_settings()
    src = tmp_path / "adapter"
    make_random_adapter(load_base_model(settings), src, seed=1)
    db = make_engine(settings)
    init_db(db)
    with Session(db) as session:
        row = adapter_store.publish(settings, session, user_id=None, src_dir=src, metadata={"note": "test"})
        path = settings.adapters_dir / row.path
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID
    meta = json.loads((path / "metadata.json").read_text())
    assert "base_model_local_path" in meta and meta["note"] == "test"  # what PEFT had written is kept beside
    for f in path.iterdir():
        assert f.stat().st_mode & 0o444 == 0o444, f.name
    db.dispose()
