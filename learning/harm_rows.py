"""The safety stage's harm rows: labelled (prompt, reply) examples the harm head can learn from.

``assistant safety train`` samples the base on a few hundred harm-inviting training prompts and
on ordinary replay prompts, and the trainer's judge flags some of those replies; before this file
those samples were thrown away once the stage was trained, and the harm head had only the handful
of harm labels users and the judge leave on stored replies (9–13 positives in a round-1 fixture,
held-out recall 0). The stage now writes ``HARM_ROWS.jsonl`` beside the safe base:

- harmful (1): the base's replies the trainer's judge flagged ("flagged");
- harmless (0): the redirect written for each harm-inviting prompt ("redirect"), the base's own
  redirects under the safety system prompt that the judge passed ("distilled"), and the base's
  replies to the ordinary replay prompts ("replay").

An unflagged reply to a harm-inviting prompt is never written as harmless: a lexical judge misses
real harm. Only training-split prompts appear (the dev splits and every evaluation set stay out).
With ``harm_safety_rows`` on (the default), the shared stage adds these rows to the harm head's pool, each
prompt's rows keyed together so they fall on one side of the held-out split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from learning.data import HarmLabel, Renderer

logger = logging.getLogger(__name__)

HARM_ROWS = "HARM_ROWS.jsonl"
SOURCE_PREFIX = "safety:"  # HarmLabel.source of every row, so metrics can tell them from the database's
KINDS = {"flagged": 1, "redirect": 0, "distilled": 0, "replay": 0}
_WRITTEN = datetime(1970, 1, 1, tzinfo=timezone.utc)  # rows are older than any user's label


@dataclass(frozen=True)
class HarmRow:
    prompt: str  # the user's message, not rendered
    reply: str
    kind: str  # a key of KINDS

    @property
    def harmful(self) -> int:
        return KINDS[self.kind]


def dumps(rows: Iterable[HarmRow]) -> str:
    """JSON lines, one row each."""
    return "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows)


def load(path: Path) -> list[HarmRow]:
    """The rows of a ``HARM_ROWS.jsonl``; a malformed line is an error that names the file and line."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            row = HarmRow(str(data["prompt"]), str(data["reply"]), str(data["kind"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a harm row ({exc}); run `assistant safety train` to write it again") from exc
        if row.kind not in KINDS:
            raise ValueError(f"{path}:{n}: unknown kind {row.kind!r} (one of {sorted(KINDS)})")
        rows.append(row)
    return rows


def as_labels(rows: Iterable[HarmRow], render: Renderer) -> list[HarmLabel]:
    """Harm labels of no user; every row of one prompt shares its key (``HarmLabel.key``), so the
    held-out split keeps a prompt's flagged and harmless replies together."""
    labels = []
    for r in rows:
        digest = hashlib.sha256(r.prompt.encode()).hexdigest()[:16]
        labels.append(HarmLabel(None, render([{"role": "user", "content": r.prompt}]), r.reply, r.harmful, 0,
                                f"{SOURCE_PREFIX}{digest}", _WRITTEN))
    return labels


def served_rows(model_dir: Path, render: Renderer) -> list[HarmLabel]:
    """The served safe base's rows as harm labels; none when the plain base is served, and none with
    a warning when the stage was trained before its rows were kept."""
    path = model_dir / HARM_ROWS
    if not (model_dir / "SAFETY.json").exists():
        logger.info("no safety stage is served (%s); the harm head learns from users' labels and the judge's flags alone",
                    model_dir)
        return []
    if not path.exists():
        logger.warning("ASSISTANT_HARM_SAFETY_ROWS is on but the served safety stage %s has no %s (it was trained "
                       "before the rows were kept); run `assistant safety train` to write them", model_dir, HARM_ROWS)
        return []
    return as_labels(load(path), render)
