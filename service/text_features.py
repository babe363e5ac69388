"""Hashed features of a reply's text: directions for what no named trait measures (issue 26).

The named traits (``service.traits``) describe ~20 style properties somebody wrote a function for.
Users also prefer things nobody anticipated: British spelling, an analogy, the answer in the first
sentence, a summary line at the end, no filler words. Each of those shows in the words a reply
uses and where it uses them, so a reply becomes a vector of hashed, signed indicators (Weinberger
et al. 2009, "Feature hashing for large scale multitask learning"):

    w:<word>      the reply uses the word (lower-cased)
    b:<w1 w2>     the reply uses the bigram
    f:<word>      the word is in the reply's first sentence
    l:<word>      the word is in the reply's last line
    p:<char>      the reply uses the punctuation mark
    s:<shape>     a line starts with a list marker, a number, a heading or a quote

each hashed into ``dim`` buckets with a sign from the same hash (so collisions cancel on average
rather than add up), presence only (a word used twice counts once). Text only: serving scores
best-of-n candidates with it without touching the model. The reward model puts these columns
beside the traits under a prior of their own (``Budgets.reward_text_precision``).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Sequence

import torch

WORD = re.compile(r"[a-z][a-z']*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s")
PUNCTUATION = "!?:;,()\"'-*#"
LINE_SHAPES = (("list", re.compile(r"^\s*[-*•]\s")), ("number", re.compile(r"^\s*\d+[.)]\s")),
               ("heading", re.compile(r"^\s*#")), ("quote", re.compile(r"^\s*>")))


def tokens(text: str) -> Iterable[str]:
    """The named indicators of ``text`` (each may repeat; ``hashed`` keeps presence)."""
    lower = text.lower()
    words = WORD.findall(lower)
    yield from (f"w:{w}" for w in words)
    yield from (f"b:{a} {b}" for a, b in zip(words, words[1:]))
    stripped = lower.strip()
    first = SENTENCE_END.split(stripped, maxsplit=1)[0] if stripped else ""
    yield from (f"f:{w}" for w in WORD.findall(first))
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    if lines:
        yield from (f"l:{w}" for w in WORD.findall(lines[-1]))
    yield from (f"p:{c}" for c in PUNCTUATION if c in text)
    for line in lines:
        yield from (f"s:{name}" for name, shape in LINE_SHAPES if shape.match(line))


def _bucket(token: str, dim: int) -> tuple[int, float]:
    h = zlib.crc32(token.encode())
    return (h >> 1) % dim, (1.0 if h & 1 else -1.0)


@functools.lru_cache(maxsize=65536)
def _hashed(text: str, dim: int) -> torch.Tensor:
    out = torch.zeros(dim)
    for token in set(tokens(text)):
        i, sign = _bucket(token, dim)
        out[i] += sign
    return out


def hashed(text: str, dim: int) -> torch.Tensor:
    """(dim,) signed presence indicators of ``text``'s tokens (memoised: PPO and the gate score the
    same replies several times; a copy, so callers may write to it)."""
    return _hashed(text, dim).clone()


def hashed_matrix(replies: Sequence[str], dim: int) -> torch.Tensor:
    """(N, dim) ``hashed`` of N replies; (N, 0) when ``dim`` is 0 (the features are off)."""
    if dim <= 0:
        return torch.zeros((len(replies), 0))
    if not replies:
        return torch.zeros((0, dim))
    return torch.stack([hashed(r, dim) for r in replies])
