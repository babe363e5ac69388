"""Reply traits: a small, named, human-readable description of how a reply is written.

People's preferences over chat replies vary most along a handful of style dimensions -- length,
layout (lists, paragraphs, headings, code), tone (formal, casual, warm, exclamatory), whether it
answers or refuses, whether it stays on the question. Chatbot Arena's "style control" regresses
human votes on exactly such covariates (length and markdown counts); PReF/LoRe learn a shared
low-rank basis of preference directions so that each user needs only a few weights. This module
is the interpretable half of that basis: each trait is one number per (prompt, reply), roughly in
[0, 1], with a name and a sentence a user can read ("what the assistant learned about you").

The other half is learned: directions of the frozen backbone's features (``learning.reward``).

Used by training (the reward basis) and by serving (personal best-of-n). Written for this project
from the general literature on reply style; it deliberately shares no
code or word list with the simulation's judges (``learning.sim.profiles``), which must never
reach training.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch

_TOKEN = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_SENT = re.compile(r"[^.!?\n]+[.!?]*")
_LIST_LINE = re.compile(r"^\s*(?:[-*•·+]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S|\*\*[^*\n]{2,60}\*\*:?\s*$|[A-Z][^.!?\n]{1,50}:\s*$)")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B50\u2764]")
_APOLOGY = re.compile(
    r"\b(?:sorry|apologi[sz]e|unfortunately|can(?:not|['’]t)\s+(?:help|assist|provide|do|answer)|"
    r"(?:unable|not able)\s+to|won['’]t\s+be\s+able|as an (?:ai|assistant|language model))\b", re.IGNORECASE)

# Word lists written for this module (a reader's notion of each register, not the simulation's).
_CASUAL = frozenset("""
yeah yep yup nah nope hey hiya gonna gotta wanna kinda sorta lots cool neat awesome stuff things
ok okay alright totally basically literally really pretty super guess thing lol haha dude folks
""".split())
_FORMAL = frozenset("""
therefore thus hence furthermore moreover additionally consequently accordingly nevertheless
nonetheless whereas regarding concerning subsequently approximately ensure appropriate
recommend recommended kindly respectfully indeed notably particularly specifically considerable
significant significantly essential sufficient facilitate utilize utilise obtain require
""".split())
_WARM = frozenset("""
great amazing wonderful fantastic love lovely happy glad delighted excited exciting enjoy fun
brilliant awesome excellent perfect beautiful joy cheerful thrilled superb incredible terrific
""".split())
_HEDGE = frozenset("""
might may perhaps possibly probably likely generally usually often typically somewhat maybe
depends approximately roughly suggest
""".split())
_STOP = frozenset("""
a an the is are was were be been to of in on for and or but how do does did i me my you your
what why when where which who whom can could should would will it its this that these those as
from with at by about into than then so if not no yes some any give tell explain please
""".split())


def _tokens(text: str) -> list[str]:
    return [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]


def _share(tokens: Sequence[str], vocab: frozenset[str], scale: float) -> float:
    if not tokens:
        return 0.0
    return min(1.0, scale * sum(t in vocab for t in tokens) / len(tokens))


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENT.findall(text) if _TOKEN.search(s)]


def _overlap(prompt: str, reply: str) -> float:
    asked = {t for t in _tokens(prompt) if t not in _STOP and len(t) > 2}
    if not asked:
        return 0.0
    return len(asked & set(_tokens(reply))) / len(asked)


def _list_share(reply: str) -> float:
    lines = _lines(reply)
    return sum(bool(_LIST_LINE.match(ln)) for ln in lines) / len(lines) if lines else 0.0


def _mean_sentence_words(reply: str) -> float:
    sents = _sentences(reply)
    if not sents:
        return 0.0
    return min(1.0, sum(len(_TOKEN.findall(s)) for s in sents) / len(sents) / 40.0)


def _exclaim(reply: str) -> float:
    return min(1.0, reply.count("!") / max(1, len(_sentences(reply))))


def _contractions(tokens: Sequence[str]) -> float:
    if not tokens:
        return 0.0
    return min(1.0, 8.0 * sum("'" in t for t in tokens) / len(tokens))


# name -> (what it measures, in words a user reads; f(prompt, reply) -> float in about [0, 1]).
TRAITS: dict[str, tuple[str, Callable[[str, str], float]]] = {
    "length": ("longer replies", lambda p, r: min(1.0, math.log1p(len(_tokens(r))) / math.log1p(400))),
    "very_short": ("very short replies (under 15 words)", lambda p, r: 1.0 if len(_tokens(r)) < 15 else 0.0),
    "lists": ("bulleted or numbered lists", lambda p, r: _list_share(r)),
    "headings": ("headings and bold labels", lambda p, r: min(1.0, sum(bool(_HEADING.match(ln)) for ln in _lines(r)) / 3)),
    "paragraphs": ("several paragraphs", lambda p, r: min(1.0, (len([b for b in re.split(r"\n\s*\n", r) if b.strip()]) - 1) / 4)),
    "line_breaks": ("many short lines", lambda p, r: min(1.0, max(0, len(_lines(r)) - 1) / 8)),
    "sentence_length": ("long sentences", lambda p, r: _mean_sentence_words(r)),
    "exclamations": ("exclamation marks", lambda p, r: _exclaim(r)),
    "questions": ("questions back to you", lambda p, r: min(1.0, r.count("?") / 2)),
    "emoji": ("emoji", lambda p, r: min(1.0, len(_EMOJI.findall(r)) / 2)),
    "casual": ("casual words", lambda p, r: _share(_tokens(r), _CASUAL, 8.0)),
    "contractions": ("contractions (don't, it's)", lambda p, r: _contractions(_tokens(r))),
    "formal": ("formal wording (therefore, moreover)", lambda p, r: _share(_tokens(r), _FORMAL, 12.0)),
    "warm": ("warm, upbeat words", lambda p, r: _share(_tokens(r), _WARM, 12.0)),
    "hedging": ("hedged, cautious wording", lambda p, r: _share(_tokens(r), _HEDGE, 12.0)),
    "on_topic": ("staying on the words of your question", _overlap),
    "apology": ("refusals and apologies", lambda p, r: 1.0 if _APOLOGY.search(r) else 0.0),
    "numbers": ("figures and numbers", lambda p, r: min(1.0, len(re.findall(r"\d+", r)) / 5)),
    "code": ("code blocks", lambda p, r: 1.0 if "```" in r or re.search(r"^( {4}|\t)\S", r, re.M) else 0.0),
    "first_person": ("the assistant talking about itself (I, me)",
                     lambda p, r: _share(_tokens(r), frozenset({"i", "me", "my", "i'm", "i've", "i'd", "i'll"}), 10.0)),
}
NAMES: tuple[str, ...] = tuple(TRAITS)


def describe(name: str) -> str:
    return TRAITS[name][0]


def trait_vector(prompt: str, reply: str) -> list[float]:
    """Every trait of one (prompt, reply), in ``NAMES`` order."""
    return [float(fn(prompt, reply)) for _, fn in TRAITS.values()]


def trait_matrix(prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
    """(N, len(NAMES)) traits of N (prompt, reply) pairs."""
    if not prompts:
        return torch.zeros((0, len(NAMES)))
    return torch.tensor([trait_vector(p, r) for p, r in zip(prompts, replies)], dtype=torch.float32)


def user_text(prompt: str) -> str:
    """The last user turn of a rendered chat prompt (what ``on_topic`` compares with); the whole
    prompt when it has no chat-template markers."""
    for marker in ("<|im_start|>user\n", "<|user|>\n", "[INST]"):
        if marker in prompt:
            tail = prompt.rsplit(marker, 1)[1]
            for end in ("<|im_end|>", "</s>", "[/INST]"):
                tail = tail.split(end, 1)[0]
            return tail
    return prompt
