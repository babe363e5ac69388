"""The charts' metric names are the ones the trainer writes (issue 29): the dashboard charted
``kl/mean`` and ``harm/rate``, keys nothing wrote, and its test seeded the same invented keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

from learning.gate import PolicyEval

METRICS_JS = Path(__file__).resolve().parents[2] / "frontend" / "metrics.js"


def test_every_charted_metric_is_one_the_gate_writes_for_every_adapter():
    text = METRICS_JS.read_text()
    charted = json.loads(re.search(r"KEY_METRICS = (\[[^\]]*\])", text).group(1).replace("'", '"'))
    written = PolicyEval(mean_reward=0.1, harm_rate=0.0, kl_per_token=0.05, n=4).as_metrics("gate/candidate")
    assert charted and set(charted) <= set(written), set(charted) - set(written)
