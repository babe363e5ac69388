"""A text basis shared by everyone (issue 26, item 2): the reward's hashed text block projected on its top-K
principal directions over the training replies (``ASSISTANT_REWARD_TEXT_BASIS``), against the default
(256 buckets, each its own column, under the evidence prior) and traits only.

    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-07-text-basis/run.py data/fixtures/all docs/results/2026-12-07-text-basis

The measurement, the data, the raters and the record part are those of ``../2026-12-05-text-reward/run.py``
(this script imports it, as ``../2026-12-05-text-evidence/run.py`` did): sibling-pair accuracy on the frozen
round-1 fixture's stored replies, 60 synthetic raters plus the five tuning profiles, at 24 and 72 pairs per user;
then, for the record only, traits only against the variant the rule picks on the held-out and novel profiles.
Only the variants and the rule (RULE.md, written before the run) differ."""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("text_reward_run", HERE.parent / "2026-12-05-text-reward" / "run.py")
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)

DEFAULT = "text 256, evidence (the default)"
base.VARIANTS = {
    "traits only": {},
    DEFAULT: dict(reward_text_features=256, reward_text_evidence=True),
    "text basis 8, evidence": dict(reward_text_features=256, reward_text_basis=8, reward_text_evidence=True),
    "text basis 16, evidence": dict(reward_text_features=256, reward_text_basis=16, reward_text_evidence=True),
    "text basis 32, evidence": dict(reward_text_features=256, reward_text_basis=32, reward_text_evidence=True),
    "text basis 16, precision 1": dict(reward_text_features=256, reward_text_basis=16, reward_text_precision=1.0,
                                       reward_text_evidence=False),
}
if base.SMOKE:
    base.VARIANTS = {k: base.VARIANTS[k] for k in ("traits only", "text basis 8, evidence")}


def choose(reports: dict) -> str:
    """RULE.md: among the text-basis variants whose tuning mean at 24 pairs is within 0.01 of traits only, the one
    with the highest synthetic-rater accuracy at 24 pairs; it is reported against the default."""
    floor = base._mean(reports["traits only"], base.TUNING, base.SIZES[0]) - 0.01
    ok = [n for n in reports if n.startswith("text basis") and base._mean(reports[n], base.TUNING, base.SIZES[0]) >= floor]
    if not ok:
        return DEFAULT if DEFAULT in reports else "traits only"
    return max(ok, key=lambda n: reports[n]["synthetic_raters"]["sizes"][str(base.SIZES[0])]["accuracy"][0])


base.choose = choose
base.RECORD_ALSO = (DEFAULT,) if DEFAULT in base.VARIANTS else ()

if __name__ == "__main__":
    base.main(Path(sys.argv[1]), Path(sys.argv[2]))
