"""``assistant protocol``: one learning experiment in one command, on frozen data, judged by a powered evaluation.

Three sizes (``PROTOCOLS``):

- **quick** (about 30 min on the 2-core development machine): the five tuning profiles only, to
  decide between variants. Trains their adapters (no global one), then evaluates each candidate
  with 4 replies per held-out prompt against 4 cached base replies, 4 per red-team prompt, and the
  gate's stored KL.
- **full** (about 75 min): every profile, the held-out ones included, and the global adapter, for the
  record: 8 replies per held-out prompt on two seed sets (the test-retest spread), 8 per red-team
  prompt (480 per policy; the base 960), KL computed in batches.
- **smoke**: the same steps at toy size, for ``make test``.

More rounds of ratings and training on a kept run: ``assistant protocol rounds`` (``learning.sim.rounds``).
Longer replies in the fixture and the evaluation: ``--reply-tokens`` (``fixture_sets``).

The steps, each the product's own command in a process of its own:

1. **The fixture**: round 1 of simulated feedback, written once under ``--fixtures`` and reused by
   every later experiment: ``assistant serve --no-worker`` on an empty data dir and ``assistant
   simulate`` (70 votes per user, 48-token replies). ``tuning`` holds the five tuning profiles
   (seed 0); ``all`` is a copy of it plus the three held-out profiles (seed 1), so the tuning users'
   data is the same in both. Round 1 is served by the base model, so no learning code shapes it.
2. **Training on a copy** of the fixture: ``assistant train --now`` with a fixed PPO step count
   (``ASSISTANT_JOB_TIME_BUDGET_S=0``: the machine's speed that hour does not decide the result) and
   any ``--set NAME=VALUE`` training settings of the variant under test.
3. **The evaluation**: ``assistant evaluate`` with the protocol's sample counts; the base model's
   replies come from a cache under ``--fixtures`` shared by every experiment, and every policy's
   i-th reply to a prompt uses the same seed (common random numbers), so two experiments compare
   paired (``assistant protocol compare``). Its serving dtype is pinned to the one the first
   evaluation on those fixtures used (``evaluation_dtype``), so the cache hits and replies pair.
4. **The record** in ``--out``: ``protocol.json`` (command, commit, machine, settings, wall times),
   ``summary.md``, the evaluation's ``report.json``/``report.md`` and the logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from learning.sim.protocol_record import compare_reports, pooled_spread, render_comparison, render_summary, retest_spreads

logger = logging.getLogger(__name__)

ADMIN_PASSWORD = "protocol-admin-password"
EVALUATION_DTYPE_FILE = "evaluation-dtype.json"  # under --fixtures: the dtype every later evaluation serves in
DTYPES = ("float32", "bfloat16")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProfileSet:
    """Simulated users of one fixture step: ``<prefix><i>-<profile>``, one per profile."""

    prefix: str
    profiles: tuple[str, ...]
    seed: int
    ratings: int = 70
    max_new_tokens: int = 48


TUNING = ProfileSet("sim", ("concise", "detailed", "bulleted", "formal", "enthusiastic"), seed=0)
# Never used to tune anything: only the full protocol trains and evaluates them.
HELDOUT = ProfileSet("held", ("casual", "structured", "curious"), seed=1)
# Held out too, of another kind (issue 26): each prefers a property no reply trait measures.
NOVEL = ProfileSet("novel", ("direct", "analogies", "british", "summarised", "plain"), seed=2)
SMOKE = ProfileSet("smoke", ("concise", "detailed"), seed=0, ratings=4, max_new_tokens=8)

# Training settings of the smoke size: the smallest run that still trains, gates and publishes.
TINY_BUDGETS = {
    "ASSISTANT_PPO_BATCH_SIZE": "2", "ASSISTANT_PPO_MINIBATCH_SIZE": "2", "ASSISTANT_PPO_GROUP_SIZE": "2",
    "ASSISTANT_WARM_START_PROMPTS": "2", "ASSISTANT_WARM_START_SAMPLES": "2", "ASSISTANT_WARM_START_EPOCHS": "1",
    "ASSISTANT_PPO_EPOCHS": "1", "ASSISTANT_PPO_MAX_NEW_TOKENS": "8", "ASSISTANT_REWARD_STEPS": "20",
    "ASSISTANT_GATE_PROMPTS": "2", "ASSISTANT_GATE_HARM_PROMPTS": "1", "ASSISTANT_GATE_HARM_SAMPLES": "3",
    "ASSISTANT_GATE_BASE_HARM_SAMPLES": "0", "ASSISTANT_MIN_USER_LABELS": "3", "ASSISTANT_MIN_GLOBAL_LABELS": "3",
    "ASSISTANT_LORA_R": "4", "ASSISTANT_LORA_ALPHA": "8",
}
SMOKE_EVALUATE = ("--heldout", "3", "--red-team", "3", "--benign", "2", "--max-new-tokens", "8", "--samples", "2",
                  "--base-samples", "2", "--red-team-samples", "2", "--base-red-team-samples", "2", "--benign-samples", "1",
                  "--kl", "batched", "--batch-size", "8")


@dataclass(frozen=True)
class Protocol:
    name: str
    fixture: str
    """"tuning", "all" or "smoke" (``FIXTURES``)."""
    users_only: bool
    """Train only the fixture's users (no global adapter)."""
    ppo_steps: int
    evaluate: tuple[str, ...]
    """Arguments of ``assistant evaluate`` besides the users and the base cache."""
    env: dict[str, str] = field(default_factory=dict)
    """Training settings every run of this protocol uses."""
    served_evaluate: tuple[str, ...] = ()
    """The served evaluation of ``assistant protocol rounds`` on a run of this protocol, besides the seed, the users
    and the base cache; empty: ``learning.sim.rounds``' own (best-of-4 as served, the last round with harm)."""


FIXTURES: dict[str, tuple[ProfileSet, ...]] = {"tuning": (TUNING,), "all": (TUNING, HELDOUT), "novel": (NOVEL,),
                                               "smoke": (SMOKE,)}
GROUPS = {TUNING.prefix: "tuning", HELDOUT.prefix: "held-out", NOVEL.prefix: "held-out, no trait measures it",
          SMOKE.prefix: "tuning"}

PROTOCOLS = {
    "quick": Protocol("quick", "tuning", users_only=True, ppo_steps=8, evaluate=(
        "--samples", "4", "--base-samples", "4", "--red-team-samples", "4", "--base-red-team-samples", "16",
        "--benign-samples", "2", "--no-retest", "--kl", "metadata", "--batch-size", "32")),
    "full": Protocol("full", "all", users_only=False, ppo_steps=8, evaluate=(
        "--samples", "8", "--base-samples", "4", "--red-team-samples", "8", "--base-red-team-samples", "16",
        "--benign-samples", "2", "--kl", "batched", "--batch-size", "32")),
    # for the record, like full: never decide anything on it
    "novel": Protocol("novel", "novel", users_only=True, ppo_steps=8, evaluate=(
        "--samples", "4", "--base-samples", "4", "--red-team-samples", "4", "--base-red-team-samples", "16",
        "--benign-samples", "2", "--kl", "metadata", "--batch-size", "32")),
    "smoke": Protocol("smoke", "smoke", users_only=True, ppo_steps=1, evaluate=SMOKE_EVALUATE, env=TINY_BUDGETS,
                      served_evaluate=(*SMOKE_EVALUATE, "--no-retest", "--best-of-n", "2")),
}


class ProtocolError(RuntimeError):
    """A step failed; the message names it and its log."""


def _env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ASSISTANT_DEV_MODE": "1",
            "ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ASSISTANT_SCHEDULE_ENABLED": "0",
            # the fixture's replies must not depend on when a background compilation finishes: the compiled step
            # rounds differently from the eager one (docs/results/2026-12-06-compiled-decode)
            "ASSISTANT_COMPILE_DECODE": "0", **(extra or {})}


def _run(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``assistant <argv>`` to completion, output appended to ``log``; return its wall time."""
    started = time.monotonic()
    from service.local_process import run_step

    code = run_step([sys.executable, "-m", "service.cli", *argv], env, log, cwd=REPO)
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ProtocolError(f"`assistant {' '.join(argv[:2])}` exited with {code}; its log is {log}:\n{tail}")
    return time.monotonic() - started


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    from service.local_process import free_port, stop, wait_for_http

    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-worker", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        why = wait_for_http(proc, f"{url}/healthz", polls=600, interval_s=0.5)
    except BaseException:  # interrupted while it starts
        stop(proc)
        raise
    if why is None:
        return proc, url
    stop(proc, timeout_s=5)
    raise ProtocolError(f"the fixture's server did not start: {why}; its log is {log}")


def rate(env: dict[str, str], sets: tuple[ProfileSet, ...], out: Path, log: Path, *, serve_log: Path | None = None,
         seed_offset: int = 0, suffix: str = "") -> float:
    """One round of ratings by ``sets``' simulated users through a server of its own on ``env``'s data dir (no
    training, no evaluation): each set's seed plus ``seed_offset``, its record in
    ``out/simulation-<prefix><suffix>.json``. The seconds it took."""
    from service.local_process import stop

    started = time.monotonic()
    proc, url = _serve(env, serve_log or log)
    try:
        for s in sets:
            _run(["simulate", "--base-url", url, "--users", str(len(s.profiles)), "--profiles", ",".join(s.profiles),
                  "--rounds", "1", "--ratings-per-round", str(s.ratings), "--max-new-tokens", str(s.max_new_tokens),
                  "--no-train", "--no-evaluate", "--user-prefix", s.prefix, "--seed", str(s.seed + seed_offset),
                  "--admin-password", ADMIN_PASSWORD, "--out", str(out / f"simulation-{s.prefix}{suffix}.json")], env, log)
    finally:
        stop(proc)
    return time.monotonic() - started


def _simulate(data_dir: Path, sets: tuple[ProfileSet, ...]) -> float:
    """Round 1 of ``sets`` into ``data_dir`` (the fixture's ratings, by the base)."""
    return rate(_env(data_dir), sets, data_dir, data_dir / "fixture.log")


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.log", "serve-*"))


def fixture_sets(name: str, reply_tokens: int | None = None) -> tuple[ProfileSet, ...]:
    """The profile sets of fixture ``name``, their replies capped at ``reply_tokens`` when given (else 48 tokens)."""
    sets = FIXTURES[name]
    return sets if reply_tokens is None else tuple(replace(s, max_new_tokens=reply_tokens) for s in sets)


def fixture_folder(name: str, reply_tokens: int | None = None) -> str:
    """Where fixture ``name`` lives under ``--fixtures``: its name, with ``-<N>t`` for replies capped at N tokens."""
    return name if reply_tokens is None else f"{name}-{reply_tokens}t"


def ensure_fixture(fixtures: Path, name: str, models: Path, reply_tokens: int | None = None) -> tuple[Path, float]:
    """The fixture's data dir, made now if missing (``all`` from a copy of ``tuning``); its making time (0 if reused)."""
    path = fixtures / fixture_folder(name, reply_tokens)
    if (path / "fixture.json").is_file():
        return path, 0.0
    if path.exists():
        shutil.rmtree(path)  # an interrupted making: start over
    sets = fixture_sets(name, reply_tokens)
    made = 0.0
    if name == "all":
        tuning, made = ensure_fixture(fixtures, "tuning", models, reply_tokens)
        tmp = fixtures / f"{path.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _copy(tuning, tmp)
        (tmp / "fixture.json").unlink()
        sets = sets[1:]
    else:
        tmp = fixtures / f"{path.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if models.is_dir():  # the converted embedded model, shared (ASSISTANT_MODEL elsewhere needs none)
            (tmp / "models").symlink_to(models.resolve())
    made += _simulate(tmp, sets)
    every = fixture_sets(name, reply_tokens)
    users = [f"{s.prefix}{i}-{p}" for s in every for i, p in enumerate(s.profiles)]
    profiles = [p for s in every for p in s.profiles]
    (tmp / "fixture.json").write_text(json.dumps({
        "name": name, "users": [{"username": u, "profile": p} for u, p in zip(users, profiles)],
        "sets": [asdict(s) for s in every], "created_at": datetime.now(timezone.utc).isoformat(),
        "commit": _commit(), "making_s": round(made, 1)}, indent=2))
    tmp.rename(path)
    return path, made


def _commit() -> str:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=REPO, stderr=subprocess.DEVNULL) != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+uncommitted" if dirty else "")


def machine() -> dict[str, Any]:
    """What ran it: CPU model and the vector extensions that decide its speed, cores, memory, torch."""
    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["avx512"], info["amx"] = "avx512f" in flags, "amx_tile" in flags
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def evaluation_dtype(fixtures: Path, requested: str | None) -> tuple[str | None, str]:
    """The dtype the evaluation's generator serves in (None: the dtype probe of that hour decides), and why.

    Cached base replies are keyed by the generator's dtype, and two runs' replies pair only when they
    were drawn in the same one; the probe's choice moves with the machine's load (under load it has
    picked float32 where a quiet hour picked bfloat16). So the first evaluation on a fixtures folder
    records its dtype there and every later one is pinned to it, unless told otherwise: ``--eval-dtype``
    (``auto``: the probe, nothing pinned), or ``ASSISTANT_DTYPE`` set to a dtype in the environment."""
    if requested == "auto":
        return None, "--eval-dtype auto (the dtype probe)"
    if requested:
        return requested, "--eval-dtype"
    env = os.environ.get("ASSISTANT_DTYPE", "auto")
    if env in DTYPES:
        return env, "ASSISTANT_DTYPE"
    path = fixtures / EVALUATION_DTYPE_FILE
    if path.is_file():
        recorded = json.loads(path.read_text()).get("dtype")
        if recorded in DTYPES:
            return recorded, f"recorded in {path} by the first evaluation on these fixtures"
    return None, "the dtype probe (its choice is recorded for later runs)"


def _record_evaluation_dtype(fixtures: Path, report: dict[str, Any]) -> None:
    """After the first evaluation on ``fixtures``: write the dtype its generator used (``evaluation_dtype``)."""
    path = fixtures / EVALUATION_DTYPE_FILE
    dtype = str(report.get("generator", "")).rpartition("-")[2]
    if path.is_file() or dtype not in DTYPES:
        return
    path.write_text(json.dumps({"dtype": dtype, "generator": report.get("generator"), "recorded_at":
                                datetime.now(timezone.utc).isoformat(), "machine": machine().get("cpu")}, indent=1))


def evaluate_arguments(protocol: Protocol, seed: int, reply_tokens: int | None = None) -> list[str]:
    """``assistant evaluate``'s arguments besides the users and the base cache."""
    return [*protocol.evaluate, *(["--max-new-tokens", str(reply_tokens)] if reply_tokens else []), "--seed", str(seed)]


def run_protocol(protocol: Protocol, *, fixtures: Path, out: Path, models: Path, ppo_steps: int | None = None,
                 settings: dict[str, str] | None = None, seed: int = 0, argv: list[str] | None = None,
                 keep_adapters: bool = False, eval_dtype: str | None = None,
                 reply_tokens: int | None = None) -> dict[str, Any]:
    """Run ``protocol`` end to end; return the record also written to ``out/protocol.json``.
    ``keep_adapters``: leave the trained weights in ``out/work`` (ignored by git), so more evaluations
    (``assistant evaluate --best-of-n``, say) can run on them without training again. ``eval_dtype``:
    as ``evaluation_dtype`` reads it. ``reply_tokens``: the fixture's and the evaluation's reply cap (default 48 and
    64 tokens), in a fixture of its own (``fixture_folder``)."""
    out.mkdir(parents=True, exist_ok=True)
    steps = protocol.ppo_steps if ppo_steps is None else ppo_steps
    fixture, made_s = ensure_fixture(fixtures, protocol.fixture, models, reply_tokens)
    users = json.loads((fixture / "fixture.json").read_text())["users"]
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    _copy(fixture, work)
    train_env = {**protocol.env, **(settings or {}), "ASSISTANT_JOB_TIME_BUDGET_S": "0", "ASSISTANT_PPO_STEPS": str(steps)}
    record: dict[str, Any] = {
        "protocol": protocol.name, "command": "assistant protocol " + " ".join(argv or []), "commit": _commit(),
        "machine": machine(), "started_at": datetime.now(timezone.utc).isoformat(), "fixture": str(fixture),
        "training_settings": train_env, "evaluate": evaluate_arguments(protocol, seed, reply_tokens),
        "reply_tokens": reply_tokens,
        "wall_s": {"fixture": round(made_s, 1)}, "out": str(out),
    }
    logger.info("protocol %s: training on a copy of %s (%d PPO steps)", protocol.name, fixture, steps)
    train = ["train", "--now"] + (["--users", ",".join(u["username"] for u in users)] if protocol.users_only else [])
    record["wall_s"]["training"] = round(_run(train, _env(work, train_env), out / "training.log"), 1)
    (out / "training-results.json").write_text(json.dumps(training_results(work), indent=1))
    logger.info("protocol %s: evaluating", protocol.name)
    assign = [a for u in users for a in ("--assign", f"{u['username']}={u['profile']}")]
    evaluate = ["evaluate", *evaluate_arguments(protocol, seed, reply_tokens), "--base-cache", str(fixtures / "base-cache"),
                *assign]
    dtype, why = evaluation_dtype(fixtures, eval_dtype)
    eval_env = {"ASSISTANT_DTYPE": dtype} if dtype else {"ASSISTANT_DTYPE": "auto"}
    record["wall_s"]["evaluation"] = round(_run(evaluate, _env(work, eval_env), out / "evaluation.log"), 1)
    report_dir = _latest_report_dir(work)
    for name in ("report.json", "report.md"):
        shutil.copy(report_dir / name, out / name)
    report = json.loads((out / "report.json").read_text())
    record["evaluation_dtype"] = {"pinned": dtype, "why": why, "generator": report.get("generator")}
    _record_evaluation_dtype(fixtures, report)
    record["wall_s"]["total"] = round(sum(v for v in record["wall_s"].values()), 1)
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    (out / "protocol.json").write_text(json.dumps(record, indent=2))
    (out / "summary.md").write_text(render_summary(record, report, GROUPS))
    if not keep_adapters:
        shutil.rmtree(work / "adapters", ignore_errors=True)  # the weights stay out of the record (the report names them)
    return record


def training_results(data_dir: Path) -> list[dict[str, Any]]:
    """Each training job's verdict and the metrics the gate decided on (what a replay of the gate needs)."""
    import sqlite3

    with sqlite3.connect(f"file:{data_dir / 'assistant.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT user_id, promoted, reason, metrics FROM trainingresult ORDER BY id").fetchall()
    keep = ("gate/", "ppo/steps", "time/", "warm_start/", "reward/heldout")
    return [{"user_id": uid, "promoted": bool(promoted), "reason": reason,
             "metrics": {k: v for k, v in json.loads(metrics or "{}").items() if k.startswith(keep)}}
            for uid, promoted, reason, metrics in rows]


def _latest_report_dir(data_dir: Path) -> Path:
    reports = sorted(p for p in (data_dir / "reports").iterdir() if p.is_dir() and (p / "report.json").is_file())
    if not reports:
        raise ProtocolError(f"the evaluation wrote no report under {data_dir / 'reports'}")
    return reports[-1]


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``assistant protocol`` (service/cli.py adds them to its sub-parser)."""
    p.add_argument("protocol", choices=[*PROTOCOLS, "compare", "summary", "rounds"],
                   help="quick (tuning profiles, ~30 min), full (every profile, ~75 min), novel (the profiles no "
                        "trait measures, ~30 min, for the record), smoke (toy size), "
                        "compare A B (two results folders, paired), summary DIR... (re-render summary.md), or "
                        "rounds --from DIR (more rounds of ratings and training on a run kept with --keep-adapters)")
    p.add_argument("results", nargs="*", type=Path, help="compare: the two results folders (A B); summary: folders")
    p.add_argument("--out", type=Path, default=None, help="results folder (default docs/results/<date>-<protocol>[-<name>])")
    p.add_argument("--name", default="", help="the variant's name, in the default results folder")
    p.add_argument("--fixtures", type=Path, default=None,
                   help="where the frozen round-1 fixtures and the base-reply cache live (default <data_dir>/fixtures)")
    p.add_argument("--ppo-steps", type=int, default=None, help="PPO steps per adapter (default: the protocol's, 8)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a training setting of the variant under test, e.g. ASSISTANT_GATE_PREFERENCE=either (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="the evaluation's seed set (the same in runs compared)")
    p.add_argument("--eval-dtype", choices=["auto", *DTYPES], default=None,
                   help="the evaluation's serving dtype (default: the one recorded by the first evaluation on --fixtures, "
                        "so cached base replies pair; auto: the dtype probe of the hour)")
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="rounds: the results folder of a run kept with --keep-adapters (its round 1), or of an earlier "
                        "rounds run (to go on from its last round)")
    p.add_argument("--rounds", type=int, default=2, help="rounds: rounds of ratings and training after round 1")
    p.add_argument("--sets", default="sim",
                   help="rounds: the kept run's profile sets to continue, by prefix (sim: tuning, held, novel), comma-separated")
    p.add_argument("--reply-tokens", type=int, default=None,
                   help="cap of the fixture's replies (rated by the simulated users) and of the evaluation's, in a fixture "
                        "of its own (<fixtures>/<name>-<N>t; default: 48 and 64 tokens)")
    p.add_argument("--keep-adapters", action="store_true",
                   help="keep the trained adapters in <out>/work (to evaluate them again, e.g. with --best-of-n)")


def setting_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--set NAME=VALUE`` as a dict; exits on a malformed one."""
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("ASSISTANT_"):
            sys.exit(f"assistant protocol: --set {item!r} must look like ASSISTANT_NAME=VALUE")
        overrides[name] = value
    return overrides


def main_protocol(args: argparse.Namespace, settings=None, argv: list[str] | None = None) -> Path:
    if args.protocol == "summary":  # re-render a results folder's summary.md (after a change to this page)
        spreads: list[float] = []
        for d in args.results:
            record, report = (json.loads((d / n).read_text()) for n in ("protocol.json", "report.json"))
            record["out"] = str(d)
            (d / "summary.md").write_text(render_summary(record, report, GROUPS))
            print(f"{d / 'summary.md'}")
            spreads += retest_spreads(report)
        if len(args.results) > 1 and spreads:
            print(f"test-retest spread over these {len(args.results)} runs: {pooled_spread(spreads)}")
        return args.results[0] if args.results else Path(".")
    if args.protocol == "compare":
        if len(args.results) != 2:
            sys.exit("assistant protocol compare: name two results folders, A and B")
        a, b = (json.loads((d / "report.json").read_text()) for d in args.results)
        table = render_comparison(compare_reports(a, b), args.results[0].name, args.results[1].name)
        print(table)
        return args.results[0]
    if settings is None:
        from service.settings import get_settings

        settings = get_settings()
    overrides = setting_overrides(args)
    if args.ppo_steps is not None and args.ppo_steps < 0:
        sys.exit("assistant protocol: --ppo-steps must be >= 0")
    if args.reply_tokens is not None and not 8 <= args.reply_tokens <= 1024:
        sys.exit("assistant protocol: --reply-tokens must be between 8 and 1024")
    from service.model_loading import ModelNotFound, resolve_model_path

    try:
        resolve_model_path(settings)  # provisions the embedded model on first use
    except ModelNotFound as exc:
        sys.exit(f"assistant protocol: {exc}")
    if args.protocol not in PROTOCOLS:  # rounds: learning.sim.rounds.main_rounds (service/cli.py sends it there)
        sys.exit(f"assistant protocol: {args.protocol} is not run here")
    protocol = PROTOCOLS[args.protocol]
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    fixtures = args.fixtures or settings.data_dir / "fixtures"
    out = args.out or REPO / "docs" / "results" / "-".join(x for x in (day, args.protocol, args.name) if x)
    try:
        run_protocol(protocol, fixtures=fixtures, out=out, models=settings.data_dir / "models", ppo_steps=args.ppo_steps,
                     settings=overrides, seed=args.seed, argv=argv, keep_adapters=args.keep_adapters,
                     eval_dtype=args.eval_dtype, reply_tokens=args.reply_tokens)
    except ProtocolError as exc:
        sys.exit(f"assistant protocol: {exc}")
    print(f"protocol {protocol.name}: {out / 'summary.md'}")
    return out

