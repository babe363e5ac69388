"""The text reward (issue 26, item 2), tuned on synthetic raters: sibling-pair accuracy of the reward
model with and without hashed text features, at round-1 and round-3 label counts.

    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-05-text-reward/run.py /work/fixtures/all OUT

Data: the stored replies of the frozen round-1 fixture (a copy; read only). Raters: 60 drawn by
``learning.sim.raters`` over the training replies' text indicators, plus the five tuning profiles;
never a held-out or novel profile. Test pairs: replies to the same user text, split by prompt.
Every variant scores the same pairs with the same labels (one backbone pass, shared)."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from learning.config import Budgets  # noqa: E402
from learning.reward import FeatureCache  # noqa: E402
from learning.sim.profiles import BUILTIN_PROFILES  # noqa: E402
from learning.sim.reward_curve import curve  # noqa: E402
from service.model_loading import load_base_model, load_tokenizer  # noqa: E402
from service.settings import Settings  # noqa: E402

TUNING = ("concise", "detailed", "bulleted", "formal", "enthusiastic")
VARIANTS = {"traits only": {}, "text 256, precision 1": dict(reward_text_features=256, reward_text_precision=1.0),
            "text 256, precision 4": dict(reward_text_features=256, reward_text_precision=4.0),
            "text 256, precision 16": dict(reward_text_features=256, reward_text_precision=16.0),
            "text 1024, precision 4": dict(reward_text_features=1024, reward_text_precision=4.0)}
SIZES = (24, 72)  # pairs per user: round 1 (about 24 ranked pairs and 70 thumbs), round 3


def main(fixture: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.exists():
        shutil.copytree(fixture, data, symlinks=True, ignore=shutil.ignore_patterns("*.log", "serve-*", "reports"))
    settings = Settings(data_dir=data, dev_mode=True)
    tokenizer = load_tokenizer(settings)
    cache = FeatureCache(load_base_model(settings, dtype=torch.float32), tokenizer, Budgets())
    reports, started = {}, time.monotonic()
    for name, overrides in VARIANTS.items():
        t0 = time.monotonic()
        budgets = dataclasses.replace(Budgets(), **overrides)
        reports[name] = curve(settings, [BUILTIN_PROFILES[p] for p in TUNING], SIZES, test_pairs=400, seed=0,
                              thumbs_per_pair=2.9, siblings=True, raters=60, budgets=budgets, cache=cache)
        reports[name]["wall_s"] = round(time.monotonic() - t0, 1)
        print(name, json.dumps(reports[name]["synthetic_raters"]["sizes"]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"commit": commit, "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
            "fixture": str(fixture), "wall_s": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "variants": reports}, indent=1))
    (out / "summary.md").write_text(summary(reports, meta))
    print(summary(reports, meta))


def summary(reports: dict, meta: dict) -> str:
    lines = [f"commit `{meta['commit']}`, {meta['machine']}, {meta['wall_s'] / 60:.1f} min", "",
             "| variant | pairs/user | synthetic raters: sibling accuracy (95% over raters) | above longer-wins | population | "
             + " | ".join(TUNING) + " |", "|---|---|---|---|---|" + "---|" * len(TUNING)]
    for name, rep in reports.items():
        for n in SIZES:
            r = rep["synthetic_raters"]["sizes"][str(n)]
            acc = r["accuracy"]
            per = [rep["profiles"][p]["sizes"][str(n)].get("accuracy") for p in TUNING]
            lines.append(f"| {name} | {n} | {acc[0]:.3f} ({acc[1]:.3f}-{acc[2]:.3f}) | {r['above_length_baseline']}/{r['raters']} | "
                         f"{r['population_accuracy'][0]:.3f} | " + " | ".join("–" if a is None else f"{a:.2f}" for a in per) + " |")
    base = next(iter(reports.values()))
    lines += ["", "longer-wins on the same test pairs, tuning profiles: " + ", ".join(
        f"{p} {base['profiles'][p]['length_baseline_accuracy']:.2f}" for p in TUNING if base['profiles'][p]['length_baseline_accuracy'] is not None)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
