"""Simulated users: a hidden preference function over (prompt, reply) plus rating behaviour.

A profile's preference is a weighted sum over a fixed, documented feature set (``FEATURES``)
computed from the reply text (and, for ``relevance``, the prompt)::

    score(prompt, reply) = sum(weights[f] * FEATURES[f](prompt, reply))

Every feature is scaled to roughly [0, 1] so weights are comparable. The simulated user never
tells the service its weights: it only rates and ranks replies through the public API, the way a
person would. The same function then judges held-out replies in ``learning.sim.evaluate``.

Built-in profiles: ``concise``, ``detailed``, ``bulleted``, ``formal``, ``enthusiastic`` (users),
``helpful`` (a neutral judge for the benign-prompt helpfulness win rate; usable as a user too),
and the held-out ``casual``, ``structured``, ``curious`` (never used to tune anything: they test
whether the product learns people it was not designed around). The held-out ``direct``,
``analogies``, ``british``, ``summarised`` and ``plain`` (``NOVEL_PROFILES``) go further: each
prefers a property of the text that none of the product's reply traits (``service/traits.py``)
was written to measure.

Operators define their own in a JSON or TOML file (``load_profiles``)::

    # profiles.toml
    [profiles.terse_formal]
    description = "short and formal"
    weights = { length = -1.0, formal = 1.5, informal = -1.5, relevance = 1.0, empty = -3.0 }
    behaviour = { rate_prob = 0.9, ranking_share = 0.5, noise = 0.05, flags_harm = true }

    // profiles.json
    {"profiles": {"terse_formal": {"weights": {"length": -1.0}, "behaviour": {"noise": 0.05}}}}

Unknown features or behaviour fields, and out-of-range values, are all reported at once.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

# --- the feature set ------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+\S")
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")
REFUSAL = re.compile(
    r"\b(?:i\s+(?:can(?:'|’)?t|cannot|can not|won(?:'|’)?t|am not able to|'m not able to|am unable to|'m unable to)"
    r"\s+(?:help|assist|do|provide|comply|fulfil|fulfill|write|say|create|generate)"
    r"|i(?:'|’)?m\s+sorry,?\s+but|i\s+apologi[sz]e,?\s+but|as an ai\b[^.]*\b(?:can(?:'|’)?t|cannot|not able))",
    re.IGNORECASE,
)

INFORMAL_WORDS = frozenset(
    "hey hi yeah yep nope gonna wanna gotta kinda sorta cool awesome stuff ok okay lol btw guys dude totally "
    "super pretty basically anyway".split()
)
FORMAL_WORDS = frozenset(
    "therefore however furthermore moreover additionally consequently regarding accordingly thus hence "
    "sincerely respectfully please kindly recommend ensure appropriate approximately subsequently "
    "nevertheless whereas".split()
)
ENTHUSIASM_WORDS = frozenset(
    "great amazing awesome love fantastic wonderful excited exciting incredible fun delightful brilliant "
    "excellent perfect wow yay enjoy".split()
)
_STOPWORDS = frozenset(
    "a an the is are was were be to of in on for and or how do does i my me you your what why when where "
    "which who can could should would some give tell about with at by it this that as from".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _rate(words: list[str], vocab: frozenset[str], scale: float) -> float:
    if not words:
        return 0.0
    hits = sum(w.lower().replace("’", "'") in vocab for w in words)
    return min(1.0, scale * hits / len(words))


def _contraction_or_informal(words: list[str]) -> float:
    if not words:
        return 0.0
    hits = sum(("'" in w or "’" in w) or w.lower() in INFORMAL_WORDS for w in words)
    return min(1.0, 5.0 * hits / len(words))


def _sentences(text: str) -> int:
    return max(1, len(_SENTENCE_END.findall(text.strip() + " ")))


def _relevance(prompt: str, reply: str) -> float:
    wanted = {w.lower() for w in _words(prompt)} - _STOPWORDS
    if not wanted:
        return 0.0
    got = {w.lower() for w in _words(reply)}
    return len(wanted & got) / len(wanted)


def _nonblank_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# Properties of the text that the product's reply traits were not written for (issue 26): the
# "novel" held-out profiles prefer them, to test whether the product learns what nobody wrote a
# feature for. Defined here, for the simulator only; nothing in training reads this module.
PREAMBLE = re.compile(r"^\s*(?:sure|certainly|of course|great question|good question|absolutely|well|okay|ok|so|"
                      r"i(?:'|’)?d be (?:happy|glad)|i can help|let me|here(?:'|’)?s|here is|thank you|thanks)\b",
                      re.IGNORECASE)
ANALOGY = re.compile(r"\b(?:is like|are like|like a|like an|as if|as though|think of|imagine|similar to|just as|"
                     r"the same way|picture a|picture an|akin to|compare it to)\b", re.IGNORECASE)
SUMMARY_LINE = re.compile(r"^\W*(?:in short|in summary|to sum up|summary|tl;?dr|bottom line|in a nutshell|"
                          r"overall|in brief)\b", re.IGNORECASE)
BRITISH = re.compile(r"\b(?:colour|flavour|favour|favourite|behaviour|honour|neighbour|labour|humour|harbour|"
                     r"centre|metre|litre|theatre|fibre|grey|whilst|amongst|programme|travelled|travelling|"
                     r"cancelled|jewellery|cheque|tyre|aluminium|mum|maths|"
                     r"\w+is(?:e|es|ed|ing|ation|ations))\b", re.IGNORECASE)
AMERICAN = re.compile(r"\b(?:color|flavor|favor|favorite|behavior|honor|neighbor|labor|humor|harbor|"
                      r"center|liter|theater|fiber|gray|traveled|traveling|canceled|jewelry|"
                      r"aluminum|mom|\w+iz(?:e|es|ed|ing|ation|ations))\b", re.IGNORECASE)
# -ise and -ize words spelt so on both sides of the Atlantic: they say nothing about the writer
BOTH_SPELLINGS = frozenset(
    "raise praise arise rise otherwise likewise clockwise wise advise devise revise supervise televise improvise "
    "exercise promise premise compromise surprise enterprise expertise merchandise advertise franchise paradise "
    "concise precise disguise despise noise poise cruise bruise chemise treatise size prize seize capsize "
    "maize baize".split())
FILLER_WORDS = frozenset("basically actually really very just literally quite simply totally definitely honestly "
                         "essentially certainly truly obviously clearly surely".split())


def _first_sentence_answers(prompt: str, reply: str) -> float:
    """1 if the reply's first sentence is short, skips the preamble and names what was asked."""
    text = reply.strip()
    if not text:
        return 0.0
    first = re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]
    words = _words(first)
    if not words or PREAMBLE.match(first):
        return 0.0
    short = 1.0 if len(words) <= 20 else 0.5
    return short * (1.0 if _relevance(prompt, first) > 0 else 0.5)


def _spelling(reply: str) -> float:
    """(British - American spellings) / both, in [-1, 1]; 0 when the reply has neither."""
    def count(pattern: re.Pattern) -> int:
        return sum(m.group(0).lower().rstrip("sd") not in BOTH_SPELLINGS and m.group(0).lower() not in BOTH_SPELLINGS
                   for m in pattern.finditer(reply))

    b, a = count(BRITISH), count(AMERICAN)
    return (b - a) / (b + a) if b + a else 0.0


def _summary_line(reply: str) -> float:
    lines = _nonblank_lines(reply)
    if len(lines) < 2:
        return 0.0
    last = lines[-1]
    return 1.0 if SUMMARY_LINE.match(last) and len(_words(last)) <= 30 else 0.0


# name -> (description, function(prompt, reply) -> float). The order is the documented order.
FEATURES: dict[str, tuple[str, Callable[[str, str], float]]] = {
    "length": ("words in the reply / 100, capped at 3",
               lambda p, r: min(len(_words(r)), 300) / 100.0),
    "empty": ("1 if the reply has fewer than 4 words (an empty or broken reply), else 0",
              lambda p, r: 1.0 if len(_words(r)) < 4 else 0.0),
    "bullets": ("share of non-blank lines that are list items ('- ', '* ', '1. ')",
                lambda p, r: (sum(bool(_LIST_ITEM.match(ln)) for ln in _nonblank_lines(r)) / len(_nonblank_lines(r)))
                if _nonblank_lines(r) else 0.0),
    "exclamations": ("exclamation marks per sentence, capped at 1",
                     lambda p, r: min(1.0, r.count("!") / _sentences(r))),
    "informal": ("5 x share of words that are contractions or informal words (yeah, gonna, cool), capped at 1",
                 lambda p, r: _contraction_or_informal(_words(r))),
    "formal": ("10 x share of formal connectives (therefore, however, furthermore, kindly), capped at 1",
               lambda p, r: _rate(_words(r), FORMAL_WORDS, 10.0)),
    "enthusiasm": ("10 x share of enthusiastic words (great, amazing, love), capped at 1",
                   lambda p, r: _rate(_words(r), ENTHUSIASM_WORDS, 10.0)),
    "emoji": ("emoji count / 3, capped at 1",
              lambda p, r: min(3, len(_EMOJI.findall(r))) / 3.0),
    "questions": ("question marks / 3, capped at 1",
                  lambda p, r: min(3, r.count("?")) / 3.0),
    "paragraphs": ("blank-line separated blocks / 5, capped at 1",
                   lambda p, r: min(5, len([b for b in re.split(r"\n\s*\n", r) if b.strip()])) / 5.0),
    "sentence_length": ("mean words per sentence / 30, capped at 1",
                        lambda p, r: min(1.0, len(_words(r)) / _sentences(r) / 30.0)),
    "relevance": ("share of the prompt's content words that the reply repeats",
                  _relevance),
    "refusal": ("1 if the reply refuses (\"I can't help\", \"I'm sorry, but\"), else 0",
                lambda p, r: 1.0 if REFUSAL.search(r) else 0.0),
    "answer_first": ("1 if the first sentence is short (20 words or fewer), names something the prompt asked about "
                     "and does not open with a preamble (\"Sure\", \"Great question\", \"I'd be happy to\"); "
                     "0.5 for half of that", _first_sentence_answers),
    "analogy": ("analogies (\"is like\", \"imagine\", \"think of\", \"just as\") / 2, capped at 1",
                lambda p, r: min(2, len(ANALOGY.findall(r))) / 2.0),
    "british": ("(British - American spellings) / both: colour, centre, -ise vs color, center, -ize; in [-1, 1]",
                lambda p, r: _spelling(r)),
    "summary_line": ("1 if the last of two or more lines is a one-line summary (\"In short\", \"TL;DR\", "
                     "\"Overall\")", lambda p, r: _summary_line(r)),
    "filler": ("10 x share of filler words (basically, actually, really, very, just, literally), capped at 1",
               lambda p, r: _rate(_words(r), FILLER_WORDS, 10.0)),
}


def features(prompt: str, reply: str) -> dict[str, float]:
    """Every feature of ``FEATURES`` for one (prompt, reply)."""
    return {name: fn(prompt, reply) for name, (_, fn) in FEATURES.items()}


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text))


# --- profiles ------------------------------------------------------------------------------------


class ProfileError(ValueError):
    """A profile definition is invalid; the message lists every problem and the fix."""


@dataclass(frozen=True)
class Behaviour:
    rate_prob: float = 0.9
    """Chance that a thumbs-mode turn gets a rating at all."""

    ranking_share: float = 0.4
    """Share of turns where the user asks for ``alternatives`` replies and ranks them
    (POST /api/rankings) instead of rating one reply with a thumb."""

    alternatives: int = 2
    """Replies asked for in a ranking turn (2..the server's ASSISTANT_MAX_ALTERNATIVES)."""

    noise: float = 0.1
    """Share of votes that are random: a thumb flipped, or a ranking shuffled."""

    flags_harm: bool = True
    """Whether the user thumbs down harmful replies with reason "harmful"/"offensive"
    (as judged by the simulation's harm judge), whatever their preference says."""

    up_threshold: float | None = None
    """A thumbs-mode reply gets thumbs up when its score is at least this; None = the running
    median of this user's own recent scores (so about half their thumbs are up)."""

    red_team_share: float = 0.15
    """Share of this user's turns that use a provocative prompt (``prompts.RED_TEAM_TRAIN``)."""

    def problems(self, where: str) -> list[str]:
        out = []
        for name in ("rate_prob", "ranking_share", "noise", "red_team_share"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                out.append(f"{where}.behaviour.{name} must be a number between 0 and 1 (got {v!r})")
        if not isinstance(self.alternatives, int) or not 2 <= self.alternatives <= 8:
            out.append(f"{where}.behaviour.alternatives must be an integer from 2 to 8 (got {self.alternatives!r})")
        if self.up_threshold is not None and not isinstance(self.up_threshold, (int, float)):
            out.append(f"{where}.behaviour.up_threshold must be a number or omitted (got {self.up_threshold!r})")
        return out


@dataclass(frozen=True)
class Profile:
    name: str
    weights: Mapping[str, float]
    behaviour: Behaviour = field(default_factory=Behaviour)
    description: str = ""
    up_reasons: tuple[str, ...] = ("helpful",)
    """Reasons sent with a thumbs up (must be in GET /api/feedback/reasons)."""
    down_reasons: tuple[str, ...] = ("unhelpful",)
    """Reasons sent with a (non-harm) thumbs down."""

    def score(self, prompt: str, reply: str) -> float:
        """The hidden preference: higher is better for this user."""
        f = features(prompt, reply)
        return sum(w * f[name] for name, w in self.weights.items())

    def prefers(self, prompt: str, a: str, b: str) -> float:
        """1.0 if ``a`` beats ``b`` under this profile, 0.5 on a tie, else 0.0."""
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        if math.isclose(sa, sb, rel_tol=1e-9, abs_tol=1e-9):
            return 0.5
        return 1.0 if sa > sb else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "weights": dict(self.weights),
                "behaviour": {f.name: getattr(self.behaviour, f.name) for f in fields(Behaviour)},
                "up_reasons": list(self.up_reasons), "down_reasons": list(self.down_reasons)}


# Every built-in profile punishes empty replies and rewards staying on topic, so "say nothing"
# never wins; what differs is the style each one wants.
BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("concise", {"length": -1.5, "empty": -3.0, "relevance": 1.0, "paragraphs": -0.5},
                description="short, to-the-point replies", up_reasons=("concise",), down_reasons=("too_long",)),
        Profile("detailed", {"length": 1.5, "paragraphs": 0.5, "empty": -3.0, "relevance": 1.0},
                description="long, thorough replies", up_reasons=("detailed",), down_reasons=("too_short",)),
        Profile("bulleted", {"bullets": 3.0, "empty": -3.0, "relevance": 1.0},
                description="replies formatted as bulleted or numbered lists",
                up_reasons=("well_formatted",), down_reasons=("unhelpful",)),
        Profile("formal", {"formal": 2.0, "informal": -2.0, "exclamations": -1.0, "emoji": -1.0,
                           "sentence_length": 0.5, "empty": -3.0, "relevance": 1.0},
                description="formal tone: no contractions, slang or exclamations",
                up_reasons=("helpful",), down_reasons=("unhelpful",)),
        Profile("enthusiastic", {"exclamations": 2.0, "enthusiasm": 2.0, "emoji": 1.0, "informal": 0.5,
                                 "empty": -3.0, "relevance": 1.0},
                description="upbeat replies with exclamation marks and warm words",
                up_reasons=("friendly",), down_reasons=("unhelpful",)),
        Profile("helpful", {"relevance": 2.0, "empty": -3.0, "refusal": -2.0, "length": 0.3},
                description="neutral helpfulness: on topic, not refusing, some substance",
                up_reasons=("helpful",), down_reasons=("unhelpful",)),
        # Held out (``HELDOUT_PROFILES``): added after the reward model, the synthetic-free basis and
        # every budget were chosen, and never used to tune any of them: the generalisation test.
        Profile("casual", {"informal": 2.0, "emoji": 0.5, "formal": -1.5, "length": -0.5, "empty": -3.0, "relevance": 1.0},
                description="relaxed, chatty replies: contractions and everyday words, not stiff",
                up_reasons=("friendly",), down_reasons=("unhelpful",)),
        Profile("structured", {"paragraphs": 2.0, "bullets": 1.0, "sentence_length": -1.0, "empty": -3.0, "relevance": 1.0},
                description="replies broken into short paragraphs and short sentences",
                up_reasons=("well_formatted",), down_reasons=("unhelpful",)),
        Profile("curious", {"questions": 2.0, "length": 0.5, "exclamations": -0.5, "empty": -3.0, "relevance": 1.0},
                description="replies that ask a follow-up question back",
                up_reasons=("helpful",), down_reasons=("unhelpful",)),
        # Held out as well, and of another kind (``NOVEL_PROFILES``, issue 26): each prefers a property
        # of the text that none of the product's reply traits was written to measure. Written without
        # looking at the traits, never used to tune anything, reported apart.
        Profile("direct", {"answer_first": 2.0, "empty": -3.0, "relevance": 0.5},
                description="the answer in the first sentence, no preamble", up_reasons=("concise",),
                down_reasons=("unhelpful",)),
        Profile("analogies", {"analogy": 2.0, "empty": -3.0, "relevance": 0.5},
                description="explanations through analogies and comparisons", up_reasons=("creative",),
                down_reasons=("unhelpful",)),
        Profile("british", {"british": 2.0, "empty": -3.0, "relevance": 0.5},
                description="British spelling (colour, centre, organise), not American",
                up_reasons=("accurate",), down_reasons=("inaccurate",)),
        Profile("summarised", {"summary_line": 2.0, "empty": -3.0, "relevance": 0.5},
                description="a one-line summary at the end", up_reasons=("well_formatted",),
                down_reasons=("unhelpful",)),
        Profile("plain", {"filler": -2.0, "empty": -3.0, "relevance": 0.5},
                description="no filler words (basically, actually, really, just)", up_reasons=("concise",),
                down_reasons=("unhelpful",)),
    )
}
USER_PROFILES = ("concise", "detailed", "bulleted", "formal", "enthusiastic")
HELDOUT_PROFILES = ("casual", "structured", "curious")
NOVEL_PROFILES = ("direct", "analogies", "british", "summarised", "plain")


def profile_from_dict(name: str, spec: Mapping[str, Any], problems: list[str]) -> Profile | None:
    """Build one profile from a parsed JSON/TOML table; append what is wrong to ``problems``."""
    where = f"profiles.{name}"
    if not isinstance(spec, Mapping):
        problems.append(f"{where} must be a table/object with 'weights' (and optionally 'behaviour')")
        return None
    unknown_keys = sorted(set(spec) - {"weights", "behaviour", "description", "up_reasons", "down_reasons"})
    if unknown_keys:
        problems.append(f"{where} has unknown keys {unknown_keys}; allowed: weights, behaviour, description, up_reasons, down_reasons")
    weights = spec.get("weights")
    if not isinstance(weights, Mapping) or not weights:
        problems.append(f"{where}.weights must be a non-empty table of feature -> number; features: {', '.join(FEATURES)}")
        weights = {}
    bad_feats = sorted(set(weights) - set(FEATURES))
    if bad_feats:
        problems.append(f"{where}.weights names unknown features {bad_feats}; known: {', '.join(FEATURES)}")
    bad_vals = [k for k, v in weights.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad_vals:
        problems.append(f"{where}.weights values must be numbers ({bad_vals})")
    raw_b = spec.get("behaviour", {}) or {}
    allowed = {f.name for f in fields(Behaviour)}
    bad_b = sorted(set(raw_b) - allowed) if isinstance(raw_b, Mapping) else ["<not a table>"]
    if bad_b:
        problems.append(f"{where}.behaviour has unknown fields {bad_b}; allowed: {', '.join(sorted(allowed))}")
        raw_b = {}
    behaviour = Behaviour(**{k: v for k, v in raw_b.items() if k in allowed})
    problems.extend(behaviour.problems(where))
    from service.models import NEGATIVE_REASONS, POSITIVE_REASONS

    up = tuple(spec.get("up_reasons", ("helpful",)))
    down = tuple(spec.get("down_reasons", ("unhelpful",)))
    if set(up) - set(POSITIVE_REASONS):
        problems.append(f"{where}.up_reasons must be among {list(POSITIVE_REASONS)}")
    if set(down) - set(NEGATIVE_REASONS):
        problems.append(f"{where}.down_reasons must be among {list(NEGATIVE_REASONS)}")
    if bad_feats or bad_vals:
        return None
    return Profile(name, {k: float(v) for k, v in weights.items()}, behaviour, str(spec.get("description", "")), up, down)


def load_profiles(path: Path) -> dict[str, Profile]:
    """Read operator profiles from a ``.json`` or ``.toml`` file (top-level table ``profiles``)."""
    if not path.is_file():
        raise ProfileError(f"profile file {path} not found")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"profile file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc
    table = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise ProfileError(f"profile file {path} needs a top-level 'profiles' table of name -> profile")
    problems: list[str] = []
    out = {}
    for name, spec in table.items():
        prof = profile_from_dict(name, spec, problems)
        if prof is not None:
            out[name] = prof
    if problems:
        raise ProfileError(f"invalid profiles in {path}:\n  - " + "\n  - ".join(problems))
    return out


def resolve_profiles(names: list[str], extra: Mapping[str, Profile] | None = None) -> list[Profile]:
    """Profiles by name, from the operator's file first, then the built-ins."""
    known = {**BUILTIN_PROFILES, **(extra or {})}
    missing = [n for n in names if n not in known]
    if missing:
        raise ProfileError(f"unknown profiles {missing}; known: {', '.join(sorted(known))} (add your own with --profiles-file)")
    return [known[n] for n in names]


# --- behaviour -----------------------------------------------------------------------------------


class Rater:
    """One simulated user's voting: turns scores into thumbs and rankings, with noise.

    Keeps the user's recent scores for the running-median thumbs threshold.
    """

    def __init__(self, profile: Profile, rng: random.Random, window: int = 50) -> None:
        self.profile, self.rng, self.window = profile, rng, window
        self.history: list[float] = []

    def thumb(self, score: float) -> bool:
        """True = thumbs up."""
        threshold = self.profile.behaviour.up_threshold
        if threshold is None:
            threshold = statistics.median(self.history) if self.history else score
            up = score > threshold or (not self.history)  # the first reply of a user sets the bar
        else:
            up = score >= threshold
        self.history = (self.history + [score])[-self.window:]
        if self.rng.random() < self.profile.behaviour.noise:
            up = not up
        return up

    def rank(self, prompt: str, replies: list[str]) -> list[int]:
        """Indices of ``replies``, best first (shuffled with probability ``noise``)."""
        order = sorted(range(len(replies)), key=lambda i: -self.profile.score(prompt, replies[i]))
        if self.rng.random() < self.profile.behaviour.noise:
            self.rng.shuffle(order)
        return order
