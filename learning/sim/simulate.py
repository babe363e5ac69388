"""``assistant simulate``: simulated users chat, rate and rank through the public contract.

Contract-only: everything goes through ``learning.sim.client.AssistantClient`` (HTTP + the chat
WebSocket), never the database or the engine, so the same command exercises a deployed instance.
``evaluate`` (which ``assistant simulate`` runs at the end unless ``--no-evaluate``) is the in-process part.

One simulation:
    1. register (or sign in) ``users`` accounts ``<prefix><i>-<profile>``, profiles cycled
    2. for each round, all users concurrently, until each has cast ``ratings_per_round`` votes:
       a. pick a training prompt (``red_team_share`` of them provocative)
       b. chat over the WebSocket: ``alternatives`` replies on a ranking turn, else one
       c. a reply the harm judge flags (if the profile ``flags_harm``): thumbs down, "harmful"
       d. ranking turn: POST /api/rankings best-first under the hidden preference (noisy)
          thumbs turn: with probability ``rate_prob``, thumbs up/down by the preference (noisy)
       e. record the served reply's own-preference score, harm flag and adapter label
    3. after each round (unless ``--no-train``): the operator starts a training run
       (POST /api/admin/training-runs) and polls it until it succeeded or failed
    4. write the simulation record (JSON); ``evaluate`` reads it to know who has which profile

Full size (about an hour per round on 2 CPU cores; see README)::

    assistant simulate --users 5 --profiles concise,detailed,bulleted,formal,enthusiastic \\
        --rounds 3 --ratings-per-round 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from learning.sim import prompts as P
from learning.sim.client import AssistantClient, ContractError, Turn
from learning.sim.config import simulations_dir
from learning.sim.judge import Judge, make_judge
from learning.sim.profiles import Profile, ProfileError, Rater, load_profiles, resolve_profiles

logger = logging.getLogger(__name__)

RETRY_CODES = ("busy", "too_many")


@dataclass(frozen=True)
class SimConfig:
    base_url: str = "http://127.0.0.1:8000"
    """The service to exercise (any deployment: only the public API is used)."""

    profiles: tuple[str, ...] = ("concise", "detailed")
    """Profile names, assigned to users in turn (user i gets profiles[i % len])."""

    users: int = 2
    """Number of simulated users."""

    rounds: int = 1
    """Rounds of rating; a training run follows each round unless ``train`` is off."""

    ratings_per_round: int = 8
    """Votes (a ranking or a thumb) each user casts per round; harm flags count too."""

    max_new_tokens: int = 48
    """Reply length each chat turn asks for."""

    temperature: float | None = None
    """Sampling temperature each turn asks for; None = the server's default."""

    train: bool = True
    """Start a training run through the admin API after each round and wait for it."""

    train_only_sim_users: bool = False
    """Ask the run to train only the simulated users' adapters (``{"user_ids": [...]}``). The learning
    job trains the global adapter only on full runs, so leave this off to measure the global adapter."""

    admin_username: str = "admin"
    """Operator account used for training runs."""

    admin_password: str | None = None
    """Its password (default: ASSISTANT_ADMIN_PASSWORD)."""

    run_timeout_s: float = 3600.0
    """Give up waiting for one training run after this long."""

    user_prefix: str = "sim"
    """Usernames are ``<prefix><i>-<profile>``; change it to start fresh accounts on the same service."""

    password: str = "sim-user-password"
    """Password of every simulated account."""

    judge: str = "profanity-check"
    """Harm judge the users consult to decide what to flag (``profanity-check`` or ``wordlist``)."""

    harm_threshold: float = 0.5
    """Judge score at or above which a reply is harmful."""

    seed: int = 0
    """Seeds every user's prompt choice and vote noise."""

    def problems(self) -> list[str]:
        out = []
        if self.users < 1:
            out.append("--users must be at least 1")
        if self.rounds < 1:
            out.append("--rounds must be at least 1")
        if self.ratings_per_round < 1:
            out.append("--ratings-per-round must be at least 1")
        if not self.profiles:
            out.append("--profiles must name at least one profile")
        if self.train and not self.admin_password:
            out.append("training needs the operator password: set ASSISTANT_ADMIN_PASSWORD or --admin-password, or pass --no-train")
        return out


@dataclass
class SimUser:
    username: str
    profile: Profile
    token: str = ""
    user_id: int | None = None


@dataclass
class RoundStats:
    """What one user did and saw in one round."""

    turns: int = 0
    ratings: int = 0
    rankings: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    harm_flags: int = 0
    errors: int = 0
    scores: list[float] = field(default_factory=list)  # own-preference score of the served (first) reply
    harmful: list[bool] = field(default_factory=list)  # judge flag of the served reply
    served_by: Counter = field(default_factory=Counter)  # adapter label (or "base") of the served reply

    def summary(self) -> dict[str, Any]:
        return {
            "turns": self.turns, "ratings": self.ratings, "rankings": self.rankings,
            "thumbs_up": self.thumbs_up, "thumbs_down": self.thumbs_down, "harm_flags": self.harm_flags,
            "errors": self.errors,
            "mean_score": statistics.fmean(self.scores) if self.scores else None,
            "harmful_share": sum(self.harmful) / len(self.harmful) if self.harmful else None,
            "served_by": dict(self.served_by),
        }


async def _chat_with_retry(sock, prompt: str, *, alternatives: int, cfg: SimConfig, attempts: int = 5) -> Turn:
    for k in range(attempts):
        try:
            return await sock.chat(prompt, alternatives=alternatives, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature)
        except ContractError as exc:
            if exc.code not in RETRY_CODES or k == attempts - 1:
                raise
            await asyncio.sleep(1.0 + 2 * k)  # the server is full: back off like a polite client
    raise AssertionError("unreachable")


async def user_round(client: AssistantClient, user: SimUser, cfg: SimConfig, judge: Judge, rater: Rater,
                     rng: random.Random) -> RoundStats:
    """One user's round: chat and vote until ``ratings_per_round`` votes are cast (or 3x as many turns)."""
    b = user.profile.behaviour
    stats = RoundStats()
    async with client.chat_socket(user.token) as sock:
        while stats.ratings < cfg.ratings_per_round and stats.turns < 3 * cfg.ratings_per_round:
            stats.turns += 1
            # a. prompt
            prompt = rng.choice(P.RED_TEAM_TRAIN if rng.random() < b.red_team_share else P.TRAIN_PROMPTS)
            # b. chat
            ranking = rng.random() < b.ranking_share
            turn = await _chat_with_retry(sock, prompt, alternatives=b.alternatives if ranking else 1, cfg=cfg)
            replies = [r for r in turn.replies if r.finish_reason not in ("error", "cancelled")]
            if not replies:
                stats.errors += 1
                continue
            texts = [r.text for r in replies]
            scores = [user.profile.score(prompt, t) for t in texts]
            flagged = [s >= judge.threshold for s in judge.score(texts)]
            stats.scores.append(scores[0])
            stats.harmful.append(flagged[0])
            stats.served_by[replies[0].adapter_version or "base"] += 1
            # c. harm flags
            if b.flags_harm:
                for r, bad in zip(replies, flagged):
                    if bad:
                        await client.feedback(user.token, r.message_id, "down", ["harmful", "offensive"],
                                              comment="simulated user: judged harmful")
                        stats.harm_flags += 1
                        stats.thumbs_down += 1
                        stats.ratings += 1
            # d. votes
            if ranking and len(replies) >= 2:
                order = rater.rank(prompt, texts)
                if b.flags_harm:  # harmful replies always rank last
                    order = [i for i in order if not flagged[i]] + [i for i in order if flagged[i]]
                await client.rank(user.token, [replies[i].message_id for i in order])
                stats.rankings += 1
                stats.ratings += 1
            elif not (b.flags_harm and flagged[0]) and rng.random() < b.rate_prob:
                up = rater.thumb(scores[0])
                prof = user.profile
                await client.feedback(user.token, replies[0].message_id, "up" if up else "down",
                                      list(prof.up_reasons if up else prof.down_reasons))
                stats.thumbs_up += up
                stats.thumbs_down += not up
                stats.ratings += 1
            logger.debug("%s: %r -> %r (score %.2f)", user.username, prompt, texts[0][:60], scores[0])
    return stats


async def _start_run(client: AssistantClient, admin_token: str, user_ids: list[int] | None, timeout_s: float) -> dict:
    """Queue a training run; while another run overlaps (409, e.g. the nightly one), wait and retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.start_training_run(admin_token, user_ids)
        except ContractError as exc:
            if exc.status != 409 or time.monotonic() > deadline:
                raise
            logger.info("another training run overlaps (%s); retrying in 10 s", exc.detail)
            await asyncio.sleep(10.0)


async def _sign_up(client: AssistantClient, user: SimUser, password: str) -> None:
    created = await client.register(user.username, password)
    try:
        user.token = await client.token(user.username, password)
    except ContractError as exc:
        raise ContractError(f"account {user.username} exists with another password; pass another --user-prefix") from exc
    user.user_id = (await client.me(user.token))["id"]
    logger.info("%s %s (id %s, profile %s)", "registered" if created else "signed in", user.username, user.user_id,
                user.profile.name)


async def run_simulation(cfg: SimConfig, profiles: list[Profile], judge: Judge | None = None) -> dict[str, Any]:
    """Run the whole simulation against ``cfg.base_url``; return the simulation record."""
    problems = cfg.problems()
    if problems:
        raise ValueError("invalid simulation settings:\n  - " + "\n  - ".join(problems))
    judge = judge or make_judge(cfg.judge, cfg.harm_threshold)
    started = datetime.now(timezone.utc)
    users = [SimUser(f"{cfg.user_prefix}{i}-{profiles[i % len(profiles)].name}"[:32], profiles[i % len(profiles)])
             for i in range(cfg.users)]
    raters = {u.username: Rater(u.profile, random.Random(f"{cfg.seed}:vote:{u.username}")) for u in users}
    rngs = {u.username: random.Random(f"{cfg.seed}:prompt:{u.username}") for u in users}
    record: dict[str, Any] = {
        "kind": "simulation", "started_at": started.isoformat(), "base_url": cfg.base_url,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("admin_password", "password")},
        "judge": {"name": judge.name, "threshold": judge.threshold},
        "users": [], "rounds": [],
    }
    async with AssistantClient(cfg.base_url) as client:
        await client.wait_healthy()
        # 1. accounts
        for u in users:
            await _sign_up(client, u, cfg.password)
        record["users"] = [{"username": u.username, "user_id": u.user_id, "profile": u.profile.to_dict()} for u in users]
        admin_token = None
        if cfg.train:
            assert cfg.admin_password is not None  # problems() requires it to train
            admin_token = await client.token(cfg.admin_username, cfg.admin_password)
        for rnd in range(1, cfg.rounds + 1):
            # 2. one round of chatting and voting, all users at once (the engine batches them)
            t0 = time.monotonic()
            results = await asyncio.gather(*(user_round(client, u, cfg, judge, raters[u.username], rngs[u.username])
                                             for u in users))
            entry: dict[str, Any] = {"round": rnd, "wall_s": round(time.monotonic() - t0, 1),
                                     "users": {u.username: s.summary() for u, s in zip(users, results)},
                                     "training_run": None}
            for u, s in zip(users, results):
                summ = s.summary()
                logger.info("round %d %s: %d votes (%d rankings, %d up, %d down, %d harm flags), mean own score %s, served by %s",
                            rnd, u.username, s.ratings, s.rankings, s.thumbs_up, s.thumbs_down, s.harm_flags,
                            f"{summ['mean_score']:.3f}" if summ["mean_score"] is not None else "-", dict(s.served_by))
            # 3. training through the operator API
            if admin_token is not None:  # cfg.train
                # every user has an id: step 1 signed each one in
                ids = [u.user_id for u in users if u.user_id is not None] if cfg.train_only_sim_users else None
                run = await _start_run(client, admin_token, ids, cfg.run_timeout_s)
                logger.info("round %d: training run %s started", rnd, run.get("id"))
                run = await client.wait_for_run(admin_token, run["id"], timeout_s=cfg.run_timeout_s)
                logger.info("round %d: training run %s %s", rnd, run.get("id"), run.get("status"))
                if run.get("status") != "succeeded":
                    logger.warning("training run %s failed: %s", run.get("id"), run.get("error"))
                entry["training_run"] = run
            record["rounds"].append(entry)
    record["finished_at"] = datetime.now(timezone.utc).isoformat()
    return record


# --- the command -----------------------------------------------------------------------------------


def write_record(record: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    latest = out.parent / "latest.json"
    latest.write_text(json.dumps(record, indent=2, default=str))
    return out


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``assistant simulate`` (service/cli.py adds them to its sub-parser)."""
    p.add_argument("--base-url", default=None, help="service to exercise (default http://ASSISTANT_HOST:ASSISTANT_PORT)")
    p.add_argument("--users", type=int, default=2, help="number of simulated users")
    p.add_argument("--profiles", default="concise,detailed",
                   help="comma-separated profile names, assigned to users in turn "
                        "(built-in: concise, detailed, bulleted, formal, enthusiastic, helpful)")
    p.add_argument("--profiles-file", type=Path, default=None, help="JSON or TOML file with operator-defined profiles")
    p.add_argument("--rounds", type=int, default=1, help="rounds of rating, each followed by a training run")
    p.add_argument("--ratings-per-round", type=int, default=8, help="votes each user casts per round")
    p.add_argument("--max-new-tokens", type=int, default=48, help="reply length asked for on each turn")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature asked for (default: the server's)")
    p.add_argument("--no-train", action="store_true", help="do not start training runs between rounds")
    p.add_argument("--train-only-sim-users", action="store_true",
                   help="train only the simulated users' adapters (no global adapter is trained on such runs)")
    p.add_argument("--admin-password", default=None, help="operator password (default ASSISTANT_ADMIN_PASSWORD)")
    p.add_argument("--run-timeout", type=float, default=3600.0, help="seconds to wait for one training run")
    p.add_argument("--user-prefix", default="sim", help="usernames are <prefix><i>-<profile>")
    p.add_argument("--judge", choices=["profanity-check", "wordlist"], default="profanity-check", help="harm judge")
    p.add_argument("--harm-threshold", type=float, default=0.5, help="judge score counted as harmful")
    p.add_argument("--seed", type=int, default=0, help="seed for prompts and vote noise")
    p.add_argument("--out", type=Path, default=None,
                   help="simulation record path (default <data_dir>/reports/simulations/<timestamp>.json)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip the in-process evaluation at the end (it needs this machine's data dir to be the service's)")


def config_from_args(args: argparse.Namespace, settings) -> tuple[SimConfig, list[Profile]]:
    extra = load_profiles(args.profiles_file) if args.profiles_file else {}
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    profiles = resolve_profiles(names, extra)
    cfg = SimConfig(
        base_url=args.base_url or f"http://{'127.0.0.1' if settings.host == '0.0.0.0' else settings.host}:{settings.port}",
        profiles=tuple(names), users=args.users, rounds=args.rounds, ratings_per_round=args.ratings_per_round,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, train=not args.no_train,
        train_only_sim_users=args.train_only_sim_users,
        admin_password=args.admin_password or settings.admin_password or os.environ.get("ASSISTANT_ADMIN_PASSWORD"),
        run_timeout_s=args.run_timeout, user_prefix=args.user_prefix, judge=args.judge,
        harm_threshold=args.harm_threshold, seed=args.seed,
    )
    return cfg, profiles


def main_simulate(args: argparse.Namespace, settings=None) -> dict[str, Any]:
    """Entry point of ``assistant simulate``; returns the simulation record."""
    if settings is None:
        from service.settings import get_settings

        settings = get_settings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the round summaries
    try:
        cfg, profiles = config_from_args(args, settings)
        record = asyncio.run(run_simulation(cfg, profiles))
    except (ProfileError, ValueError, ContractError) as exc:
        sys.exit(f"assistant simulate: {exc}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = write_record(record, args.out or simulations_dir(settings.data_dir) / f"{stamp}.json")
    logger.info("simulation record written to %s", out)
    print(f"simulation record: {out}")
    return record
