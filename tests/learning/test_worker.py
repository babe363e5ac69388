"""Claiming runs exactly once across threads and processes; the schedule; recovery after a crash."""

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from service.models import AdapterStatus, AdapterVersion, RunStatus, Schedule, TrainingRun, utcnow

from learning.jobs import recover_interrupted_runs
from learning.worker import RunConflict, Worker, claim_next, claim_run, enqueue_run, fire_schedule


def statuses(db):
    with Session(db) as s:
        return {r.id: (r.status, r.worker_id) for r in s.exec(select(TrainingRun)).all()}


def test_threads_racing_claim_exactly_one_run(db):
    ids = [enqueue_run(db, trigger="manual", user_ids=[i]).id for i in (1, 2, 3)]
    barrier = threading.Barrier(8)
    got: list[int | None] = []

    def worker(n: int) -> None:
        barrier.wait()
        got.append(claim_next(db, f"thread-{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [g for g in got if g is not None]
    assert claimed == [ids[0]]  # one run at a time: the oldest, by exactly one thread
    running = [rid for rid, (st, _) in statuses(db).items() if st == RunStatus.running]
    assert running == [ids[0]]


def test_processes_racing_claim_exactly_once(db, settings):
    run_id = enqueue_run(db, trigger="manual").id
    start_at = time.time() + 3.0
    script = textwrap.dedent(f"""
        import time, sys
        from pathlib import Path
        from service.settings import Settings
        from service.db import make_engine
        from learning.worker import claim_run
        engine = make_engine(Settings(data_dir=Path({str(settings.data_dir)!r}), dev_mode=True))
        engine.connect().close()
        time.sleep(max(0.0, {start_at} - time.time()))
        print(claim_run(engine, {run_id}, sys.argv[1]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"proc-{n}"], stdout=subprocess.PIPE, text=True)
             for n in range(4)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outputs) == ["False", "False", "False", "True"]
    status, owner = statuses(db)[run_id]
    assert status == RunStatus.running and owner == f"proc-{outputs.index('True')}"


def test_overlapping_runs_conflict_disjoint_ones_do_not(db):
    first = enqueue_run(db, trigger="manual", user_ids=[1, 2])
    with pytest.raises(RunConflict) as err:
        enqueue_run(db, trigger="manual", user_ids=[2, 3])
    assert err.value.run_id == first.id
    with pytest.raises(RunConflict):
        enqueue_run(db, trigger="schedule")  # all users overlaps everything
    assert enqueue_run(db, trigger="manual", user_ids=[4]).id != first.id


def test_concurrent_enqueues_of_overlapping_runs_queue_exactly_one(db):
    """Issue 12, finding 19: the overlap check and the insert are one locked transaction, so
    callers racing (the admin route, the schedule, the CLI) cannot both queue overlapping runs."""
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def enqueue() -> None:
        barrier.wait()
        try:
            enqueue_run(db, trigger="manual", user_ids=[7])
            outcomes.append("queued")
        except RunConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=enqueue) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["queued"]
    with Session(db) as s:
        assert len(s.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.queued)).all()) == 1


def test_schedule_fires_once_per_minute_across_workers(db, settings):
    now = utcnow().replace(second=5)
    assert fire_schedule(db, settings, now) is not None
    assert fire_schedule(db, settings, now + timedelta(seconds=20)) is None  # same minute, another worker
    # next minute: the first run is still queued, so nothing piles up
    assert fire_schedule(db, settings, now + timedelta(minutes=1)) is None
    with Session(db) as s:
        assert [r.trigger for r in s.exec(select(TrainingRun)).all()] == ["schedule"]


def test_worker_rereads_schedule_from_the_database(db, settings):
    worker = Worker(settings, db, poll_seconds=3600).start()
    try:
        job = worker._scheduler.get_job("nightly-training")
        assert job is not None and "hour='2'" in str(job.trigger)
        with Session(db) as s:
            row = s.get(Schedule, 1)
            row.cron = "30 4 * * 1"
            s.add(row)
            s.commit()
        worker.sync_schedule()
        trigger = str(worker._scheduler.get_job("nightly-training").trigger)
        assert "hour='4'" in trigger and "minute='30'" in trigger
        with Session(db) as s:
            row = s.get(Schedule, 1)
            row.enabled = False
            s.add(row)
            s.commit()
        worker.sync_schedule()
        assert worker._scheduler.get_job("nightly-training") is None
    finally:
        worker.stop()


def test_recovery_fails_dead_runs_and_rejects_their_unjudged_adapters(db, settings):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    import socket

    with Session(db) as s:
        crashed = TrainingRun(status=RunStatus.running, worker_id=f"{socket.gethostname()}:{dead_pid}:abc",
                              heartbeat_at=utcnow(), progress=0.4)
        remote_alive = TrainingRun(status=RunStatus.running, worker_id="otherhost:1:abc", heartbeat_at=utcnow())
        s.add(crashed)
        s.add(remote_alive)
        s.commit()
        s.add(AdapterVersion(user_id=None, version=1, status=AdapterStatus.candidate, path="global/v1",
                             training_run_id=crashed.id))
        s.commit()
        crashed_id, alive_id = crashed.id, remote_alive.id

    assert recover_interrupted_runs(settings, db) == [crashed_id]
    with Session(db) as s:
        run = s.get(TrainingRun, crashed_id)
        assert run.status == RunStatus.failed and "interrupted" in run.error and "40%" in run.error
        assert s.get(TrainingRun, alive_id).status == RunStatus.running  # fresh heartbeat elsewhere: left alone
        assert s.exec(select(AdapterVersion)).one().status == AdapterStatus.rejected
    # once the remote worker's heartbeat is stale it is recovered too
    assert recover_interrupted_runs(settings, db, stale_after=-1) == [alive_id]


def test_recovery_removes_a_directory_whose_publish_never_reached_the_database(db, settings, caplog):
    with Session(db) as s:
        failed = TrainingRun(status=RunStatus.failed)
        s.add(failed)
        s.commit()
        s.add(AdapterVersion(user_id=None, version=2, status=AdapterStatus.promoted, path="user-7/v2"))
        s.commit()
        failed_id = failed.id

    def version_dir(rel: str, run_id: int | None):
        path = settings.adapters_dir / rel
        path.mkdir(parents=True)
        (path / "adapter_model.safetensors").write_bytes(b"half")
        (path / "metadata.json").write_text(json.dumps({"training_run_id": run_id}))
        return path

    orphan = version_dir("user-7/v3", failed_id)  # the failed run's leftover: removed
    kept = version_dir("user-7/v2", None)  # has a row
    # Issue 12, finding 10: versions this database does not know (an empty or older database, another
    # deployment's store) are kept and reported, never deleted.
    foreign = version_dir("user-9/v1", failed_id + 100)
    legacy = settings.adapters_dir / "user-9" / "v2"
    legacy.mkdir(parents=True)
    caplog.set_level(logging.ERROR, logger="learning.jobs")
    recover_interrupted_runs(settings, db)
    assert not orphan.exists() and kept.exists() and foreign.exists() and legacy.exists()
    assert any("does not know" in r.getMessage() and "user-9/v1" in r.getMessage() for r in caplog.records)


def test_stopping_a_worker_mid_run_fails_the_run_and_the_run_stops_publishing(db, settings):
    from learning.jobs import RunAborted, update_run as _update_run

    worker = Worker(settings, db, poll_seconds=3600)
    run_id = enqueue_run(db, trigger="manual").id
    assert claim_run(db, run_id, worker.worker_id)
    worker.current_run = run_id  # as if its training thread were executing the run
    worker.stop()
    with Session(db) as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == RunStatus.failed and "was stopped" in run.error
    with pytest.raises(RunAborted):  # the training thread's next progress/publish check gives up
        _update_run(db, run_id, progress=0.5)


def test_train_cli_queues_for_a_named_user_and_refuses_while_another_run_executes(db, settings, seeder):
    from learning.worker import RunBusy, train_foreground

    alice = seeder.user("alice")
    with pytest.raises(LookupError, match="no user named 'nobody'"):
        train_foreground(settings, "nobody", engine=db)
    queued = train_foreground(settings, "alice", now=False, engine=db)
    with Session(db) as s:
        run = s.get(TrainingRun, queued)
        assert (run.status, run.trigger, run.user_ids) == (RunStatus.queued, "cli", [alice])
    assert claim_run(db, queued, "someone-else")  # a worker is executing it
    seeder.user("bob")
    with pytest.raises(RunBusy, match="stays queued"):
        train_foreground(settings, "bob", now=True, engine=db, show_progress=False)


# --- per-user jobs ---------------------------------------------------------------------------------


def running_run_with_jobs(db, user_ids: list[int | None]) -> tuple[int, dict[int | None, int]]:
    """A claimed run whose shared stage has queued one job per scope (None = the global adapter)."""
    from service.models import TrainingResult

    run_id = enqueue_run(db, trigger="manual").id
    assert claim_run(db, run_id, "stage-worker")
    with Session(db) as s:
        jobs = {uid: TrainingResult(run_id=run_id, user_id=uid, status=RunStatus.queued) for uid in user_ids}
        for job in jobs.values():
            s.add(job)
        s.commit()
        return run_id, {uid: job.id for uid, job in jobs.items()}


@pytest.fixture
def backend_db(db_url, tmp_path):
    """An initialised engine on SQLite, then on PostgreSQL (when ASSISTANT_TEST_POSTGRES_URL is set)."""
    from service.db import init_db, make_engine
    from service.settings import Settings

    engine = make_engine(Settings(data_dir=tmp_path / "backend", dev_mode=True, database_url=db_url))
    init_db(engine)
    yield engine
    engine.dispose()


def test_threads_racing_for_jobs_take_each_exactly_once_global_first(backend_db):
    from service.models import TrainingResult

    from learning.jobs import claim_job

    from tests.learning.conftest import Seeder

    db, seeder = backend_db, Seeder(backend_db)
    users = [seeder.user(n) for n in ("u1", "u2", "u3")]
    run_id, jobs = running_run_with_jobs(db, [None, *users])
    barrier = threading.Barrier(6)
    got: list[tuple[str, int]] = []

    def race(name: str) -> None:
        barrier.wait()
        job = claim_job(db, name)
        if job is not None:
            got.append((name, job))

    def race_all() -> None:
        threads = [threading.Thread(target=race, args=(f"w{n}",)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    race_all()
    assert [job for _, job in got] == [jobs[None]]  # user jobs wait for the global adapter
    with Session(db) as s:
        g = s.get(TrainingResult, jobs[None])
        g.status = RunStatus.succeeded
        s.add(g)
        s.commit()
    got.clear()
    race_all()
    assert sorted(job for _, job in got) == sorted(jobs[u] for u in users)  # each user job once
    with Session(db) as s:
        rows = {r.id: r for r in s.exec(select(TrainingResult).where(TrainingResult.run_id == run_id)).all()}
    assert all(rows[job].worker_id == name and rows[job].status == RunStatus.running for name, job in got)
    assert claim_job(db, "late") is None


def test_a_dead_jobs_worker_fails_the_job_and_the_last_job_ends_the_run(db, settings, seeder):
    from service.models import TrainingResult

    from learning.jobs import claim_job, finish_run_if_done

    alice, bob = seeder.user("alice"), seeder.user("bob")
    run_id, jobs = running_run_with_jobs(db, [alice, bob])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    dead_worker = f"{socket.gethostname()}:{int(dead.stdout)}:abc"
    assert claim_job(db, dead_worker) == jobs[alice]
    with Session(db) as s:
        s.add(AdapterVersion(user_id=alice, version=1, status=AdapterStatus.candidate, path="user-1/v1",
                             training_run_id=run_id))
        s.commit()
    assert claim_job(db, "otherhost:1:live") == jobs[bob]
    assert recover_interrupted_runs(settings, db) == []  # bob's job is still going: the run goes on
    with Session(db) as s:
        job = s.get(TrainingResult, jobs[alice])
        assert job.status == RunStatus.failed and "interrupted" in job.reason and dead_worker in job.reason
        assert s.exec(select(AdapterVersion)).one().status == AdapterStatus.rejected
        assert s.get(TrainingRun, run_id).status == RunStatus.running
        b = s.get(TrainingResult, jobs[bob])
        b.status = RunStatus.succeeded
        s.add(b)
        s.commit()
    assert finish_run_if_done(settings, db, run_id) == RunStatus.failed
    assert finish_run_if_done(settings, db, run_id) is None  # ended exactly once
    with Session(db) as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == RunStatus.failed and run.error.startswith("user:") and "interrupted" in run.error
        assert run.progress == 1.0


def test_stopping_a_worker_mid_job_fails_only_that_job(db, settings, seeder):
    from service.models import TrainingResult

    from learning.jobs import RunAborted, claim_job, update_job as _update_job

    alice, bob = seeder.user("alice"), seeder.user("bob")
    run_id, jobs = running_run_with_jobs(db, [alice, bob])
    worker = Worker(settings, db, poll_seconds=3600)
    job = claim_job(db, worker.worker_id)
    worker.current_job = job  # as if its training thread were executing the job
    worker.stop()
    with Session(db) as s:
        assert "was stopped" in s.get(TrainingResult, job).reason
        assert s.get(TrainingRun, run_id).status == RunStatus.running  # the other job can still run
    with pytest.raises(RunAborted):  # the training thread's next progress/publish check gives up
        _update_job(db, job, worker.worker_id, progress=0.5)


@pytest.mark.parametrize("safety_at_start", ["0", "1"], ids=["idle", "training-the-safety-stage"])
def test_a_worker_started_by_a_server_stops_when_the_server_dies(make_settings, tmp_path, safety_at_start):
    """`assistant serve` passes --parent-pid: its worker must not train on alone after a kill -9, also
    while it trains the safety stage at its first start (minutes; before, it went on to the end)."""
    import os

    settings = make_settings()
    pid_file = tmp_path / "worker.pid"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = dict(os.environ, ASSISTANT_DATA_DIR={str(settings.data_dir)!r}, ASSISTANT_DEV_MODE="1",
                   ASSISTANT_SCHEDULE_ENABLED="0", ASSISTANT_SAFETY_TRAIN_AT_START={safety_at_start!r},
                   ASSISTANT_SAFETY_SAMPLES="1")
        w = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--parent-pid", str(os.getpid())], env=env)
        open({str(pid_file)!r}, "w").write(str(w.pid))
        time.sleep(3 if {safety_at_start!r} == "0" else 15)  # "1": well into the safety stage's sampling
        os._exit(0)  # gone without a word, like kill -9: no clean-up of its children
    """)
    subprocess.run([sys.executable, "-c", parent], timeout=60, check=True)
    worker_pid = int(pid_file.read_text())
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break  # the orphaned worker noticed and exited
        with open(f"/proc/{worker_pid}/stat") as f:
            if f.read().split()[2] == "Z":
                break  # exited, not yet reaped
        time.sleep(0.5)
    else:
        os.kill(worker_pid, 9)
        pytest.fail("the worker kept running after the process that started it died")


def test_a_reused_pid_does_not_keep_a_dead_workers_run_alive():
    """Issue 12, finding 19: worker ids carry the process start time, so after a container restart
    (pids numbered again) a live process with the old worker's pid is not taken for that worker."""
    import socket

    from learning.jobs import _owner_is_dead, _process_start, new_worker_id

    host, pid = socket.gethostname(), 1  # pid 1 is always alive
    assert not _owner_is_dead(f"{host}:{pid}:{_process_start(pid)}:aaaaaa", None, 60.0)
    assert _owner_is_dead(f"{host}:{pid}:{int(_process_start(pid)) + 1}:aaaaaa", None, 60.0)  # same pid, other process
    assert not _owner_is_dead(f"{host}:{pid}:aaaaaa", None, 60.0)  # ids from before: the pid alone decides
    assert new_worker_id().split(":")[2] == _process_start(__import__("os").getpid())


def test_a_job_whose_user_deleted_their_ratings_meanwhile_never_serves(db, seeder):
    """Audit 2026-12-05, M3(a): the publish step asks this, in the transaction that would activate."""
    from datetime import timedelta

    from sqlmodel import Session

    from learning.recipe import _ratings_deleted_since
    from service import crud
    from service.models import User, utcnow

    alice = seeder.user("alice")
    snapshot_at = utcnow()
    with Session(db) as s:
        assert _ratings_deleted_since(s, alice, snapshot_at) is None
        assert _ratings_deleted_since(s, None, snapshot_at) is None  # the global job
        crud.delete_feedback(s, user_id=alice)  # while the job trains
        assert "deleted their ratings" in _ratings_deleted_since(s, alice, snapshot_at)
        assert _ratings_deleted_since(s, alice, utcnow() + timedelta(seconds=1)) is None  # deleted before the snapshot
        s.delete(s.get(User, alice))
        s.commit()
        assert "account was deleted" in _ratings_deleted_since(s, alice, snapshot_at)


def test_a_worker_in_another_container_with_the_same_hostname_and_pid_is_judged_by_its_heartbeat():
    """Issue 28, L2: two containers with one hostname (an explicit ``hostname:``) both run their
    worker as PID 1; each took the other's running job for dead at once, from the pid alone."""
    import os
    import socket
    from datetime import timedelta

    from learning.jobs import _owner_is_dead, _pid_namespace, _process_start, new_worker_id
    from service.models import utcnow

    host, pid = socket.gethostname(), os.getpid()
    elsewhere = f"{host}:{pid}:{_process_start(pid)}:bbbbbb:{int(_pid_namespace()) + 1}"  # our pid, another namespace
    assert not _owner_is_dead(elsewhere, utcnow(), 60.0)  # its heartbeat is fresh: alive
    assert _owner_is_dead(elsewhere, utcnow() - timedelta(seconds=120), 60.0)  # silent: dead
    here = new_worker_id()
    assert here.split(":")[4] == _pid_namespace()
    assert _owner_is_dead(here, utcnow(), 60.0)  # this very process, and no live worker of it holds that id



def test_a_global_version_that_learned_from_deleted_ratings_is_not_started_from(db, seeder):
    """Audit 2026-12-05, M3(c): every global version started from the last, so "the shared model forgets
    your ratings at its next run" was false. Its lineage's snapshots say what it learned from."""
    from sqlmodel import Session

    from service import crud
    from service.adapter_store import learned_from_deleted_labels
    from service.models import TrainingSnapshot

    alice, bob = seeder.user("alice"), seeder.user("bob")
    (a,) = seeder.turn(alice, "q", ["alice's reply"])
    (b,) = seeder.turn(bob, "q", ["bob's reply"])
    fa, fb = seeder.rate(alice, a, "up"), seeder.rate(bob, b, "down")
    with Session(db) as s:
        versions = []
        for n, (feedback, started_from) in enumerate((([fa], "fresh"), ([fb], "global-v1"), ([fb], "fresh")), start=1):
            run = TrainingRun(status=RunStatus.succeeded)
            s.add(run)
            s.commit()
            s.add(TrainingSnapshot(run_id=run.id, sha256="x", feedback_ids=feedback, ranking_ids=[]))
            v = AdapterVersion(user_id=None, version=n, status=AdapterStatus.promoted, path=f"global/v{n}",
                               training_run_id=run.id, metrics={"started_from": started_from})
            s.add(v)
            s.commit()
            versions.append(v)
        v1, v2, v3 = versions
        assert not any(learned_from_deleted_labels(s, v) for v in versions)
        crud.delete_feedback(s, user_id=alice)  # alice's rating trained v1, which v2 started from
        assert learned_from_deleted_labels(s, v1) and learned_from_deleted_labels(s, v2)
        assert not learned_from_deleted_labels(s, v3)  # a fresh start, on bob's rating only
