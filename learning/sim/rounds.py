"""``assistant protocol rounds``: more rounds of ratings and training on a kept run (issue 26: "≥ 80% after three rounds").

Round 1 is a protocol run kept with ``--keep-adapters``: its ``work`` data dir holds the frozen round-1
fixture and the adapters trained on it. ``run_rounds`` copies it (or an earlier rounds run's, to go on from
its last round) and, for each further round:

1. **Ratings of what is served**: ``assistant serve --no-worker`` on the copy serves every user what the
   gate chose (their adapter, with personal best-of-n as in production), and ``assistant simulate``
   has the same simulated users rate as many replies as in round 1, on fresh prompts (the round's seed
   offset), so each round's labels are about the policy they were served.
2. **Training** of those users on everything they rated so far: ``assistant train --now --users ...``
   with the protocol's fixed PPO step count (``ASSISTANT_JOB_TIME_BUDGET_S=0``).
3. **The served evaluation** of those users, as the ``-served`` results of a kept run measure it
   (``SERVED_EVALUATE``: best-of-n as served, one reply per held-out prompt against the base's four
   cached ones, seed 0), so round r pairs with round 1 by prompt (``assistant protocol compare``). The
   last round adds the red-team and benign prompts.

Nothing here is tuned on: it is a record of what the shipped product does over rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from learning.sim.protocol import (PROTOCOLS, REPO, ProfileSet, ProtocolError, _commit, _copy, _env,
                                   _latest_report_dir, _run, machine, rate, setting_overrides, training_results)

logger = logging.getLogger(__name__)

ROUND_SEED_STEP = 1000
"""Round r's simulation seed is the profile set's plus ``r * ROUND_SEED_STEP``: other prompts and vote noise."""
SERVED_EVALUATE = ("--samples", "1", "--base-samples", "4", "--no-retest", "--kl", "metadata", "--batch-size", "32",
                   "--best-of-n", "4", "--best-of-block", "16", "--best-of-first-block", "1")
PERSONAL_ONLY = ("--red-team", "1", "--red-team-samples", "1", "--benign", "1", "--benign-samples", "1")
WITH_HARM = ("--red-team", "30", "--red-team-samples", "2", "--base-red-team-samples", "16", "--benign", "10",
             "--benign-samples", "2", "--best-of-base")


def continued_sets(source_work: Path, names: tuple[str, ...]) -> tuple[ProfileSet, ...]:
    """The profile sets of the kept run's fixture named ``names`` ("sim", "held", "novel": their prefixes)."""
    sets = {s["prefix"]: s for s in json.loads((source_work / "fixture.json").read_text())["sets"]}
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise ProtocolError(f"the kept run has no profile set {', '.join(unknown)} (it has {', '.join(sets)})")
    return tuple(ProfileSet(**{**sets[n], "profiles": tuple(sets[n]["profiles"])}) for n in names)


def evaluate_arguments(source_record: dict[str, Any], last: bool) -> list[str]:
    """The served evaluation of a round: the source protocol's own (``Protocol.served_evaluate``), else
    ``SERVED_EVALUATE`` at the source's reply cap, the last round with the harm sets."""
    protocol = PROTOCOLS.get(source_record.get("protocol", ""))
    if protocol is not None and protocol.served_evaluate:
        return list(protocol.served_evaluate)
    tokens = source_record.get("reply_tokens")
    return [*SERVED_EVALUATE, *(WITH_HARM if last else PERSONAL_ONLY), *(["--max-new-tokens", str(tokens)] if tokens else [])]


def kept_run(source: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """What ``source`` continues: round 1's protocol record, the training settings of its last round and that round's
    number. ``source`` is a protocol run kept with ``--keep-adapters`` (round 1) or a rounds run (its last round)."""
    if (source / "rounds.json").is_file():
        record = json.loads((source / "rounds.json").read_text())
        if not record["rounds"]:
            raise ProtocolError(f"{source} finished no round")
        origin = Path(record["source"])
        first, _, _ = kept_run(origin if origin.is_absolute() or origin.exists() else REPO / origin)
        return first, record["training_settings"], record["rounds"][-1]["round"]
    if not (source / "protocol.json").is_file():
        raise ProtocolError(f"{source} is neither a protocol's results folder nor a rounds run")
    first = json.loads((source / "protocol.json").read_text())
    return first, first["training_settings"], 1


def run_rounds(source: Path, out: Path, *, rounds: int, set_names: tuple[str, ...], settings: dict[str, str],
               fixtures: Path, seed: int = 0, argv: list[str] | None = None) -> dict[str, Any]:
    """``rounds`` more rounds on a copy of ``source/work`` with the training settings of ``source``'s last round
    (round 1's protocol's, its ``--set`` ones, its PPO step count) under ``settings``; the record is
    ``out/rounds.json``. ``source`` is a protocol run kept with ``--keep-adapters`` or an earlier rounds run."""
    src = source / "work"
    if not (src / "adapters").is_dir():
        raise ProtocolError(f"{src} holds no adapters: run the protocol with --keep-adapters first")
    source_record, source_settings, done = kept_run(source)
    sets = continued_sets(src, set_names)
    users = [f"{s.prefix}{i}-{p}" for s in sets for i, p in enumerate(s.profiles)]
    profiles = [p for s in sets for p in s.profiles]
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    _copy(src, work)
    train_env = {**source_settings, **settings}
    pinned = (source_record.get("evaluation_dtype") or {}).get("pinned")
    env = {"ASSISTANT_DTYPE": pinned, **train_env} if pinned else train_env  # serve and evaluate as round 1 did
    record: dict[str, Any] = {
        "command": "assistant protocol rounds " + " ".join(argv or []), "commit": _commit(), "machine": machine(),
        "source": str(source.resolve()), "users": dict(zip(users, profiles)), "training_settings": train_env,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": []}
    assign = [a for u, p in zip(users, profiles) for a in ("--assign", f"{u}={p}")]
    for r in range(done + 1, done + rounds + 1):
        row: dict[str, Any] = {"round": r}
        row["simulate_s"] = round(rate(_env(work, env), sets, work, out / f"simulate-round{r}.log",
                                       serve_log=out / f"serve-round{r}.log", seed_offset=r * ROUND_SEED_STEP,
                                       suffix=f"-round{r}"), 1)
        logger.info("rounds: round %d rated in %.0f s; training %s", r, row["simulate_s"], ", ".join(users))
        row["training_s"] = round(_run(["train", "--now", "--users", ",".join(users)], _env(work, train_env),
                                       out / f"training-round{r}.log"), 1)
        last = r == done + rounds
        evaluate = ["evaluate", *evaluate_arguments(source_record, last), "--seed", str(seed),
                    "--base-cache", str(fixtures / "base-cache"), *assign]
        row["evaluation_s"] = round(_run(evaluate, _env(work, env), out / f"evaluation-round{r}.log"), 1)
        folder = out / f"round{r}"
        folder.mkdir(exist_ok=True)
        for name in ("report.json", "report.md"):
            shutil.copy(_latest_report_dir(work) / name, folder / name)
        record["rounds"].append(row)
        (out / "rounds.json").write_text(json.dumps(record, indent=2))
    (out / "training-results.json").write_text(json.dumps(training_results(work), indent=1))
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "rounds.json").write_text(json.dumps(record, indent=2))
    return record


def main_rounds(args: argparse.Namespace, settings, argv: list[str] | None = None) -> Path:
    """``assistant protocol rounds --from DIR``: the options are ``assistant protocol``'s."""
    if args.source is None:
        sys.exit("assistant protocol rounds: --from must name a protocol's results folder (kept with --keep-adapters) "
                 "or an earlier rounds run's")
    if args.rounds < 1 or (args.ppo_steps is not None and args.ppo_steps < 0):
        sys.exit("assistant protocol rounds: --rounds must be 1 or more and --ppo-steps 0 or more")
    overrides = setting_overrides(args)
    if args.ppo_steps is not None:
        overrides["ASSISTANT_PPO_STEPS"] = str(args.ppo_steps)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or REPO / "docs" / "results" / "-".join(x for x in (day, "rounds", args.name) if x)
    try:
        run_rounds(args.source, out, rounds=args.rounds, set_names=tuple(n for n in args.sets.split(",") if n),
                   settings=overrides, fixtures=args.fixtures or settings.data_dir / "fixtures", seed=args.seed, argv=argv)
    except ProtocolError as exc:
        sys.exit(f"assistant protocol rounds: {exc}")
    print(f"protocol rounds: {out / 'rounds.json'}")
    return out
