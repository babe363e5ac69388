"""Two real ``assistant worker`` processes share one training run: each adapter is trained once.

One run is queued for three scopes (the global adapter and two users); two worker processes
poll the same database. The first to claim the run does the shared stage and queues the jobs;
both then take jobs with the conditional UPDATE until none is left.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlmodel import Session, select

from service.db import init_db, make_engine
from service.models import AdapterVersion, RunStatus, TrainingResult, TrainingRun

from learning.worker import enqueue_run

from tests.learning.conftest import Seeder, seed_feedback

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

TINY_ENV = {
    "ASSISTANT_PPO_STEPS": "1", "ASSISTANT_PPO_BATCH_SIZE": "2", "ASSISTANT_PPO_MINIBATCH_SIZE": "1",
    "ASSISTANT_PPO_GROUP_SIZE": "2", "ASSISTANT_WARM_START_PROMPTS": "2", "ASSISTANT_WARM_START_SAMPLES": "2",
    "ASSISTANT_WARM_START_EPOCHS": "1",
    "ASSISTANT_PPO_EPOCHS": "1", "ASSISTANT_PPO_MAX_NEW_TOKENS": "8", "ASSISTANT_GATE_PROMPTS": "2",
    "ASSISTANT_GATE_HARM_PROMPTS": "1", "ASSISTANT_GATE_HARM_SAMPLES": "3", "ASSISTANT_GATE_BASE_HARM_SAMPLES": "0",
    "ASSISTANT_LORA_R": "4", "ASSISTANT_LORA_ALPHA": "8", "ASSISTANT_MIN_USER_LABELS": "2",
    "ASSISTANT_MIN_GLOBAL_LABELS": "2", "ASSISTANT_REWARD_STEPS": "40", "ASSISTANT_MAX_PROMPT_TOKENS": "128",
    "ASSISTANT_MAX_REPLY_TOKENS": "64",
    # the rollouts' dtype fixed: "auto" times both dtypes in every worker process, minutes of this test on a busy machine
    "ASSISTANT_DTYPE": "float32",
    # one torch thread each: two workers on every core of a 2-core machine oversubscribe it (OpenMP teams
    # spinning against each other), which made this the suite's slowest test (warm starts of 200 s, not 2)
    "ASSISTANT_WORKER_THREADS": "1",
}


def worker_env(settings) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1", ASSISTANT_DATA_DIR=str(settings.data_dir),
                ASSISTANT_DEV_MODE="1", ASSISTANT_WORKER_POLL_SECONDS="0.5", **TINY_ENV)


def test_two_worker_processes_train_every_user_exactly_once(make_settings, tmp_path):
    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)
    seeder = Seeder(engine)
    users = [seed_feedback(seeder, name, n_turns=2) for name in ("ann", "ben")]  # two: the suite's slowest test

    logs = [tmp_path / f"worker{n}.log" for n in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=worker_env(settings),
                              stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    try:
        # queue only once both are polling, so a slow start cannot leave one of them without work
        # Waits count polls, not clock time: on a shared, suspendable VM the clock can jump minutes.
        for _ in range(240):
            if all("training worker" in log.read_text() and "started" in log.read_text() for log in logs):
                break
            assert all(p.poll() is None for p in procs), \
                "a worker did not start:\n" + "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.5)
        else:
            raise AssertionError("the workers did not start in 240 polls")
        run_id = enqueue_run(engine, trigger="manual").id
        for _ in range(900):  # polls of 1 s: this machine runs up to 3x slower some days
            with Session(engine) as s:
                run = s.get(TrainingRun, run_id)
            if run.status in (RunStatus.succeeded, RunStatus.failed) or any(p.poll() is not None for p in procs):
                break
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    tails = "\n".join(f"--- {log.name}\n" + log.read_text()[-3000:] for log in logs)
    assert run.status == RunStatus.succeeded, f"run ended {run.status.value}: {run.error}\n{tails}"
    assert run.progress == 1.0

    pids = {str(p.pid) for p in procs}
    with Session(engine) as s:
        jobs = s.exec(select(TrainingResult).where(TrainingResult.run_id == run_id)).all()
        versions = s.exec(select(AdapterVersion).where(AdapterVersion.training_run_id == run_id)).all()
    # one job row per scope, each done by exactly one of the two workers, each published once
    assert sorted(jobs, key=lambda j: j.user_id or 0) and sorted((j.user_id or 0) for j in jobs) == [0, *sorted(users)]
    assert all(j.status == RunStatus.succeeded and j.adapter_version_id is not None for j in jobs), tails
    assert all(j.worker_id and j.worker_id.split(":")[1] in pids for j in jobs)
    assert sorted((v.user_id or 0) for v in versions) == [0, *sorted(users)]
    assert {j.adapter_version_id for j in jobs} == {v.id for v in versions}
    owners = {j.worker_id for j in jobs}
    logger.info("jobs per worker: %s", {w: sum(j.worker_id == w for j in jobs) for w in owners})
    # Each user job takes seconds and the idle worker polls every 0.5 s, so with two user jobs
    # queued at once after the global one, both workers get work.
    assert len(owners) == 2, f"one worker took every job: {[(j.user_id, j.worker_id) for j in jobs]}\n{tails}"
