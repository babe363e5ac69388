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


def text_block(replies: Sequence[str], mu: torch.Tensor, proj: torch.Tensor | None = None) -> torch.Tensor:
    """The reward's text columns for N replies: their ``hashed`` features (``len(mu)`` buckets) centred on ``mu``,
    then projected on ``proj``'s K directions ((H, K), each scaled to unit spread over the training replies) when it
    has any; without (None or K = 0) every bucket is its own column. (N, 0) when ``mu`` is empty (the text is off)."""
    x = hashed_matrix(replies, int(mu.shape[0])) - mu  # (N, H)
    return x @ proj if proj is not None and proj.numel() else x


def text_directions(replies: Sequence[str], mu: torch.Tensor, k: int) -> torch.Tensor:
    """(H, K) the top-``k`` principal directions of the ``replies``' centred hashed features, each divided by its
    spread over them (so a projected column has unit standard deviation, like a standardised trait): a text basis
    a user with a few dozen labels can fit K weights on instead of H. (H, 0) when there is nothing to project."""
    h = int(mu.shape[0])
    k = max(0, min(k, len(replies) - 1, h))
    if not k:
        return torch.zeros((h, 0))
    x = hashed_matrix(replies, h) - mu  # (N, H)
    _, spread, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: directions, by variance
    k = int((spread[:k] > 1e-4 * spread[0]).sum()) if float(spread[0]) > 0 else 0  # none the replies do not vary along
    if not k:
        return torch.zeros((h, 0))
    directions = v[:k].T  # (H, K)
    return (directions / (x @ directions).std(0).clamp(min=1e-4)).contiguous()


def projection_to_state(proj: torch.Tensor) -> list:
    """``text_directions``' (H, K) as JSON: [] when there is no projection (K = 0)."""
    return proj.tolist() if proj.numel() else []


def projection_from_state(values: list | None, buckets: int) -> torch.Tensor:
    """``text_directions``' (H, K) from its JSON list; a reward stored before the text basis (or without it): (H, 0)."""
    t = torch.tensor(values or [], dtype=torch.float32)
    return t.reshape(buckets, -1) if t.numel() else torch.zeros((buckets, 0))
