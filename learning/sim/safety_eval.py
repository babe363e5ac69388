"""The safety stage measured for the record: the plain base against the safe base, on prompts training never saw.

Both bases answer the same prompts with the same per-row seeds (common random numbers):

- harm: the evaluation's red-team set and set B (``learning.sim.redteam_b``, written apart), each
  prompt ``red_team_samples`` times (60 x 8 = 480 per set and policy), scored by the evaluation's
  judge (``profanity-check``), which no part of training, selection or serving uses;
- over-refusal: the benign prompts and the edgy-but-benign set, scored by ``profiles.is_refusal``;
- helpfulness: the neutral ("helpful") profile's win rate of the safe base against the plain base
  on the held-out prompts.

Every share carries Wilson's interval over samples and a bootstrap over prompts; the harm ratio's
interval is a bootstrap over prompts of the two bases' paired per-prompt rates.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from learning.sim import prompts as P
from learning.sim.config import EvalConfig
from learning.sim.judge import make_judge
from learning.sim.profiles import BUILTIN_PROFILES, is_refusal
from learning.sim.redteam_b import EDGY_BENIGN, RED_TEAM_B
from learning.sim.stats import compare_pools, pooled_win_rate, share
from service.content_filter import ReplyFilter
from service.judges import make_judge as make_serving_judge

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

SEED_SET = "safety"


def harm_ratio(safe: Sequence[Sequence[bool]], plain: Sequence[Sequence[bool]], confidence: float, resamples: int,
               seed: int) -> dict[str, Any]:
    """safe harmful share / plain harmful share, with a bootstrap over prompts (both resampled together)."""
    def ratio(rows: Sequence[int]) -> float | None:
        a = sum(sum(safe[i]) for i in rows) / max(1, sum(len(safe[i]) for i in rows))
        b = sum(sum(plain[i]) for i in rows) / max(1, sum(len(plain[i]) for i in rows))
        return a / b if b > 0 else None

    rng = random.Random(seed)
    n = len(safe)
    draws = sorted(r for r in (ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)) if r is not None)
    lo = draws[int((1 - confidence) / 2 * len(draws))] if draws else None
    hi = draws[min(len(draws) - 1, int((1 + confidence) / 2 * len(draws)))] if draws else None
    return {"ratio": ratio(range(n)), "bootstrap": [lo, hi]}


def _filtered(text: str, reply_filter: ReplyFilter) -> str:
    """What the serving filter shows of ``text``: the relay checks as words complete, so step word by
    word; at the first flagged stretch, the words before it and then the redirect."""
    checked = 0
    ends = [m.end() for m in re.finditer(r"[\s.,;:!?\"')\]]", text)] + [len(text)]
    for whole in ends:
        if whole > checked:
            if reply_filter.flags(text[:whole], checked):
                return reply_filter.replace(text[:checked])
            checked = whole
    return text


def evaluate_safety(settings: "Settings", cfg: EvalConfig) -> dict[str, Any]:
    from learning.sim.policies import PolicyBank
    from service.model_loading import base_model_hash, safety_manifest

    plain_settings = settings.model_copy(update={"safety_stage": False})
    if safety_manifest(settings) is None:
        raise SystemExit("no safety stage is trained for this base (run `assistant safety train` first)")
    judge = make_judge(cfg.judge, cfg.harm_threshold)
    reply_filter = ReplyFilter.from_settings(settings)
    if reply_filter is None:
        insults = make_serving_judge("insults")
        assert insults is not None  # a registered judge: only "" and "none" name no judge
        reply_filter = ReplyFilter(insults)
    sets = {"red team": list(P.RED_TEAM_PROMPTS), "red team B": list(RED_TEAM_B)}
    benign = {"benign": list(P.BENIGN_PROMPTS), "edgy benign": list(EDGY_BENIGN)}
    heldout = list(P.HELDOUT_PROMPTS[:cfg.heldout_prompts])
    texts: dict[str, dict[str, list[list[str]]]] = {}
    timing: dict[str, float] = {}
    for name, s in (("plain base", plain_settings), ("safe base", settings)):
        started = time.monotonic()
        bank = PolicyBank(s, cfg)
        texts[name] = {k: bank.sample(None, v, cfg.red_team_samples, SEED_SET).texts for k, v in sets.items()}
        texts[name].update({k: bank.sample(None, v, cfg.samples, SEED_SET).texts for k, v in benign.items()})
        texts[name]["held-out"] = bank.sample(None, heldout, cfg.samples, SEED_SET).texts
        timing[name] = time.monotonic() - started
        del bank
    # the served path: the safe base behind the serving filter (service.content_filter), applied to the
    # same replies: a stream the filter cuts shows exactly the words before the flagged ones, then the redirect
    texts["served path"] = {k: [[_filtered(t, reply_filter) for t in ts] for ts in v] for k, v in texts["safe base"].items()}
    ci = (cfg.confidence, cfg.bootstrap, cfg.seed)
    report: dict[str, Any] = {"harm": {}, "refusal": {}, "helpfulness": {}, "worst": {}}
    flags: dict[str, dict[str, list[list[bool]]]] = {}
    for name in texts:
        flags[name] = {k: [[x >= judge.threshold for x in judge.score(ts)] for ts in texts[name][k]] for k in sets}
        report["harm"][name] = {k: share(flags[name][k], *ci) for k in sets}
        report["refusal"][name] = {k: share([[is_refusal(t) for t in ts] for ts in texts[name][k]], *ci) for k in benign}
    report["harm"]["ratio"] = {k: harm_ratio(flags["safe base"][k], flags["plain base"][k], *ci) for k in sets}
    report["harm"]["ratio served"] = {k: harm_ratio(flags["served path"][k], flags["plain base"][k], *ci) for k in sets}
    report["helpfulness"]["safe vs plain, helpful profile"] = pooled_win_rate(
        compare_pools(BUILTIN_PROFILES["helpful"], heldout, texts["safe base"]["held-out"], texts["plain base"]["held-out"]), *ci)
    for name in texts:  # a few flagged replies per policy, so a reader can see what the judge calls harmful
        report["worst"][name] = [(p, t) for k in sets for p, ts, fs in zip(sets[k], texts[name][k], flags[name][k])
                                 for t, f in zip(ts, fs) if f][:8]
    # what the filter cut: the served path's replies that differ from the safe base's (on benign prompts: false cuts)
    report["filtered"] = {k: share([[a != b for a, b in zip(xs, ys)] for xs, ys in zip(texts["safe base"][k], texts["served path"][k])],
                                   *ci) for k in texts["safe base"]}
    report["texts"] = texts
    report.update({"config": asdict(cfg), "judge": judge.name, "timing_s": timing, "serving_filter": reply_filter.judge.name,
                   "safe_base": {"hash": base_model_hash(settings), "manifest": safety_manifest(settings)},
                   "plain_base": {"hash": base_model_hash(plain_settings)}})
    return report


def render_safety_summary(report: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def row(s: dict[str, Any]) -> str:
        lo, hi = s["wilson"]
        return f"{pct(s['share'])} ({s['count']}/{s['n']}; {pct(lo)}-{pct(hi)})"

    def ratio(r: dict[str, Any]) -> str:
        lo, hi = r["bootstrap"]
        return "-" if r["ratio"] is None else f"{r['ratio']:.2f} ({lo:.2f}-{hi:.2f})" if lo is not None else f"{r['ratio']:.2f}"

    lines = ["| set | plain base | safe base | served path (safe base + filter) | ratio safe / plain | ratio served / plain |",
             "|---|---|---|---|---|---|"]
    for k in report["harm"]["ratio"]:
        lines.append(f"| harmful share, {k} | {row(report['harm']['plain base'][k])} | {row(report['harm']['safe base'][k])} | "
                     f"{row(report['harm']['served path'][k])} | {ratio(report['harm']['ratio'][k])} | "
                     f"{ratio(report['harm']['ratio served'][k])} |")
    for k in report["refusal"]["plain base"]:
        lines.append(f"| refusals, {k} | {row(report['refusal']['plain base'][k])} | {row(report['refusal']['safe base'][k])} | "
                     f"{row(report['refusal']['served path'][k])} | | |")
    lines.append("\nReplies the serving filter cut (served path vs safe base; on benign, edgy and held-out prompts every cut is "
                 "a false one):\n")
    lines += [f"- {k}: {row(v)}" for k, v in report.get("filtered", {}).items()]
    w = report["helpfulness"]["safe vs plain, helpful profile"]
    lines.append(f"\nNeutral-profile helpfulness, safe base against the plain base (held-out prompts): "
                 f"{pct(w['rate'])} (95% bootstrap over prompts {pct(w['bootstrap'][0])}-{pct(w['bootstrap'][1])}).")
    return "\n".join(lines) + "\n"


def main_evaluate_safety(args: argparse.Namespace, settings: "Settings") -> Path:
    cfg = EvalConfig(red_team_samples=args.red_team_samples, samples=args.samples, seed=args.seed)
    report = evaluate_safety(settings, cfg)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    summary = render_safety_summary(report)
    (out / "summary.md").write_text(summary)
    print(summary)
    return out
