"""The serving filter: a reply the harm judge flags is never shown whole (issue 27).

The judge (``service.judges``, ``ASSISTANT_SERVING_FILTER``; off by default: with the trainer's
``insults`` it cut 6.9% of ordinary and 19.4% of edgy-but-benign replies, on dual-use words such as
kill, murder, fat; docs/results/2026-12-05-safety-stage-v4) matches whole words, so the relay (``ChatService.relay``) holds back the word still being written
and scores each newly completed stretch of text (with some words before it, so a listed phrase
across the boundary is seen). When one is flagged, generation is cancelled, the flagged words are
never sent, and the reply ends with a fixed redirect instead. The stored message then has the finish
reason ``content_filter`` (OpenAI's name for it, also what ``/v1`` answers) and ``/metrics`` counts
it (``assistant_filtered_replies_total``). The evaluation's judge is a different function: what the
filter catches is not what the evaluation measures by construction.
"""

from __future__ import annotations

import re

from service.judges import DEFAULT_JUDGE_THRESHOLD, HarmJudge, make_judge
from service.settings import Settings

REDIRECT = ("I won't continue with that: it would only be hurtful. If something upset you, I can help you "
            "say it clearly and respectfully instead.")
FINISH_REASON = "content_filter"
_CONTEXT = 64  # characters of already-checked text scored again with each new stretch
_WORD_END = re.compile(r"[\s.,;:!?\"')\]]")


class ReplyFilter:
    def __init__(self, judge: HarmJudge, threshold: float = DEFAULT_JUDGE_THRESHOLD) -> None:
        self.judge, self.threshold = judge, threshold

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReplyFilter | None":
        judge = make_judge(settings.serving_filter)
        return cls(judge) if judge is not None else None

    @staticmethod
    def complete(text: str) -> int:
        """How much of ``text`` is whole words: up to the last character that ends a word."""
        for i in range(len(text) - 1, -1, -1):
            if _WORD_END.match(text[i]):
                return i + 1
        return 0

    def flags(self, text: str, start: int = 0) -> bool:
        """Whether ``text[start:]`` (with the characters just before it) is flagged."""
        return self.judge.score([text[max(0, start - _CONTEXT):]])[0] >= self.threshold

    @staticmethod
    def replace(shown: str) -> str:
        """The reply as stored and shown: what was already sent, then the redirect."""
        shown = shown.rstrip()
        return f"{shown}\n\n{REDIRECT}" if shown else REDIRECT
