"""The text reward (issue 26, item 2), tuned on synthetic raters: sibling-pair accuracy of the reward
model with and without hashed text features, at round-1 and round-3 label counts.

    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-05-text-reward/run.py /work/fixtures/all docs/results/2026-12-05-text-reward

(the fixture is copied to a temporary directory first; only results.json and summary.md land in OUT)

Data: the stored replies of the frozen round-1 fixture (a copy; read only). Raters: 60 drawn by
``learning.sim.raters`` over the training replies' text indicators, plus the five tuning profiles;
never a held-out or novel profile. Test pairs: replies to the same user text, split by prompt.
Every variant scores the same pairs with the same labels (one backbone pass, shared).

Then, for the record only (nothing is chosen on it): the variant the rule below picks, against traits
only, on the held-out profiles and the novel ones (preferences no trait measures). The rule, fixed
before any run: the highest mean synthetic-rater accuracy at round-1 labels (24 pairs), as long as
the tuning profiles' mean accuracy there drops by no more than 0.01 against traits only."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
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
RECORD = ("casual", "structured", "curious", "direct", "analogies", "british", "summarised", "plain")  # never tuned on
VARIANTS = {"traits only": {}, "text 256, precision 1": dict(reward_text_features=256, reward_text_precision=1.0),
            "text 256, precision 4": dict(reward_text_features=256, reward_text_precision=4.0),
            "text 256, precision 16": dict(reward_text_features=256, reward_text_precision=16.0),
            "text 1024, precision 4": dict(reward_text_features=1024, reward_text_precision=4.0)}
RECORD_ALSO: tuple[str, ...] = ()  # variants recorded beside traits only and the chosen one (scripts that import this)
SIZES = (24, 72)  # pairs per user: round 1 (about 24 ranked pairs and 70 thumbs), round 3
SMOKE = os.environ.get("SMOKE") == "1"  # a tiny run that checks this script, numbers meaningless
RATERS, MAX_REPLIES = (4, 60) if SMOKE else (60, 2000)
if SMOKE:
    VARIANTS = {k: VARIANTS[k] for k in ("traits only", "text 256, precision 4")}


def main(fixture: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="text-reward-")) / "data"
    shutil.copytree(fixture, data, symlinks=True, ignore=shutil.ignore_patterns("*.log", "serve-*", "reports"))
    settings = Settings(data_dir=data, dev_mode=True)
    tokenizer = load_tokenizer(settings)
    cache = FeatureCache(load_base_model(settings, dtype=torch.float32), tokenizer, Budgets())
    reports, started = {}, time.monotonic()
    for name, overrides in VARIANTS.items():
        t0 = time.monotonic()
        budgets = dataclasses.replace(Budgets(), **overrides)
        reports[name] = curve(settings, [BUILTIN_PROFILES[p] for p in TUNING], SIZES, test_pairs=400, seed=0,
                              thumbs_per_pair=2.9, siblings=True, raters=RATERS, budgets=budgets, cache=cache,
                              max_replies=MAX_REPLIES)
        reports[name]["wall_s"] = round(time.monotonic() - t0, 1)
        print(name, json.dumps(reports[name]["synthetic_raters"]["sizes"]), flush=True)
    chosen = choose(reports)
    print("chosen:", chosen, flush=True)
    record = {}
    for name in dict.fromkeys(["traits only", *RECORD_ALSO, chosen]):
        budgets = dataclasses.replace(Budgets(), **VARIANTS[name])
        record[name] = curve(settings, [BUILTIN_PROFILES[p] for p in RECORD], SIZES, test_pairs=400, seed=0,
                             thumbs_per_pair=2.9, siblings=True, budgets=budgets, cache=cache, max_replies=MAX_REPLIES)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"commit": commit, "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
            "fixture": str(fixture), "wall_s": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "variants": reports, "chosen": chosen, "record": record}, indent=1))
    text = summary(reports, meta) + "\n" + record_summary(record, chosen)
    (out / "summary.md").write_text(text)
    print(text)


def _mean(rep: dict, names, n: int) -> float:
    accs = [rep["profiles"][p]["sizes"][str(n)].get("accuracy") for p in names]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs)


def choose(reports: dict) -> str:
    floor = _mean(reports["traits only"], TUNING, SIZES[0]) - 0.01
    ok = [n for n in reports if _mean(reports[n], TUNING, SIZES[0]) >= floor]
    return max(ok, key=lambda n: reports[n]["synthetic_raters"]["sizes"][str(SIZES[0])]["accuracy"][0])


def record_summary(record: dict, chosen: str) -> str:
    lines = [f"## For the record: held-out and novel profiles (never tuned on), traits only vs `{chosen}`", "",
             "| profile | longer wins | " + " | ".join(f"{v}, {n} pairs" for v in record for n in SIZES) + " |",
             "|---|---|" + "---|" * (len(record) * len(SIZES))]
    first = next(iter(record.values()))
    for p in RECORD:
        base = first["profiles"][p]["length_baseline_accuracy"]
        cells = []
        for rep in record.values():
            for n in SIZES:
                a = rep["profiles"][p]["sizes"][str(n)].get("accuracy")
                cells.append("–" if a is None else f"{a:.2f}")
        lines.append(f"| {p} ({first['profiles'][p]['test_pairs']} test pairs) | {'–' if base is None else f'{base:.2f}'} | "
                     + " | ".join(cells) + " |")
    for group, names in (("held-out", RECORD[:3]), ("novel", RECORD[3:])):
        lines.append(f"| mean, {group} | | " + " | ".join(f"{_mean(rep, names, n):.3f}" for rep in record.values() for n in SIZES) + " |")
    return "\n".join(lines) + "\n"


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
