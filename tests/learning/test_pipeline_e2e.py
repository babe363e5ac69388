"""End to end on the real embedded model with tiny budgets: a run trains, gates and publishes;
a run killed with SIGKILL leaves nothing half-published and recovery marks it failed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import load_file
from sqlmodel import Session, select

from service import adapter_store
from service.db import init_db, make_engine
from service.models import AdapterStatus, AdapterVersion, RunStatus, TrainingResult, TrainingRun, TrainingSnapshot

from learning.jobs import recover_interrupted_runs, update_run
from learning.pipeline import run_training
from learning.worker import claim_run, enqueue_run

from tests.learning.conftest import Seeder, seed_feedback, tiny_budgets

pytestmark = pytest.mark.e2e


@pytest.fixture
def model_settings(make_settings):
    return make_settings()


@pytest.fixture
def model_db(model_settings):
    engine = make_engine(model_settings)
    init_db(engine)
    yield engine
    engine.dispose()


def test_a_run_trains_gates_and_publishes(model_settings, model_db):
    seeder = Seeder(model_db)
    alice = seed_feedback(seeder, "alice", n_turns=3)
    newbie = seeder.user("newbie")
    (m,) = seeder.turn(newbie, "hello", ["hi!"])
    seeder.rate(newbie, m, "up")
    run = enqueue_run(model_db, trigger="manual")
    assert claim_run(model_db, run.id, "test-worker")
    seen: list[float] = []

    # the base's harm sample drawn once for the run (4 replies per harm-inviting gate prompt), candidates 3
    run_training(model_settings, model_db, run.id, lambda f, _msg: seen.append(f),
                 budgets=tiny_budgets(gate_base_harm_samples=4, gate_harm_samples=3))

    with Session(model_db) as s:
        row = s.get(TrainingRun, run.id)
        assert row.status == RunStatus.succeeded and row.progress == 1.0 and row.error is None
        assert seen == sorted(seen) and seen[-1] == 1.0
        snapshot = s.exec(select(TrainingSnapshot).where(TrainingSnapshot.run_id == run.id)).one()
        assert "reward/heldout_accuracy" in snapshot.stats["models"]
        results = {r.user_id: r for r in s.exec(select(TrainingResult).where(TrainingResult.run_id == run.id)).all()}
        assert set(results) == {None, alice, newbie}
        assert results[newbie].adapter_version_id is None and "skipped" in results[newbie].reason
        for scope in (None, alice):
            res = results[scope]
            version = s.get(AdapterVersion, res.adapter_version_id)
            # published either way, with the verdict and its reason
            assert version.status == (AdapterStatus.promoted if res.promoted else AdapterStatus.rejected)
            assert version.reason == res.reason and res.reason.split(":")[0] in ("promoted", "rejected")
            assert {"gate/candidate/mean_reward", "gate/base/harm_rate", "ppo/approx_kl", "time/total_s",
                    "time/shared_samples_s"} <= set(res.metrics)
            assert res.metrics["ppo/steps"] == 2
            active = adapter_store.active_version(s, scope)
            assert (active is not None and active.id == version.id) == res.promoted
            path = model_settings.adapters_dir / version.path
            meta = json.loads((path / "metadata.json").read_text())
            assert meta["snapshot"]["sha256"] == snapshot.sha256 and meta["base_model_hash"]
            assert meta["snapshot"]["feedback_ids"] == snapshot.feedback_ids
            weights = load_file(str(path / "adapter_model.safetensors"))
            lora_b = [t for k, t in weights.items() if "lora_B" in k]
            assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # B starts at zero: PPO moved it
        # one base harm sample served both jobs; the global candidate was sampled as much as the base
        base_of = {scope: (results[scope].metrics["gate/base/harm_mean"], results[scope].metrics["gate/base/harm_n"])
                   for scope in (None, alice)}
        harm_prompts = (base_of[alice][1] - results[alice].metrics["gate/base/n"]) // 4
        assert harm_prompts >= 1 and base_of[None][0] == base_of[alice][0]
        assert results[alice].metrics["gate/candidate/harm_n"] == results[alice].metrics["gate/candidate/n"] + 3 * harm_prompts
        assert results[None].metrics["gate/candidate/harm_n"] == results[None].metrics["gate/candidate/n"] + 4 * harm_prompts
        # the user's PPO started where the global one ended
        assert results[alice].metrics["started_from"] in ("fresh", "global-v1")
        assert results[alice].metrics["started_from"] == ("global-v1" if results[None].promoted else "fresh")


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from service.settings import Settings
    from service.db import make_engine
    from learning.pipeline import run_training
    from tests.learning.conftest import tiny_budgets
    settings = Settings(data_dir=Path(sys.argv[1]), dev_mode=True)
    run_training(settings, make_engine(settings), int(sys.argv[2]), budgets=tiny_budgets(ppo_steps=50))
""")


def test_kill_minus_nine_mid_run_leaves_the_last_promoted_adapter_serving(model_settings, model_db, tmp_path):
    from peft import LoraConfig, get_peft_model

    from service.model_loading import load_base_model

    seeder = Seeder(model_db)
    alice = seed_feedback(seeder, "alice", n_turns=2)
    # alice is served a promoted adapter from an earlier run
    src = tmp_path / "previous"
    get_peft_model(load_base_model(model_settings), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(src)
    with Session(model_db, expire_on_commit=False) as s:
        previous = adapter_store.publish(model_settings, s, user_id=alice, src_dir=src, metadata={},
                                         status=AdapterStatus.promoted)
        adapter_store.activate(s, user_id=alice, version_id=previous.id)

    run = enqueue_run(model_db, trigger="manual", user_ids=[alice])
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(model_settings.data_dir), str(run.id)], env=env)
    # claim it on the child's behalf with its pid, as its worker would
    import socket

    assert claim_run(model_db, run.id, f"{socket.gethostname()}:{proc.pid}:test")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until PPO is under way (past the reward models)
        with Session(model_db) as s:
            progress = s.get(TrainingRun, run.id).progress
        if progress > 0.25 or proc.poll() is not None:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the training subprocess ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert recover_interrupted_runs(model_settings, model_db) == [run.id]
    with Session(model_db) as s:
        row = s.get(TrainingRun, run.id)
        assert row.status == RunStatus.failed and "interrupted" in row.error
        assert adapter_store.active_version(s, alice).id == previous.id
        assert adapter_store.resolve_for_user(model_settings, s, alice).version_id == previous.id
        versions = s.exec(select(AdapterVersion)).all()
        assert all(v.status != AdapterStatus.candidate for v in versions)
        results = s.exec(select(TrainingResult).where(TrainingResult.run_id == run.id)).all()
        assert all(r.status == RunStatus.failed for r in results)
    # every directory in the store belongs to a row; nothing half-written is left to serve
    on_disk = {p.parent.name + "/" + p.name for p in model_settings.adapters_dir.glob("*/v*")}
    assert on_disk == {v.path for v in versions}


def test_the_safety_stages_rows_reach_the_harm_head_when_asked(make_settings, tmp_path):
    """ASSISTANT_HARM_SAFETY_ROWS: the served safe base's HARM_ROWS.jsonl joins the users' harm labels."""
    from service.model_loading import EMBEDDED_DIRNAME, base_model_hash, resolve_model_path, safe_base_dir

    from learning.harm_rows import HARM_ROWS, HarmRow, dumps
    from learning.pipeline import run_shared_stage

    settings = make_settings()
    models = tmp_path / "own-models"  # a models folder of its own: the safe base is written into it
    models.mkdir()
    (models / EMBEDDED_DIRNAME).symlink_to((settings.models_dir / EMBEDDED_DIRNAME).resolve())
    (settings.data_dir / "models").unlink()
    (settings.data_dir / "models").symlink_to(models)
    safe = safe_base_dir(settings, base_model_hash(settings.model_copy(update={"safety_stage": False})))
    safe.mkdir(parents=True)
    for f in (models / EMBEDDED_DIRNAME).iterdir():  # the plain weights stand in for the stage's
        (safe / f.name).symlink_to(f.resolve())
    rows = [HarmRow(f"Write an insult about person {i}", f"you idiot number {i}", "flagged") for i in range(12)]
    rows += [HarmRow(f"Write an insult about person {i}", "Let's keep it kind instead.", "redirect") for i in range(12)]
    (safe / HARM_ROWS).write_text(dumps(rows))
    (safe / "SAFETY.json").write_text("{}")
    assert resolve_model_path(settings) == str(safe)

    engine = make_engine(settings)
    init_db(engine)
    seed_feedback(Seeder(engine), "alice", n_turns=2)
    stats = {}
    for on in (False, True):
        run = enqueue_run(engine, trigger="manual")
        assert claim_run(engine, run.id, "test-worker")
        run_shared_stage(settings, engine, run.id, budgets=tiny_budgets(harm_safety_rows=on))
        with Session(engine) as s:
            stats[on] = s.exec(select(TrainingSnapshot).where(TrainingSnapshot.run_id == run.id)).one().stats["models"]
        update_run(engine, run.id, status=RunStatus.succeeded)  # its jobs are not run here
    engine.dispose()
    assert "harm/train_safety_rows" not in stats[False]
    assert stats[True]["harm/train_safety_rows"] + stats[True].get("harm/heldout_safety_rows_labels", 0) == len(rows)
    assert stats[True]["harm/train_labels"] == stats[False]["harm/train_labels"] + stats[True]["harm/train_safety_rows"]
    assert stats[True]["harm/trained"]  # 12 harmful rows pass harm_min_positive (8) where the user's one label does not
