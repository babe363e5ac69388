"""What the benchmarks share: random adapters as a workload, a stream that stamps each event, and one
burst of requests measured (``service.bench``, ``service.bench_api``, ``service.bench_training``)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from service.engine.base import AdapterRef, EndEvent, GenerationRequest, RequestStream, SamplingParams

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

def make_random_adapter(base_model, path: Path | str, seed: int, r: int = 8, *, alpha: int | None = None, b_std: float = 0.02) -> Path:
    """Write a random PEFT LoRA adapter (all linear layers of the decoder) to ``path``.

    lora_A is drawn like PEFT's default init (uniform, +-1/sqrt(in)); lora_B is N(0, b_std)
    instead of zeros, so the adapter changes the model's outputs while keeping them fluent
    enough to be a realistic workload. Written with safetensors in PEFT's file layout, so
    ``PeftModel.from_pretrained`` and the engines both load it.
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in base_model.named_modules():
        if name.rsplit(".", 1)[-1] not in LORA_TARGETS or not isinstance(module, torch.nn.Linear):
            continue
        bound = 1.0 / module.in_features**0.5
        a = (torch.rand(r, module.in_features, generator=gen) * 2 - 1) * bound  # (r, in)
        b = torch.randn(module.out_features, r, generator=gen) * b_std  # (out, r)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    if not tensors:
        raise ValueError(f"no {LORA_TARGETS} linear layers found in {type(base_model).__name__}")
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, target_modules=list(LORA_TARGETS),
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    cfg.save_pretrained(str(path))
    return path


class TimedStream(RequestStream):
    """A sync stream that stamps every event when the engine thread puts it."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def put(self, event) -> None:
        self.times.append(time.perf_counter())
        super().put(event)


def stamps(req: GenerationRequest) -> list[float]:
    """When each event of ``req`` was put, as its ``TimedStream`` recorded."""
    if not isinstance(req.stream, TimedStream):
        raise TypeError(f"request {req.request_id} was not given a TimedStream")
    return req.stream.times


def loadavg() -> float | None:
    """1-minute load average (Linux), recorded so readers can tell a contended run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_requests(engine, prompts: list[list[int]], adapters: Sequence[AdapterRef | None], max_new_tokens: int, timeout: float = 600) -> dict:
    """Submit all requests at once, wait for every end; return throughput and latency numbers."""
    reqs = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i, (ids, ad) in enumerate(zip(prompts, adapters)):
        req = GenerationRequest(
            request_id=f"bench-{uuid.uuid4().hex[:8]}-{i}", prompt_ids=ids,
            params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True),
            adapter=ad, stream=TimedStream(), cache_salt=uuid.uuid4().hex,  # fresh requests: no prefix reuse
        )
        engine.submit(req)
        reqs.append(req)
    ends: list[EndEvent] = []
    for req in reqs:
        end = [ev for ev in req.stream.iter_sync(timeout=timeout) if isinstance(ev, EndEvent)][-1]
        if end.finish_reason not in ("length", "stop"):
            raise RuntimeError(f"benchmark request ended with {end.finish_reason}: {end.error}")
        ends.append(end)
    t_end = max(stamps(r)[-1] for r in reqs)
    cpu = time.process_time() - cpu0  # this process's CPU seconds: robust to other processes' load
    ttft = [stamps(r)[0] - r.submitted_at for r in reqs]
    itl = [b - a for r in reqs for a, b in zip(stamps(r)[:-2], stamps(r)[1:-1])]  # token gaps, not the end
    tokens = sum(e.completion_tokens for e in ends)
    wall = t_end - t0
    return {
        "requests": len(reqs),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "cpu_s": round(cpu, 3),
        "tokens_per_cpu_s": round(tokens / cpu, 2),
        "ttft_p50_s": round(pct(ttft, 50), 4),
        "ttft_p95_s": round(pct(ttft, 95), 4),
        "itl_p50_s": round(pct(itl, 50), 4),
        "itl_p95_s": round(pct(itl, 95), 4),
    }
