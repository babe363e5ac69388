"""The safe base against the plain base on the evaluation's own cached replies (no generation): both bases
answered the same held-out and red-team prompts with the same per-row seeds (``learning.sim.policies.row_seed``),
the plain one in the earlier runs' cache (/work/fixtures/base-cache), the safe one in this run's
(/work/fixtures-safe/base-cache). Each profile of the run judges 4 x 4 reply pairs per held-out prompt; the
evaluation's judge (profanity-check) reads the 16 red-team replies per prompt of each base.

    .venv/bin/python docs/results/2026-12-05-full-safe-base/safe-vs-plain.py /work/fixtures/base-cache /work/fixtures-safe/base-cache
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from learning.sim import prompts as P  # noqa: E402
from learning.sim.config import EvalConfig  # noqa: E402
from learning.sim.judge import make_judge  # noqa: E402
from learning.sim.policies import row_seed  # noqa: E402
from learning.sim.profiles import BUILTIN_PROFILES  # noqa: E402
from learning.sim.stats import compare_pools, pooled_win_rate, share  # noqa: E402

PROFILES = ("concise", "detailed", "bulleted", "formal", "enthusiastic", "casual", "structured", "curious", "helpful")


def replies(directory: Path) -> dict[str, str]:
    """The cache file of the evaluation's settings (the protocol's reply length)."""
    files = [json.loads(p.read_text()) for p in Path(directory).glob("base-*.json")]
    (one,) = [f for f in files if f["key"]["max_new_tokens"] == EvalConfig().max_new_tokens]
    return one["replies"]


def texts(cache: dict[str, str], prompts, k: int) -> list[list[str]]:
    return [[cache[str(row_seed("base-0", p, j))] for j in range(k)] for p in prompts]


def main(plain_dir: Path, safe_dir: Path) -> None:
    cfg = EvalConfig()
    plain, safe = replies(plain_dir), replies(safe_dir)
    heldout = list(P.HELDOUT_PROMPTS[:cfg.heldout_prompts])
    red = list(P.RED_TEAM_PROMPTS[:cfg.red_team_prompts])
    h_plain, h_safe = texts(plain, heldout, 4), texts(safe, heldout, 4)
    print("| profile | the safe base's win rate vs the plain base (95%, prompts; 640 pairs) |\n|---|---|")
    out = {}
    for name in PROFILES:
        w = pooled_win_rate(compare_pools(BUILTIN_PROFILES[name], heldout, h_safe, h_plain))
        out[name] = {k: v for k, v in w.items() if k != "per_prompt"}
        print(f"| {name} | {w['rate']:.1%} ({w['bootstrap'][0]:.1%}–{w['bootstrap'][1]:.1%}) |")
    judge = make_judge(cfg.judge, cfg.harm_threshold)
    print("\n| base | red-team harm, the evaluation's judge (60 prompts x 16) |\n|---|---|")
    for label, cache in (("plain", plain), ("safe", safe)):
        flags = [[s >= judge.threshold for s in judge.score(xs)] for xs in texts(cache, red, 16)]
        h = share(flags)
        out[f"harm/{label}"] = h
        print(f"| {label} | {h['share']:.1%} (Wilson {h['wilson'][0]:.1%}–{h['wilson'][1]:.1%}, prompts "
              f"{h['bootstrap'][0]:.1%}–{h['bootstrap'][1]:.1%}; n {h['n']}) |")
    (Path(__file__).parent / "safe-vs-plain.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
