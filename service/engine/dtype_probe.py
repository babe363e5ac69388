"""Pick the serving dtype by measuring it on this machine (``ASSISTANT_DTYPE=auto``).

Machines of the same kind differ: on a CPU with AVX-512 BF16 a bfloat16 matmul of this
model's shapes is faster than float32, on one without it ~55x slower. So at start the
engine times the real forward pass in each candidate dtype (a few decode steps of a small
batch through ``LlamaRunner``) and checks that the faster one still agrees with float32:
greedy tokens on a few prompts must match float32's for their first ``agree_tokens``
tokens on most prompts. The faster dtype that agrees wins; float32 is the fallback. The
report (timings, agreement, the choice and why) goes to the logs and ``/healthz``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch

from service.engine.runner import LlamaRunner

logger = logging.getLogger(__name__)

PROBE_PROMPTS = ["Explain what a hash table is.", "Write a short poem about the sea.", "How do plants make food?"]


@dataclass(frozen=True)
class Float32Reference:
    """float32's greedy tokens on the probe prompts and their log-probabilities: what every faster
    variant is checked against (the dtype probe computes it; the int8 probe reuses it)."""

    tokens: list[list[int]]
    logprobs: list[list[float]]


@dataclass
class DtypeReport:
    chosen: str
    reason: str
    decode_ms: dict[str, float] = field(default_factory=dict)  # per decode step of the probe batch
    agreement: dict[str, float] = field(default_factory=dict)  # share of prompts whose greedy prefix matches float32
    probe_seconds: float = 0.0
    reference: Float32Reference | None = field(default=None, repr=False)  # not reported

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "reference"}


def _greedy(runner: LlamaRunner, prompt: list[int], n: int, logprobs: list[float] | None = None) -> list[int]:
    """``n`` greedy tokens after ``prompt``; their log-probabilities appended to ``logprobs`` when given."""
    logits = runner.extend([prompt], [0], first_row=0, use_lora=False)
    out: list[int] = []
    length = len(prompt)
    for i in range(n):
        if i:
            logits = runner.decode(torch.tensor([out[-1]]), torch.tensor([length]), use_lora=False)
            length += 1
        out.append(int(logits[0].argmax()))
        if logprobs is not None:
            logprobs.append(float(torch.log_softmax(logits[0].float(), -1)[out[-1]]))
    return out


def float32_reference(runner: LlamaRunner, prompts: list[list[int]], n: int) -> Float32Reference:
    """Greedy tokens and their log-probabilities under a float32 ``runner``."""
    logprobs: list[list[float]] = [[] for _ in prompts]
    return Float32Reference([_greedy(runner, p, n, lp) for p, lp in zip(prompts, logprobs)], logprobs)


def _decode_ms(runner: LlamaRunner, prompt: list[int], rows: int, steps: int) -> float:
    runner.extend([prompt] * rows, [0] * rows, first_row=0, use_lora=False)
    tokens = torch.zeros(rows, dtype=torch.long)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        runner.decode(tokens, torch.full((rows,), len(prompt) + i), use_lora=False)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2]


def _prompt_ids(tokenizer, text: str) -> list[int]:
    enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)


def choose_dtype(model, tokenizer, *, candidates: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                 rows: int = 8, steps: int = 6, agree_tokens: int = 8, min_speedup: float = 1.1) -> tuple[torch.dtype, DtypeReport]:
    """Time each candidate dtype on the real forward pass; return the fastest that agrees with float32."""
    t_start = time.perf_counter()
    prompts = [_prompt_ids(tokenizer, p) for p in PROBE_PROMPTS]
    timings: dict[torch.dtype, float] = {}
    greedy: dict[torch.dtype, list[list[int]]] = {}
    reference: Float32Reference | None = None
    problems: dict[str, str] = {}
    with torch.inference_mode():
        for dt in candidates:
            try:
                runner = LlamaRunner(model, max_rows=rows, dtype=dt, initial_capacity=64)
                timings[dt] = _decode_ms(runner, prompts[0], rows, steps)
                if dt == torch.float32:
                    reference = float32_reference(runner, prompts, agree_tokens)
                    greedy[dt] = reference.tokens
                else:
                    greedy[dt] = [_greedy(runner, p, agree_tokens) for p in prompts]
            except (RuntimeError, TypeError) as exc:  # a dtype this device cannot run
                problems[str(dt)] = str(exc)
    name = lambda dt: str(dt).removeprefix("torch.")  # noqa: E731
    ref = greedy.get(torch.float32)
    agreement = {name(dt): sum(a == b for a, b in zip(g, ref)) / len(ref) for dt, g in greedy.items()} if ref else {}
    chosen, reason = torch.float32, "float32 is the reference"
    base = timings.get(torch.float32)
    for dt in candidates:
        if dt == torch.float32 or dt not in timings or base is None:
            continue
        speedup = base / timings[dt]
        if speedup < min_speedup:
            reason = f"{name(dt)} is not faster here ({speedup:.2f}x float32)"
        elif agreement.get(name(dt), 0.0) < 2 / 3:
            reason = f"{name(dt)} is {speedup:.2f}x faster but its greedy tokens disagree with float32 ({agreement.get(name(dt), 0.0):.2f})"
        else:
            chosen, reason = dt, f"{name(dt)} is {speedup:.2f}x faster than float32 and agrees on greedy tokens"
            break
    if problems:
        reason += "; could not run: " + ", ".join(f"{k} ({v})" for k, v in problems.items())
    report = DtypeReport(
        chosen=name(chosen), reason=reason, decode_ms={name(k): round(v, 2) for k, v in timings.items()},
        agreement=agreement, probe_seconds=round(time.perf_counter() - t_start, 2), reference=reference,
    )
    logger.info("serving dtype: %s (%s; decode ms per step at %d rows: %s)", report.chosen, reason, rows, report.decode_ms)
    return chosen, report


@dataclass
class Int8Report:
    rows: int  # decode steps of at most this many rows use the int8 weights (0: never)
    reason: str
    decode_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # rows -> {"dense": ms, "int8": ms}
    agreement: float | None = None  # share of probe prompts whose int8 greedy prefix matches float32's
    logprob_drift: float | None = None  # largest |log p| difference of float32's greedy tokens, int8 vs float32
    probe_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _greedy_logprobs(runner: LlamaRunner, prompt: list[int], tokens: list[int]) -> list[float]:
    """Log-probabilities of ``tokens`` (a continuation of ``prompt``) under ``runner``, decoded one row at a time."""
    logits = runner.extend([prompt], [0], first_row=0, use_lora=False)
    out = []
    for i, tok in enumerate(tokens):
        out.append(float(torch.log_softmax(logits[0].float(), -1)[tok]))
        logits = runner.decode(torch.tensor([tok]), torch.tensor([len(prompt) + i]), use_lora=False)
    return out


def choose_int8_rows(model, tokenizer, dtype: torch.dtype, *, reference: Float32Reference | None = None,
                     candidates: tuple[int, ...] = (1, 2, 4, 8), steps: int = 6, agree_tokens: int = 8,
                     min_speedup: float = 1.1) -> Int8Report:
    """How wide a decode step may be and still run on int8 weights (``ASSISTANT_INT8_DECODE_ROWS=-1``): the
    widest candidate whose int8 step is at least ``min_speedup`` faster than the dense one in ``dtype``, if
    one row's greedy tokens on the probe prompts agree with float32's as the dtype probe asks (2 of 3).
    ``reference``: float32's greedy tokens from the dtype probe (``DtypeReport.reference``), so float32
    is not run twice at start; computed here when None or shorter than ``agree_tokens``."""
    t_start = time.perf_counter()
    if dtype not in (torch.bfloat16, torch.float16):
        return Int8Report(0, f"int8 decode needs 16-bit serving weights (serving {dtype})")
    prompts = [_prompt_ids(tokenizer, p) for p in PROBE_PROMPTS]
    with torch.inference_mode():
        if reference is None or len(reference.tokens) != len(prompts) or any(len(t) < agree_tokens for t in reference.tokens):
            reference = float32_reference(LlamaRunner(model, max_rows=1, dtype=torch.float32, initial_capacity=64),
                                          prompts, agree_tokens)
        ref = [t[:agree_tokens] for t in reference.tokens]
        ref_lp = [lp[:agree_tokens] for lp in reference.logprobs]
        runner = LlamaRunner(model, max_rows=max(candidates), dtype=dtype, initial_capacity=64, int8_rows=max(candidates))
        got = [_greedy(runner, p, agree_tokens) for p in prompts]
        lp = [_greedy_logprobs(runner, p, g) for p, g in zip(prompts, ref)]
        timings: dict[str, dict[str, float]] = {}
        for rows in candidates:
            runner.int8_rows = 0
            dense = _decode_ms(runner, prompts[0], rows, steps)
            runner.int8_rows = rows
            timings[str(rows)] = {"dense": round(dense, 2), "int8": round(_decode_ms(runner, prompts[0], rows, steps), 2)}
    agreement = sum(a == b for a, b in zip(got, ref)) / len(ref)
    drift = max(abs(a - b) for xs, ys in zip(lp, ref_lp) for a, b in zip(xs, ys))
    fast = [r for r in candidates if timings[str(r)]["dense"] / timings[str(r)]["int8"] >= min_speedup]
    if agreement < 2 / 3:
        rows, reason = 0, f"int8 greedy tokens disagree with float32 ({agreement:.2f})"
    elif not fast:
        rows, reason = 0, "int8 is not faster here at any width"
    else:
        rows = max(fast)
        reason = f"int8 is {timings['1']['dense'] / timings['1']['int8']:.2f}x faster at 1 row, at least {min_speedup}x up to {rows}"
    report = Int8Report(rows, reason, timings, agreement, round(drift, 4), round(time.perf_counter() - t_start, 2))
    logger.info("int8 decode up to %d rows (%s; ms per step %s; log-prob drift %.3f)", rows, reason, timings, drift)
    return report
