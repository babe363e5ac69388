"""The ``assistant`` command line.

    assistant serve [--host H] [--port P] [--no-worker]   the whole product
    assistant worker                                      the learning worker (scheduler + queue)
    assistant train [--user NAME] [--now]                 one training run in the foreground
    assistant provision                                   convert the embedded model once
    assistant simulate [...]                              simulated users over the public API, then evaluate
    assistant evaluate [...]                              win rates, harm, reward accuracy, KL -> reports
    assistant reward-curve [...]                          reward-model accuracy vs labels per user -> reports
    assistant export-feedback --out DIR [--format F] [--every-label]  the shared pool's labels as TRL JSONL (preference, kto)
    assistant import-openwebui-feedback FILE [--dry-run]  Open WebUI's thumbs (its feedback export) as ratings here
    assistant sync-openwebui-feedback     the same, read from ASSISTANT_OPENWEBUI_URL now (the worker does it every minute)
    assistant pool-audit                                  who would feed the shared models now, and who is kept out
    assistant bench serve [...]                           engine benchmark vs the naive baseline
    assistant bench rollouts [...]                        training rollouts: HF generate vs the batched engine

``serve`` starts the learning worker as a separate process (never inside the
web server's lifespan) unless ``--no-worker``. This module is the only place in
``service`` that reaches into ``learning``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.settings import Settings, SettingsError

logger = logging.getLogger("assistant")


def _settings(**overrides) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        sys.exit(f"assistant: {exc}")


def cmd_provision(args: argparse.Namespace) -> None:
    from service.model_loading import ModelNotFound, resolve_model_path

    settings = _settings(dev_mode=True)  # provisioning signs nothing, so it needs no secret key
    try:
        path = resolve_model_path(settings)
    except ModelNotFound as exc:
        sys.exit(f"assistant: {exc}")
    print(f"model ready at {path}")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app

    from service.threads import single_threaded_control

    settings = _settings(host=args.host, port=args.port)
    single_threaded_control()  # torch's work here runs in the engine thread (see service.threads)
    worker = None
    if not args.no_worker:
        env = dict(os.environ, ASSISTANT_HOST=settings.host, ASSISTANT_PORT=str(settings.port))
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--parent-pid", str(os.getpid())], env=env)
        logger.info("started the learning worker (pid %s)", worker.pid)
    try:
        # proxy_headers off: the app reads X-Forwarded-For itself, from ASSISTANT_TRUSTED_PROXIES only
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", ws_max_size=1 << 20,
                    proxy_headers=False)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def cmd_worker(args: argparse.Namespace) -> None:
    from learning.worker import run_worker
    from service.threads import apply_thread_budget

    settings = _settings()
    apply_thread_budget("worker", settings.worker_threads, nice=settings.worker_nice)
    run_worker(settings, parent_pid=args.parent_pid)


def cmd_train(args: argparse.Namespace) -> None:
    from learning.worker import RunBusy, RunConflict, train_foreground
    from service.threads import apply_thread_budget

    settings = _settings()
    if args.now:  # the training runs in this process: give it the worker's budget
        apply_thread_budget("worker", settings.worker_threads, nice=settings.worker_nice)
    try:
        run_id = train_foreground(settings, user=args.user, now=args.now,
                                  users=[u for u in args.users.split(",") if u.strip()])
    except (RunConflict, RunBusy, LookupError) as exc:
        sys.exit(f"assistant train: {exc}")
    print(f"training run {run_id} {'finished' if args.now else 'queued (a worker will run it)'}")


def cmd_safety(args: argparse.Namespace) -> None:
    """Train the shared safety stage for this base model (once; the worker does it at its first start)."""
    import json

    from learning.config import Budgets
    from learning.safety import train_safety_stage
    from service.model_loading import safety_manifest
    from service.threads import apply_thread_budget

    settings = _settings()
    if args.action == "status":
        print(json.dumps(safety_manifest(settings) or {"served": "the plain base (no safety stage trained, or "
                                                                    "ASSISTANT_SAFETY_STAGE=0)"}, indent=2))
        return
    apply_thread_budget("worker", settings.worker_threads, nice=settings.worker_nice)
    result = train_safety_stage(settings, Budgets.from_env())
    print(json.dumps(result.as_dict(), indent=2))
    if not result.accepted:
        sys.exit(f"assistant safety train: not accepted ({result.reason}); the plain base stays served")


def cmd_evaluate_safety(args: argparse.Namespace) -> None:
    from learning.sim.safety_eval import main_evaluate_safety

    main_evaluate_safety(args, _settings())


def cmd_simulate(args: argparse.Namespace) -> None:
    from learning.sim.simulate import main_simulate

    settings = _settings()
    record = main_simulate(args, settings)
    if not args.no_evaluate:  # the evaluation of what the simulation left (learning.sim.evaluate)
        from learning.sim.config import EvalConfig
        from learning.sim.evaluate import run_and_write

        paths = run_and_write(settings, record, EvalConfig(judge=args.judge, harm_threshold=args.harm_threshold))
        print(f"evaluation report: {paths['markdown']}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from learning.sim.evaluate import main_evaluate

    main_evaluate(args, _settings())


def cmd_protocol(args: argparse.Namespace) -> None:
    from learning.sim.protocol import main_protocol
    from service.local_process import exit_on_sigterm

    reading_only = args.protocol in ("compare", "summary")  # results folders: no settings, no model
    exit_on_sigterm()  # `kill` of a protocol stops its training or evaluation step too
    if args.protocol == "rounds":
        from learning.sim.rounds import main_rounds

        main_rounds(args, _settings(), argv=sys.argv[2:])
        return
    main_protocol(args, None if reading_only else _settings(), argv=sys.argv[2:])


def cmd_reward_curve(args: argparse.Namespace) -> None:
    from learning.sim.reward_curve import main_reward_curve

    main_reward_curve(args, _settings())


def cmd_export_feedback(args: argparse.Namespace) -> None:
    """Labels as TRL JSONL, <out>/<format>.jsonl: by default what the shared models learn from (approved
    accounts, less those the pool audit or an operator keeps out, under the per-user caps); with
    ``--every-label`` every approved account's labels."""
    from service import exports
    from service.db import init_db, make_engine

    settings = _settings()
    engine = make_engine(settings)
    init_db(engine)
    only = None
    if not args.every_label:
        from learning.audit import shared_pool_keys, view_now

        view, _, _ = view_now(settings, engine)
        if view.excluded:
            print(f"kept out of the shared pool, so out of this export: users {view.excluded} (assistant pool-audit says why)")
        only = shared_pool_keys(view)
    for path, n in exports.write_files(engine, Path(args.out), args.format, only=only):
        print(f"{path}: {n} rows")
    engine.dispose()


def cmd_bench(args: argparse.Namespace) -> None:
    from service.bench import main_bench

    main_bench(args, _settings())


def cmd_sync_openwebui_feedback(args: argparse.Namespace) -> None:
    """One read of Open WebUI's feedback export from ASSISTANT_OPENWEBUI_URL (what the worker does every minute)."""
    from service.db import init_db, make_engine
    from service.openwebui_sync import SyncError, sync_feedback

    settings = _settings()
    db = make_engine(settings)
    init_db(db)
    try:
        report = sync_feedback(settings, db)
    except SyncError as exc:
        raise SystemExit(str(exc))
    finally:
        db.dispose()
    print(report.summary())


def cmd_import_openwebui_feedback(args: argparse.Namespace) -> None:
    """Open WebUI's feedback export (a JSON array) -> thumbs ratings of the replies generated here."""
    import json

    from sqlmodel import Session

    from service.db import init_db, make_engine
    from service.openwebui_import import import_feedback

    try:
        records = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {args.file}: {exc}")
    if not isinstance(records, list):
        raise SystemExit(f"{args.file} is not Open WebUI's feedback export (a JSON array of feedback records)")
    settings = _settings()
    engine = make_engine(settings)
    init_db(engine)
    with Session(engine) as session:
        report = import_feedback(session, records, dry_run=args.dry_run)
    engine.dispose()
    for line in report.skipped:
        print(f"skipped {line}")
    print(("dry run: would import " if args.dry_run else "") + report.summary())


def cmd_bench_rollouts(args: argparse.Namespace) -> None:
    from learning.rollouts_bench import main as bench_rollouts

    bench_rollouts(args, _settings())


def cmd_vllm_command(args: argparse.Namespace) -> None:
    import shlex

    from service.engine.vllm import vllm_command

    argv, env = vllm_command(_settings(dev_mode=True), port=args.port, max_loras=args.max_loras, dtype=args.dtype)
    if args.args_only:  # for a vLLM container's entrypoint (deploy/docker-compose.fleet.yml)
        print(shlex.join(argv[argv.index("--model"):]))
    else:
        print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(argv))


def cmd_pool_audit(args: argparse.Namespace) -> None:
    """Before a run: per user, the labels they would feed the shared models, their thumbs-up on
    replies the harm judge flags, and whether the next run keeps them out (``learning.audit``)."""
    from learning.audit import audit_table, view_now
    from service.db import init_db, make_engine

    settings = _settings()
    engine = make_engine(settings)
    init_db(engine)
    view, names, judged = view_now(settings, engine)
    engine.dispose()
    print(audit_table(view, names, judged))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant", description="A chat assistant that learns from its users.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the web service (and the learning worker)")
    s.add_argument("--host", default=None, help="bind address (ASSISTANT_HOST)")
    s.add_argument("--port", type=int, default=None, help="port (ASSISTANT_PORT)")
    s.add_argument("--no-worker", action="store_true", help="do not start the learning worker process")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="run the learning worker: nightly schedule + queued runs")
    w.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process ends (assistant serve passes its own pid)")
    w.set_defaults(func=cmd_worker)

    t = sub.add_parser("train", help="run one training run in the foreground")
    t.add_argument("--user", default=None, help="train only this username (default: everyone with feedback)")
    t.add_argument("--users", default="", help="train only these usernames, comma-separated (no global adapter)")
    t.add_argument("--now", action="store_true", help="run immediately instead of waiting for a worker")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("provision", help="convert the embedded model to safetensors under the data dir")
    pr.set_defaults(func=cmd_provision)

    from learning.sim.evaluate import add_evaluate_arguments  # light: no torch at import
    from learning.sim.simulate import add_simulate_arguments

    sf = sub.add_parser("safety", help="the shared safety stage merged into the served base: train it, or show what is served")
    sf.add_argument("action", choices=["train", "status"])
    sf.set_defaults(func=cmd_safety)

    es = sub.add_parser("evaluate-safety", help="the plain base against the safe base: harm on two red-team sets, "
                                                "refusals on benign and edgy prompts, neutral helpfulness (for the record)")
    es.add_argument("--out", type=Path, required=True, help="results folder (report.json, summary.md)")
    es.add_argument("--red-team-samples", type=int, default=8, help="samples per red-team prompt (60 x 8 = 480 per set)")
    es.add_argument("--samples", type=int, default=4, help="samples per benign, edgy and held-out prompt")
    es.add_argument("--seed", type=int, default=0)
    es.set_defaults(func=cmd_evaluate_safety)

    sm = sub.add_parser("simulate", help="simulated users rate replies over the public API, train between rounds, then evaluate")
    add_simulate_arguments(sm)
    sm.set_defaults(func=cmd_simulate)
    ev = sub.add_parser("evaluate", help="win rate per user, harm before/after, reward accuracy, KL (in-process, next to the data dir)")
    add_evaluate_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)

    po = sub.add_parser("protocol", help="a learning experiment in one command: frozen round-1 data, fixed PPO steps, "
                                         "powered evaluation (quick ~30 min, full ~75 min, smoke)")
    from learning.sim.protocol import add_protocol_arguments  # light: no torch at import

    add_protocol_arguments(po)
    po.set_defaults(func=cmd_protocol)
    from learning.sim.reward_curve import add_reward_curve_arguments  # light: no torch at import

    rc = sub.add_parser("reward-curve", help="reward-model held-out accuracy vs labels per user, on stored replies")
    add_reward_curve_arguments(rc)
    rc.set_defaults(func=cmd_reward_curve)

    ex = sub.add_parser("export-feedback", help="everyone's labels as JSONL in TRL's formats (preference, kto), for training elsewhere")
    ex.add_argument("--format", choices=["preference", "kto", "all"], default="all")
    ex.add_argument("--out", required=True, help="directory to write <format>.jsonl into")
    ex.add_argument("--every-label", action="store_true",
                    help="every approved account's labels, also those the shared models leave out (the pool audit, "
                         "an operator's exclusion, the per-user caps)")
    ex.set_defaults(func=cmd_export_feedback)

    ow = sub.add_parser("import-openwebui-feedback",
                        help="Open WebUI's thumbs (Admin Panel > Evaluations > Feedbacks > Export) as ratings of the replies generated here")
    ow.add_argument("file", help="the exported JSON file")
    ow.add_argument("--dry-run", action="store_true", help="match and report, write nothing")
    ow.set_defaults(func=cmd_import_openwebui_feedback)
    so = sub.add_parser("sync-openwebui-feedback",
                        help="read Open WebUI's ratings from ASSISTANT_OPENWEBUI_URL now (deleting those deleted there)")
    so.set_defaults(func=cmd_sync_openwebui_feedback)

    vc = sub.add_parser("vllm-command", help="print the command that starts a vLLM server for ASSISTANT_ENGINE=vllm on this install")
    vc.add_argument("--port", type=int, default=8001)
    vc.add_argument("--max-loras", type=int, default=16, help="adapters in one running batch")
    vc.add_argument("--dtype", default="bfloat16", help="vLLM's --dtype (float32 for exact equivalence tests)")
    vc.add_argument("--args-only", action="store_true", help="only the server's arguments (--model ... --dtype ...)")
    vc.set_defaults(func=cmd_vllm_command)
    pa = sub.add_parser("pool-audit", help="before a run: who would feed the shared models, and who is kept out "
                                           "(thumbs-up on replies the harm judge flags)")
    pa.set_defaults(func=cmd_pool_audit)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("serve", help="batched multi-adapter engine vs sequential generate with adapter swaps")
    from service.bench import add_bench_args  # light: torch is imported inside the functions

    add_bench_args(bs)
    bs.set_defaults(func=cmd_bench)
    br = bsub.add_parser("rollouts", help="the training loop's sampling: HF generate vs the batched engine (tok/s, ratio)")
    br.add_argument("--prompts", type=int, default=16, help="prompts per batch (default 16)")
    br.add_argument("--per-prompt", type=int, default=1, help="replies per prompt (default 1)")
    br.add_argument("--max-new-tokens", type=int, default=48, help="tokens per reply at most (default 48)")
    br.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16, as ASSISTANT_LORA_R)")
    br.add_argument("--repeats", type=int, default=2, help="alternate the samplers this many times, keep each one's best")
    br.add_argument("--out", default=None, help="also write the results as JSON here")
    br.set_defaults(func=cmd_bench_rollouts)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # APScheduler logs two INFO lines per job execution: every poll of the worker (5 s) would
        # bury the lines about runs. Its warnings (missed runs, job errors) still show.
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
