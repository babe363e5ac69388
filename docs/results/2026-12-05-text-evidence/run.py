"""The text reward with a prior each user's labels choose (issue 26): empirical Bayes on the text block.

    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-05-text-evidence/run.py /work/fixtures/all docs/results/2026-12-05-text-evidence

The measurement, the data, the raters and the selection rule are those of ``../2026-12-05-text-reward/run.py``
(fixed before that run; this script imports it): sibling-pair accuracy on the frozen round-1 fixture's stored
replies, 60 synthetic raters plus the five tuning profiles; the variant with the highest synthetic-rater
accuracy at 24 pairs among those that cost the tuning profiles at most 0.01. Only the variants differ:
``ASSISTANT_REWARD_TEXT_EVIDENCE=1`` (each scope's text-block precision is the one of
``learning.reward.REWARD_TEXT_PRECISION_GRID`` its labels' Laplace evidence prefers, "no text" included),
against traits only and the fixed precision 4 of the first run, in one run."""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("text_reward_run", HERE.parent / "2026-12-05-text-reward" / "run.py")
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)

base.VARIANTS = {
    "traits only": {},
    "text 256, precision 4": dict(reward_text_features=256, reward_text_precision=4.0),
    "text 256, evidence": dict(reward_text_features=256, reward_text_evidence=True),
    "text 1024, evidence": dict(reward_text_features=1024, reward_text_evidence=True),
}
if base.SMOKE:
    base.VARIANTS = {k: base.VARIANTS[k] for k in ("traits only", "text 256, evidence")}

if __name__ == "__main__":
    base.main(Path(sys.argv[1]), Path(sys.argv[2]))
