"""``assistant reward-curve``: how many labels does the reward model need per user?

The full-size simulation gives each user a few dozen votes per round, noisy ones, so the reward
model's held-out accuracy there says little about what more data would buy. This command answers
that directly, on this data dir's stored replies and with the production reward head:

1. take the assistant replies the service has stored (any simulation or real use fills them), with
   their rendered prompts; split them by a hash of the message id (``learning.reward.is_heldout``) into a training and a test pool,
   so no reply appears on both sides;
2. for each profile, label random pairs with the profile's hidden preference (ties dropped): test
   pairs exactly; training pairs, and thumbs (up above the pool's median score), with the
   profile's own vote noise (``Behaviour.noise``: that share of votes is a coin flip), the way its
   simulated user would vote;
3. for each size N, fit the reward model exactly as the learning job does (``learning.reward``:
   one model for all profiles, as users of one service: the shared basis and the population's
   weights on everyone's labels, a prior-pulled head per profile) on N pairs and about 2N thumbs
   per profile, and report each profile's held-out pairwise accuracy next to the population head's
   and "longer reply wins" on the same test pairs.

The profiles' hidden preferences label the curve's data only: this is a measuring instrument,
never part of a training run.

Outputs ``reward_curve.json``, ``reward_curve.md`` and ``reward_curve.png`` under
``<data_dir>/reports/reward_curve/<timestamp>/``. It reads the database and never writes to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol, Sequence

from learning.sim.profiles import BUILTIN_PROFILES, Profile, ProfileError, load_profiles

if TYPE_CHECKING:
    from learning.config import Budgets
    from learning.reward import FeatureCache
    from service.settings import Settings

logger = logging.getLogger(__name__)

TEST_SHARE = 0.3
"""Share of stored replies (by a hash of the message id) that only ever appear in test pairs."""


class _Noise(Protocol):
    @property
    def noise(self) -> float: ...


class Labeller(Protocol):
    """What the curve reads of a labeller: an evaluation ``Profile`` or a ``learning.sim.raters.SyntheticRater``."""

    @property
    def name(self) -> str: ...

    @property
    def behaviour(self) -> _Noise: ...

    def score(self, prompt: str, reply: str) -> float: ...


class Reply(NamedTuple):
    user_text: str  # what the profile's preference reads as the prompt (the last user message)
    prompt: str  # the rendered conversation, as the reward model reads it
    text: str
    message_id: int


def stored_replies(settings: "Settings", render, limit: int) -> list[Reply]:
    """Up to ``limit`` non-empty assistant replies of this data dir, oldest first."""
    from sqlmodel import Session, col, select

    from service.db import init_db, make_engine
    from service.labels import Thread
    from service.models import Message, pk

    db = make_engine(settings)
    init_db(db)  # a data dir from an older release is upgraded first, as the service would
    with Session(db) as session:
        rows = session.exec(select(Message).where(Message.role == "assistant").order_by(col(Message.id)).limit(limit)).all()
        thread = Thread(session)
        thread.load(pk(m) for m in rows)
        out = []
        for m in rows:
            if not m.content.strip():
                continue
            conversation = thread.before(m)
            out.append(Reply(conversation[-1]["content"], render(conversation), m.content, pk(m)))
    return out


def _vote(replies: Sequence[Reply], profile: Labeller, count: int, rng: random.Random, noise: float,
          draw: Callable[[], tuple[int, int] | None]) -> list[tuple[int, int]]:
    """``count`` (chosen, rejected) pairs among those ``draw`` offers, under ``profile``; with probability
    ``noise`` a pair's order is a coin flip. Ties are skipped."""
    pairs: list[tuple[int, int]] = []
    attempts = 0
    while len(pairs) < count and attempts < 50 * count:
        attempts += 1
        drawn = draw()
        if drawn is None:
            continue
        i, j = drawn
        # each reply is scored against its own prompt, as a pointwise reward model scores it
        sa, sb = profile.score(replies[i].user_text, replies[i].text), profile.score(replies[j].user_text, replies[j].text)
        if math.isclose(sa, sb, rel_tol=1e-9, abs_tol=1e-9):
            continue
        verdict = 1.0 if sa > sb else 0.0
        if rng.random() < noise:
            verdict = float(rng.random() < 0.5)
        pairs.append((i, j) if verdict == 1.0 else (j, i))
    return pairs


def labelled_pairs(replies: Sequence[Reply], profile: Labeller, count: int, rng: random.Random,
                   noise: float) -> list[tuple[int, int]]:
    """``count`` pairs of any two replies (they may answer different prompts), labelled by ``profile``."""
    def draw() -> tuple[int, int] | None:
        i, j = rng.randrange(len(replies)), rng.randrange(len(replies))
        return None if i == j else (i, j)

    return _vote(replies, profile, count, rng, noise, draw)


def sibling_pairs(replies: Sequence[Reply], profile: Labeller, count: int, rng: random.Random,
                  noise: float) -> list[tuple[int, int]]:
    """As ``labelled_pairs``, but both replies answer the same user text: the comparison best-of-n,
    the warm start and the gate make (and the harder one: length and topic barely differ)."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(replies):
        by_prompt.setdefault(r.user_text, []).append(i)
    groups = [g for g in by_prompt.values() if len(g) > 1]
    if not groups:
        return []

    def draw() -> tuple[int, int]:
        i, j = rng.sample(rng.choice(groups), 2)
        return i, j

    return _vote(replies, profile, count, rng, noise, draw)


def labelled_thumbs(replies: Sequence[Reply], profile: Labeller, count: int, rng: random.Random,
                    noise: float) -> list[tuple[int, int]]:
    """``count`` (reply index, 1 up / 0 down) thumbs under ``profile``: up when the reply scores above
    the median of the pool (about half up, as the simulated users' running median gives; a tie with
    the median is a coin flip), with
    probability ``noise`` flipped."""
    scores = [profile.score(r.user_text, r.text) for r in replies]
    median = sorted(scores)[len(scores) // 2]
    out = []
    for _ in range(count):
        i = rng.randrange(len(replies))
        up = int(scores[i] > median or (scores[i] == median and rng.random() < 0.5))
        if rng.random() < noise:
            up = 1 - up
        out.append((i, up))
    return out


def _as_dataset(pool: Sequence[Reply], labels: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]):
    """Profile-labelled pairs and thumbs as the learning job's ``Dataset`` (user id = profile index)."""
    from datetime import datetime, timezone

    from learning.data import Dataset, PointLabel, PreferencePair

    now = datetime.now(timezone.utc)
    ds = Dataset()
    for uid, (pairs, thumbs) in labels.items():
        for n, (c, r) in enumerate(pairs):
            ds.pairs.append(PreferencePair(uid, pool[c].prompt, pool[c].text, pool[r].text, pool[c].message_id,
                                           pool[r].message_id, f"curve:{n}", now, rejected_prompt=pool[r].prompt))
        for n, (i, up) in enumerate(thumbs):
            ds.points.append(PointLabel(uid, pool[i].prompt, pool[i].text, up, pool[i].message_id, uid * 100000 + n, now))
    return ds


def curve(settings: "Settings", profiles: Sequence[Profile] | None, sizes: Sequence[int], *, test_pairs: int = 400,
          max_replies: int = 2000, seed: int = 0, thumbs_per_pair: float = 2.0, siblings: bool = False,
          raters: int = 0, budgets: "Budgets | None" = None, cache: "FeatureCache | None" = None) -> dict[str, Any]:
    """The production reward model's held-out accuracy per profile and label count.

    For each size N every profile gives N pairs and ``thumbs_per_pair * N`` thumbs (with its vote
    noise); one ``RewardModel`` is fitted on all of them exactly as the learning job fits it (the
    profiles are its users: a pooled basis and population, a prior-pulled user head each), and each
    profile's head is scored on exact pairs of test replies.
    """
    import dataclasses

    import torch

    from learning.config import Budgets
    from learning.data import chat_renderer
    from learning.reward import FeatureCache, RewardModel, is_heldout
    from service.model_loading import load_base_model, load_tokenizer

    # every label trains (the test pool below is the held-out set); the curve needs no label minimum
    budgets = dataclasses.replace(budgets or Budgets.from_env(), heldout_fraction=1e-9, min_user_labels=1)
    tokenizer = load_tokenizer(settings)
    replies = stored_replies(settings, chat_renderer(tokenizer), max_replies)
    if len(replies) < 20:
        raise ValueError(f"only {len(replies)} stored replies in {settings.data_dir}; run `assistant simulate` "
                         "(or use the service) first so there are replies to label")

    # sibling pairs: split by the user text, so every reply to a test prompt is a test reply
    split = (lambda r: f"prompt:{r.user_text}") if siblings else (lambda r: f"reply:{r.message_id}")
    train_pool = [r for r in replies if not is_heldout(split(r), TEST_SHARE)]
    test_pool = [r for r in replies if is_heldout(split(r), TEST_SHARE)]
    labellers: list[Labeller] = list(profiles or ())
    if raters:  # drawn over the training replies' text only (learning.sim.raters)
        from learning.sim.raters import draw

        labellers += draw([r.text for r in train_pool], raters, seed=seed)
    pairs_of = sibling_pairs if siblings else labelled_pairs
    if cache is None:  # one may be passed in to compare settings on the same backbone passes
        cache = FeatureCache(load_base_model(settings, dtype=torch.float32), tokenizer, budgets)
    cache.features([r.prompt for r in replies], [r.text for r in replies])  # every backbone pass, once

    results: dict[str, Any] = {}
    tests: dict[str, list[tuple[int, int]]] = {}
    for profile in labellers:
        rng = random.Random(seed)
        tests[profile.name] = test = pairs_of(test_pool, profile, test_pairs, rng, noise=0.0)
        longer = [1.0 if len(test_pool[c].text) > len(test_pool[r].text) else
                  0.5 if len(test_pool[c].text) == len(test_pool[r].text) else 0.0 for c, r in test]
        results[profile.name] = {"test_pairs": len(test), "noise": profile.behaviour.noise,
                                 "length_baseline_accuracy": sum(longer) / len(longer) if longer else None, "sizes": {}}
    for n in sizes:
        labels = {}
        for uid, profile in enumerate(labellers):
            rng = random.Random(seed * 7919 + n * 31 + uid)
            labels[uid] = (pairs_of(train_pool, profile, n, rng, noise=profile.behaviour.noise),
                           labelled_thumbs(train_pool, profile, int(round(thumbs_per_pair * n)), rng,
                                           noise=profile.behaviour.noise))
        data = _as_dataset(train_pool, labels)
        model = RewardModel(cache, budgets)
        model.fit(data, data)
        for uid, profile in enumerate(labellers):
            test = tests[profile.name]
            if not test:
                results[profile.name]["sizes"][str(n)] = {"train_pairs": len(labels[uid][0]), "accuracy": None}
                continue
            chosen = [test_pool[c] for c, _ in test]
            rejected = [test_pool[r] for _, r in test]
            with torch.no_grad():
                wins = (model.score(uid, [r.prompt for r in chosen], [r.text for r in chosen])
                        > model.score(uid, [r.prompt for r in rejected], [r.text for r in rejected]))  # (T,)
                pop = (model.score(None, [r.prompt for r in chosen], [r.text for r in chosen])
                       > model.score(None, [r.prompt for r in rejected], [r.text for r in rejected]))
            results[profile.name]["sizes"][str(n)] = {
                "train_pairs": len(labels[uid][0]), "train_thumbs": len(labels[uid][1]),
                "accuracy": float(wins.float().mean()), "population_accuracy": float(pop.float().mean()),
                "top_traits": [t.trait + ("+" if t.likes else "-") for t in model.top_traits(uid)]}
            logger.info("reward curve %s: %d pairs + %d thumbs -> held-out accuracy %.3f (population %.3f)", profile.name,
                        len(labels[uid][0]), len(labels[uid][1]), results[profile.name]["sizes"][str(n)]["accuracy"],
                        results[profile.name]["sizes"][str(n)]["population_accuracy"])
    synthetic = [p.name for p in labellers if p.name.startswith("rater")]
    return {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": settings.model,
        "synthetic_raters": {"count": len(synthetic), "seed": seed, "sizes": {
            str(n): rater_summary([results[name] for name in synthetic], str(n)) for n in sizes}} if synthetic else None,
        "replies": {"train_pool": len(train_pool), "test_pool": len(test_pool)},
        "pairs": "sibling (same user text)" if siblings else "any two replies",
        "budgets": {"reward_components": budgets.reward_components, "reward_text_features": budgets.reward_text_features,
                    "reward_text_precision": budgets.reward_text_precision,
                    "reward_text_evidence": budgets.reward_text_evidence, "user_head_l2": budgets.user_head_l2,
                    "reward_weight_decay": budgets.reward_weight_decay, "reward_bce_weight": budgets.reward_bce_weight},
        "thumbs_per_pair": thumbs_per_pair,
        "sizes": list(sizes),
        "profiles": results,
    }


def rater_summary(entries: Sequence[dict[str, Any]], size: str, min_test_pairs: int = 20) -> dict[str, Any]:
    """Mean held-out accuracy over raters with at least ``min_test_pairs`` test pairs, with a 95%
    interval (normal, over raters), next to the mean of "longer wins" and the population's."""
    kept = [e for e in entries if e["test_pairs"] >= min_test_pairs and e["sizes"][size].get("accuracy") is not None]
    if not kept:
        return {"raters": 0}

    def mean_ci(xs: list[float]) -> list[float]:
        m = sum(xs) / len(xs)
        se = (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1) / len(xs)) ** 0.5
        return [round(m, 4), round(m - 1.96 * se, 4), round(m + 1.96 * se, 4)]

    return {"raters": len(kept), "accuracy": mean_ci([e["sizes"][size]["accuracy"] for e in kept]),
            "population_accuracy": mean_ci([e["sizes"][size]["population_accuracy"] for e in kept]),
            "length_baseline_accuracy": mean_ci([e["length_baseline_accuracy"] for e in kept]),
            "above_length_baseline": sum(e["sizes"][size]["accuracy"] > e["length_baseline_accuracy"] for e in kept)}


def render_markdown(report: dict[str, Any]) -> str:
    sizes = [str(n) for n in report["sizes"]]
    lines = [
        f"# Reward-model learning curve {report['created_at']}",
        "",
        f"Held-out pairwise accuracy of the production reward model (shared basis on frozen `{report['base_model']}` "
        f"features and reply traits, a prior-pulled head per profile) trained on N profile-labelled pairs "
        f"and {report.get('thumbs_per_pair', 0):g}N thumbs per profile of stored replies ({report['replies']['train_pool']} training / "
        f"{report['replies']['test_pool']} test replies), next to \"longer reply wins\". "
        f"Pairs: {report.get('pairs', 'any two replies')}.",
        "",
        "| profile | " + " | ".join(f"N={n}" for n in sizes) + " | longer wins | test pairs |",
        "|---|" + "---|" * (len(sizes) + 2),
    ]
    for name, entry in report["profiles"].items():
        if report.get("synthetic_raters") and name.startswith("rater"):
            continue  # summarised below
        accs = [f"{entry['sizes'][n]['accuracy']:.2f}" if entry["sizes"][n].get("accuracy") is not None else "–" for n in sizes]
        base = entry["length_baseline_accuracy"]
        lines.append(f"| {name} | " + " | ".join(accs) + f" | {'–' if base is None else f'{base:.2f}'} | {entry['test_pairs']} |")
    raters = report.get("synthetic_raters")
    if raters:
        cells = []
        for n in sizes:
            r = raters["sizes"][n]
            cells.append(f"{r['accuracy'][0]:.3f} ({r['accuracy'][1]:.3f}-{r['accuracy'][2]:.3f})" if r.get("raters") else "–")
        first = raters["sizes"][sizes[0]]
        base = f"{first['length_baseline_accuracy'][0]:.2f}" if first.get("raters") else "–"
        lines.append(f"| {raters['count']} synthetic raters (mean, 95% interval over raters) | " + " | ".join(cells)
                     + f" | {base} | {first.get('raters', 0)} raters with >= 20 |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], reports_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = reports_dir / "reward_curve" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "reward_curve.json", "markdown": out / "reward_curve.md", "plot": out / "reward_curve.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(render_markdown(report))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, entry in report["profiles"].items():
        if report.get("synthetic_raters") and name.startswith("rater"):
            continue
        xs = [entry["sizes"][str(n)]["train_pairs"] for n in report["sizes"]]
        ax.plot(xs, [entry["sizes"][str(n)]["accuracy"] for n in report["sizes"]], marker="o", label=name)
    raters = report.get("synthetic_raters")
    if raters and all(raters["sizes"][str(n)].get("raters") for n in report["sizes"]):
        ax.plot(report["sizes"], [raters["sizes"][str(n)]["accuracy"][0] for n in report["sizes"]], marker="s", color="black",
                label=f"{raters['count']} synthetic raters (mean)")
    ax.axhline(0.85, color="grey", linestyle="--", linewidth=1, label="target 0.85")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs per user")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    return paths


def add_reward_curve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``assistant reward-curve`` (service/cli.py adds them to its sub-parser)."""
    p.add_argument("--profiles", default="concise,detailed,bulleted,formal,enthusiastic",
                   help="comma-separated profile names (built-in or from --profiles-file)")
    p.add_argument("--profiles-file", type=Path, default=None, help="JSON or TOML file with operator-defined profiles")
    p.add_argument("--sizes", default="20,60,200,600", help="comma-separated training-pair counts")
    p.add_argument("--test-pairs", type=int, default=400, help="held-out pairs per profile")
    p.add_argument("--max-replies", type=int, default=2000, help="stored replies to use at most")
    p.add_argument("--seed", type=int, default=0, help="seed for pair sampling and vote noise")
    p.add_argument("--siblings", action="store_true",
                   help="pairs of replies to the same user text (what best-of-n and the gate compare), split by prompt")
    p.add_argument("--raters", type=int, default=0,
                   help="add this many synthetic raters drawn at random over the text indicators (learning/sim/raters.py)")
    p.add_argument("--thumbs-per-pair", type=float, default=2.0,
                   help="thumbs each profile gives per training pair (round 1 of the simulation: about 2)")


def main_reward_curve(args: argparse.Namespace, settings=None) -> dict[str, Path]:
    if settings is None:
        from service.settings import get_settings

        settings = get_settings()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if not sizes or min(sizes) < 2:
            raise ValueError(f"--sizes {args.sizes!r} must list pair counts of at least 2, e.g. 20,60,200")
        if args.test_pairs < 10:
            raise ValueError("--test-pairs must be at least 10")
        extra = load_profiles(args.profiles_file) if args.profiles_file else {}
        known = {**BUILTIN_PROFILES, **extra}
        names = [n.strip() for n in args.profiles.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if args.raters < 0:
            raise ValueError("--raters must be >= 0")
        if unknown or not (names or args.raters):
            raise ProfileError(f"unknown profiles {unknown}; known: {', '.join(sorted(known))}")
        report = curve(settings, [known[n] for n in names], sizes, test_pairs=args.test_pairs,
                       max_replies=args.max_replies, seed=args.seed,
                       thumbs_per_pair=args.thumbs_per_pair, siblings=args.siblings, raters=args.raters)
    except (ProfileError, ValueError) as exc:
        sys.exit(f"assistant reward-curve: {exc}")
    paths = write(report, settings.data_dir / "reports")
    print(render_markdown(report))
    print(f"reward curve: {paths['markdown']}")
    return paths
