"""kill -9 in the middle of publishing adapters, again and again: what serves is always whole.

A child process publishes and activates small adapters for one scope in a tight loop
(``adapter_store.publish`` then ``activate``, as a training run's job does) and is killed with
SIGKILL at a random moment, 20 times. After every kill the active version must point at a
complete directory (valid safetensors, metadata naming that version), and recovery must
leave no temporary or row-less directory behind. Loopback only, no model: a few seconds a kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

from safetensors.torch import load_file
from sqlmodel import Session, select

from service import adapter_store
from service.db import init_db, make_engine
from service.models import AdapterVersion, RunStatus, TrainingRun
from service.settings import Settings

from learning.jobs import recover_interrupted_runs

KILLS = int(os.environ.get("ASSISTANT_TEST_PUBLISH_KILLS", "20"))

PUBLISH_LOOP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from sqlmodel import Session
    from service import adapter_store
    from service.db import make_engine
    from service.models import AdapterStatus
    from service.settings import Settings

    settings = Settings(data_dir=Path(sys.argv[1]), dev_mode=True)
    engine = make_engine(settings)
    src, run_id = Path(sys.argv[2]), int(sys.argv[3])
    src.mkdir(exist_ok=True)
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"base_model.model.lora_A.weight": torch.randn(256, 256)}, str(src / "adapter_model.safetensors"))
    print("ready", flush=True)
    while True:
        with Session(engine, expire_on_commit=False) as s:
            row = adapter_store.publish(settings, s, user_id=None, src_dir=src, metadata={"loop": True},
                                        status=AdapterStatus.promoted, training_run_id=run_id)
            adapter_store.activate(s, user_id=None, version_id=row.id)
""")


def assert_served_version_is_whole(settings: Settings, engine) -> int | None:
    with Session(engine) as s:
        active = adapter_store.active_version(s, None)
        if active is None:
            return None
        path = settings.adapters_dir / active.path
        adapter_store.validate_adapter_dir(path)
        weights = load_file(str(path / "adapter_model.safetensors"))
        assert weights["base_model.model.lora_A.weight"].shape == (256, 256)
        meta = json.loads((path / "metadata.json").read_text())
        assert meta["version"] == active.version and meta["loop"] is True
        return active.version


def test_kill_minus_nine_while_publishing_never_serves_a_partial_adapter(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", dev_mode=True)
    engine = make_engine(settings)
    init_db(engine)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    rng = random.Random(7)
    served: list[int | None] = []
    for i in range(KILLS):
        # Each publisher runs as a training run's job does; its run is recovered (failed) after the kill,
        # so a directory it left without a row is that failed run's and may be removed.
        with Session(engine) as s:
            run = TrainingRun(status=RunStatus.running)
            s.add(run)
            s.commit()
            run_id = run.id
        proc = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(settings.data_dir), str(tmp_path / "src"), str(run_id)],
                                env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.6))  # publishing all the while
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None, "the publish loop died on its own"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()

        served.append(assert_served_version_is_whole(settings, engine))
        recover_interrupted_runs(settings, engine, stale_after=-1)  # no live publisher: everything old is debris
        served_after = assert_served_version_is_whole(settings, engine)
        assert served_after == served[-1]  # recovery never changes what serves
        tmp = settings.adapters_dir / ".tmp"
        assert not tmp.exists() or not any(tmp.iterdir()), f"kill {i}: temp dirs left: {list(tmp.iterdir())}"
        with Session(engine) as s:
            rows = {v.path for v in s.exec(select(AdapterVersion)).all()}
        on_disk = {f"{p.parent.name}/{p.name}" for p in settings.adapters_dir.glob("*/v*")}
        assert on_disk == rows, f"kill {i}: directories without rows {on_disk - rows}, rows without directories {rows - on_disk}"
    published = [v for v in served if v is not None]
    assert published and published == sorted(published)  # the loop really published, and never went back
