"""The batched engine: continuous batching with a different LoRA adapter per row.

One engine thread owns the model and runs ``step()`` in a loop (vLLM's
``EngineCore.step()``):

1. schedule: drop cancelled rows, admit waiting requests into free rows (a
   request whose adapter is still loading keeps its place and is admitted at a
   later step), prefetch adapters for the requests behind them;
2. prefill: one forward pass over the newly admitted prompts, which writes
   their KV cache rows and samples their first token;
3. decode: one forward pass over the rows that were already running, one token
   each;
4. retire: rows that hit EOS, ``max_new_tokens`` or an error leave, and the last
   rows move into the holes so the batch stays a dense prefix of the buffers.

Prefill is its own pass (not merged with decode) because prompts are many
tokens per row and decode is one: a merged pass would either pad every decode
row to the prompt length or need a ragged attention kernel, and the prefill
pass is compute-bound anyway, so merging would save only Python overhead.

The forward pass is ``_LlamaRunner``, a re-implementation of the Hugging Face
Llama forward (same operations in the same order, so greedy outputs match
``generate``) with two changes that make batching cheap on CPU:

- a per-row KV cache: buffers (L, rows, kv_heads, capacity, head_dim) where row
  ``i`` holds its own tokens from position 0; an attention mask hides the
  unused tail, so rows joining or leaving never re-align anybody's cache;
- batched LoRA: each row's adapter factors are copied once, at admission, into
  per-row buffers (L, rows, in, r) / (L, rows, r, out), and every adapted linear
  adds ``bmm(bmm(x, A_rows), B_rows)``. The cost is the same for 1 or 16
  distinct adapters and involves no Python loop over adapters (PEFT's
  mixed-batch path loops over adapters per module).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from service.engine.adapter_cache import LORA_MODULES, AdapterCache, AdapterLoadError, LoraWeights, load_lora
from service.engine.base import EndEvent, GenerationRequest, QueueFull, RequestStream, TokenEvent
from service.engine.sampling import Detokenizer, sample_next, stop_token_ids

logger = logging.getLogger(__name__)


class UnsupportedModel(RuntimeError):
    """The batched engine's forward pass does not cover this architecture."""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_dtype(dtype, model) -> torch.dtype:
    if dtype is None:
        return next(model.parameters()).dtype
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    return dtype


@dataclass
class _Layer:
    ln1: torch.Tensor  # (D,)
    w_qkv: torch.Tensor  # (Dq + 2 Dkv, D): q_proj, k_proj, v_proj stacked
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # (D, Dq)
    b_o: torch.Tensor | None
    ln2: torch.Tensor  # (D,)
    w_gu: torch.Tensor  # (2 I, D): gate_proj, up_proj stacked
    b_gu: torch.Tensor | None
    w_down: torch.Tensor  # (D, I)
    b_down: torch.Tensor | None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, operation for operation."""
    dtype = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LlamaRunner:
    """The Llama forward pass over a batch of rows, with per-row KV cache and LoRA buffers.

    Rows are indices into the buffers; the engine keeps the running batch a dense prefix
    ``[0, B)``, so every per-row tensor used in a pass is a contiguous slice.
    """

    def __init__(self, model, *, max_rows: int, dtype: torch.dtype, initial_capacity: int = 256) -> None:
        cfg = model.config
        core = getattr(model, "model", None)
        if type(model).__name__.startswith("Peft") or core is None or not hasattr(core, "layers"):
            raise UnsupportedModel(
                f"BatchedEngine needs a plain *ForCausalLM base model with .model.layers, got {type(model).__name__}; "
                "pass the base model (adapters are served per request) or set ASSISTANT_ENGINE=naive"
            )
        problems = []
        if getattr(cfg, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={cfg.hidden_act}")
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            problems.append("sliding-window attention")
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type", "default") in ("dynamic", "longrope"):
            problems.append(f"rope_type={rope.get('rope_type')}")
        layer0 = core.layers[0]
        for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"):
            if not hasattr(layer0, name):
                problems.append(f"decoder layers without .{name}")
        if problems:
            raise UnsupportedModel(
                f"BatchedEngine's forward pass covers Llama-style models; this one has {', '.join(problems)}. "
                "Set ASSISTANT_ENGINE=naive to serve it."
            )
        self.dtype = dtype
        self.n_layers = len(core.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.d_model = cfg.hidden_size
        self.d_q = self.n_heads * self.head_dim
        self.d_kv = self.n_kv * self.head_dim
        self.d_ff = cfg.intermediate_size
        self.eps = float(layer0.input_layernorm.variance_epsilon)
        self.scale = layer0.self_attn.scaling
        self.max_positions = int(cfg.max_position_embeddings)
        self.max_rows = max_rows
        self.device = next(model.parameters()).device

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype)

        def cat(*ts: torch.Tensor | None) -> torch.Tensor | None:
            return None if ts[0] is None else torch.cat([t.detach() for t in ts]).to(dtype)

        with torch.inference_mode():
            self.embed = cast(core.embed_tokens.weight)  # (V, D)
            self.lm_head = cast(model.get_output_embeddings().weight)  # (V, D), tied or not
            self.lm_head_bias = cast(getattr(model.get_output_embeddings(), "bias", None))
            self.norm = cast(core.norm.weight)
            self.layers: list[_Layer] = []
            for layer in core.layers:
                at, mlp = layer.self_attn, layer.mlp
                self.layers.append(_Layer(
                    ln1=cast(layer.input_layernorm.weight),
                    w_qkv=cat(at.q_proj.weight, at.k_proj.weight, at.v_proj.weight),
                    b_qkv=cat(at.q_proj.bias, at.k_proj.bias, at.v_proj.bias),
                    w_o=cast(at.o_proj.weight), b_o=cast(at.o_proj.bias),
                    ln2=cast(layer.post_attention_layernorm.weight),
                    w_gu=cat(mlp.gate_proj.weight, mlp.up_proj.weight),
                    b_gu=cat(mlp.gate_proj.bias, mlp.up_proj.bias),
                    w_down=cast(mlp.down_proj.weight), b_down=cast(mlp.down_proj.bias),
                ))
            # RoPE tables from the model's own rotary module, so the numbers are identical.
            pos = torch.arange(self.max_positions, device=self.device)[None]  # (1, P)
            probe = torch.empty(0, dtype=dtype, device=self.device)
            cos, sin = core.rotary_emb(probe, pos)
            self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # (P, hd)
            self.initial_capacity = min(initial_capacity, self.max_positions)
            self.capacity = 0
            self.k_cache = self.v_cache = torch.empty(0)
            self._grow_cache(self.initial_capacity)
            self.rank = 0  # LoRA buffers are allocated at the first adapter
            self.lora: dict[str, torch.Tensor] = {}

    # --- buffers ------------------------------------------------------------------
    def _grow_cache(self, capacity: int) -> None:
        shape = (self.n_layers, self.max_rows, self.n_kv, capacity, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)  # (L, rows, Hkv, C, hd)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.capacity:
            k[:, :, :, : self.capacity] = self.k_cache
            v[:, :, :, : self.capacity] = self.v_cache
        self.k_cache, self.v_cache, self.capacity = k, v, capacity

    def shrink_cache(self) -> None:
        """Give back a KV cache grown by long requests; only call with no rows running."""
        if self.capacity > self.initial_capacity:
            self.capacity = 0
            self._grow_cache(self.initial_capacity)

    def ensure_length(self, n: int) -> None:
        if n > self.capacity:
            new = self.capacity
            while new < n:
                new *= 2
            self._grow_cache(min(new, self.max_positions))

    def _lora_shapes(self, r: int) -> dict[str, tuple[int, ...]]:
        L, R, D = self.n_layers, self.max_rows, self.d_model
        return {
            "a_qkv": (L, R, D, 3 * r), "b_q": (L, R, r, self.d_q), "b_k": (L, R, r, self.d_kv), "b_v": (L, R, r, self.d_kv),
            "a_o": (L, R, self.d_q, r), "b_o": (L, R, r, D),
            "a_gu": (L, R, D, 2 * r), "b_gate": (L, R, r, self.d_ff), "b_up": (L, R, r, self.d_ff),
            "a_down": (L, R, self.d_ff, r), "b_down": (L, R, r, D),
        }

    def ensure_rank(self, r: int) -> bool:
        """Grow the LoRA buffers to rank ``r``; True when they were reallocated (rows need rewriting)."""
        if r <= self.rank:
            return False
        self.lora = {k: torch.zeros(s, dtype=self.dtype, device=self.device) for k, s in self._lora_shapes(r).items()}
        self.rank = r
        return True

    def set_row_adapter(self, row: int, w: LoraWeights | None) -> None:
        """Copy an adapter's factors into row ``row`` (zeros for the base model)."""
        for buf in self.lora.values():
            buf[:, row].zero_()
        if w is None:
            return
        r, R = w.rank, self.rank
        lo = self.lora
        a_slots = {"q_proj": ("a_qkv", 0), "k_proj": ("a_qkv", R), "v_proj": ("a_qkv", 2 * R), "o_proj": ("a_o", 0),
                   "gate_proj": ("a_gu", 0), "up_proj": ("a_gu", R), "down_proj": ("a_down", 0)}
        b_names = {"q_proj": "b_q", "k_proj": "b_k", "v_proj": "b_v", "o_proj": "b_o",
                   "gate_proj": "b_gate", "up_proj": "b_up", "down_proj": "b_down"}
        for module in LORA_MODULES:
            if module not in w.a:
                continue
            a_name, off = a_slots[module]
            lo[a_name][:, row, :, off:off + r] = w.a[module].to(self.dtype)  # (L, in, r)
            lo[b_names[module]][:, row, :r, :] = w.b[module].to(self.dtype)  # (L, r, out)

    def move_row(self, src: int, dst: int) -> None:
        self.k_cache[:, dst] = self.k_cache[:, src]
        self.v_cache[:, dst] = self.v_cache[:, src]
        for buf in self.lora.values():
            buf[:, dst] = buf[:, src]

    # --- forward ------------------------------------------------------------------
    def _lora(self, h: torch.Tensor, a: str, bs: tuple[str, ...], layer: int, rows: slice) -> list[torch.Tensor]:
        """Per-row LoRA deltas for the modules that share input ``h`` (N, T, in)."""
        r = self.rank
        x_a = torch.bmm(h, self.lora[a][layer, rows])  # (N, T, k*r)
        return [torch.bmm(x_a[..., i * r:(i + 1) * r], self.lora[b][layer, rows]) for i, b in enumerate(bs)]  # (N, T, out)

    def _layers(self, x: torch.Tensor, rows: slice, cos: torch.Tensor, sin: torch.Tensor, attend, use_lora: bool) -> torch.Tensor:
        N, T, _ = x.shape
        Dq, Dkv = self.d_q, self.d_kv
        for i, ly in enumerate(self.layers):
            # attention block
            h = _rms_norm(x, ly.ln1, self.eps)  # (N, T, D)
            qkv = F.linear(h, ly.w_qkv, ly.b_qkv)  # (N, T, Dq + 2 Dkv)
            if use_lora:
                dq, dk, dv = self._lora(h, "a_qkv", ("b_q", "b_k", "b_v"), i, rows)
                qkv[..., :Dq] += dq
                qkv[..., Dq:Dq + Dkv] += dk
                qkv[..., Dq + Dkv:] += dv
            q = qkv[..., :Dq].view(N, T, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
            k = qkv[..., Dq:Dq + Dkv].view(N, T, self.n_kv, self.head_dim).transpose(1, 2)  # (N, Hkv, T, hd)
            v = qkv[..., Dq + Dkv:].view(N, T, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            att = attend(i, q, k, v)  # (N, H, T, hd)
            att = att.transpose(1, 2).reshape(N, T, Dq)
            o = F.linear(att, ly.w_o, ly.b_o)  # (N, T, D)
            if use_lora:
                o += self._lora(att, "a_o", ("b_o",), i, rows)[0]
            x = x + o
            # MLP block
            h = _rms_norm(x, ly.ln2, self.eps)
            gu = F.linear(h, ly.w_gu, ly.b_gu)  # (N, T, 2 I)
            if use_lora:
                dg, du = self._lora(h, "a_gu", ("b_gate", "b_up"), i, rows)
                gu[..., : self.d_ff] += dg
                gu[..., self.d_ff:] += du
            m = F.silu(gu[..., : self.d_ff]) * gu[..., self.d_ff:]  # (N, T, I)
            d = F.linear(m, ly.w_down, ly.b_down)  # (N, T, D)
            if use_lora:
                d += self._lora(m, "a_down", ("b_down",), i, rows)[0]
            x = x + d
        return x

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = _rms_norm(h, self.norm, self.eps)  # (N, D)
        return F.linear(h, self.lm_head, self.lm_head_bias)  # (N, V)

    def prefill(self, prompts: list[list[int]], first_row: int, use_lora: bool) -> torch.Tensor:
        """Run prompts into rows ``first_row..``; returns the last position's logits (R, V).

        Prompts are right-padded to the longest: with a causal mask a real position never
        sees the padding after it, and positions are 0..T-1 for every row, as in a
        single-prompt forward. The padding's keys land in the cache beyond each row's
        length, where the decode mask hides them until they are overwritten.
        """
        R, T = len(prompts), max(len(p) for p in prompts)
        self.ensure_length(T)
        ids = torch.zeros(R, T, dtype=torch.long, device=self.device)  # (R, T)
        for j, p in enumerate(prompts):
            ids[j, : len(p)] = torch.tensor(p, dtype=torch.long)
        rows = slice(first_row, first_row + R)
        cos, sin = self.cos[:T][None, None], self.sin[:T][None, None]  # (1, 1, T, hd)

        def attend(i, q, k, v):
            self.k_cache[i, rows, :, :T] = k
            self.v_cache[i, rows, :, :T] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)

        x = F.embedding(ids, self.embed)  # (R, T, D)
        x = self._layers(x, rows, cos, sin, attend, use_lora)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        return self._logits(x[torch.arange(R, device=self.device), last])  # (R, V)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool) -> torch.Tensor:
        """One token for each of rows ``0..B-1``; ``tokens``/``positions`` (B,). Returns (B, V)."""
        B = tokens.shape[0]
        n_keys = int(positions.max()) + 1
        self.ensure_length(n_keys)
        rows = slice(0, B)
        row_idx = torch.arange(B, device=self.device)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]  # (B, 1, 1, hd)
        key_pos = torch.arange(n_keys, device=self.device)
        mask = (key_pos[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, n_keys)

        def attend(i, q, k, v):
            kc, vc = self.k_cache[i], self.v_cache[i]  # (rows, Hkv, C, hd)
            kc[row_idx, :, positions] = k[:, :, 0]  # (B, Hkv, hd)
            vc[row_idx, :, positions] = v[:, :, 0]
            return F.scaled_dot_product_attention(
                q, kc[rows, :, :n_keys], vc[rows, :, :n_keys], attn_mask=mask, scale=self.scale, enable_gqa=True
            )

        x = F.embedding(tokens[:, None], self.embed)  # (B, 1, D)
        x = self._layers(x, rows, cos, sin, attend, use_lora)
        return self._logits(x[:, 0])  # (B, V)


@dataclass
class _Row:
    """One running request. Its KV cache and LoRA factors live at buffer row ``slot``."""

    req: GenerationRequest
    slot: int
    lora: LoraWeights | None
    detok: Detokenizer
    generator: torch.Generator | None
    length: int = 0  # tokens in the KV cache
    last_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    finish: str | None = None  # set when the row has ended


@dataclass
class _Counters:
    steps: int = 0
    prefill_passes: int = 0
    prefill_tokens: int = 0
    decode_passes: int = 0
    decode_rows: int = 0
    forward_seconds: float = 0.0
    finished: dict[str, int] = field(default_factory=dict)


class BatchedEngine:
    """Continuous batching with per-row adapters; same interface as ``NaiveEngine``."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        adapter_cache_size: int = 32,
        dtype=None,
        max_prefill_tokens: int = 4096,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        if adapter_cache_size < max_batch_size:
            logger.warning(
                "adapter_cache_size=%d < max_batch_size=%d: a batch of distinct adapters will wait for room",
                adapter_cache_size, max_batch_size,
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.dtype = _resolve_dtype(dtype, model)
        self.runner = _LlamaRunner(model, max_rows=max_batch_size, dtype=self.dtype)
        self._wake = threading.Event()
        self.adapters = AdapterCache(
            lambda ref: load_lora(ref, num_layers=self.runner.n_layers, dtype=self.dtype),
            capacity=adapter_cache_size,
            on_ready=self._wake.set,
        )
        self._stop_ids = stop_token_ids(tokenizer, model.config)
        self._lock = threading.Lock()  # guards _waiting and _by_id (routes vs the engine thread)
        self._waiting: deque[GenerationRequest] = deque()
        self._by_id: dict[str, GenerationRequest] = {}
        self._running: list[_Row] = []  # engine thread only; _running[i].slot == i
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._counters = _Counters()
        self.tokens_generated = 0

    # --- public API -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="batched-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.stream.put(EndEvent("error", 0, len(req.prompt_ids), error="the engine stopped"))
        for row in self._running:
            self._finish(row, "error", error="the engine stopped")
        self._retire()
        self.adapters.close()

    def submit(self, request: GenerationRequest) -> RequestStream:
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull("the generation queue is full; try again in a moment")
            request.submitted_at = time.perf_counter()
            self._waiting.append(request)
            self._by_id[request.request_id] = request
        self._wake.set()
        return request.stream

    def cancel(self, request_id: str) -> None:
        with self._lock:
            req = self._by_id.get(request_id)
        if req is not None:
            req.cancelled.set()
            self._wake.set()

    def evict_adapter(self, key: str) -> None:
        self.adapters.evict(key)

    def set_adapter_cache_size(self, capacity: int) -> None:
        self.adapters.set_capacity(capacity)

    def stats(self) -> dict:
        c = self._counters
        with self._lock:
            queued = len(self._waiting)
        cs = self.adapters.stats
        return {
            "engine": "batched",
            "dtype": str(self.dtype).removeprefix("torch."),
            "running": len(self._running),
            "queued": queued,
            "max_batch_size": self.max_batch_size,
            "tokens_generated": self.tokens_generated,
            "steps": c.steps,
            "prefill_passes": c.prefill_passes,
            "prefill_tokens": c.prefill_tokens,
            "decode_passes": c.decode_passes,
            "mean_decode_batch": c.decode_rows / c.decode_passes if c.decode_passes else 0.0,
            "forward_seconds": round(c.forward_seconds, 3),
            "finished": dict(c.finished),
            "adapters": {
                "resident": len(self.adapters), "capacity": self.adapters.capacity,
                "pinned": len(self.adapters.pinned_keys()), "loads": cs.loads, "evictions": cs.evictions,
                "failures": cs.failures, "load_seconds": round(cs.load_seconds, 3),
            },
        }

    # --- loop -----------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    busy = self.step()
                except Exception as exc:  # a failed pass ends the rows in it; the engine keeps serving
                    logger.exception("engine step failed")
                    for row in self._running:
                        if row.finish is None:
                            self._finish(row, "error", error=f"generation failed: {exc}")
                    self._retire()
                    busy = False
                if not busy:
                    self._wake.wait(0.05)

    def step(self) -> bool:
        """One scheduling round and up to two forward passes; False when there was nothing to do."""
        # 1. schedule: cancellations free their rows now, then admit into the free rows
        cancelled = [r for r in self._running if r.req.cancelled.is_set()]
        for row in cancelled:
            self._finish(row, "cancelled")
        if cancelled:
            self._retire()
        old = list(self._running)
        new = self._admit()
        # 2. prefill the newly admitted rows (they join the decode pass at the next step)
        if new:
            t0 = time.perf_counter()
            logits = self.runner.prefill(
                [r.req.prompt_ids for r in new], first_row=new[0].slot, use_lora=any(r.lora for r in new)
            )  # (R, V)
            self._counters.forward_seconds += time.perf_counter() - t0
            self._counters.prefill_passes += 1
            self._counters.prefill_tokens += sum(len(r.req.prompt_ids) for r in new)
            for r in new:
                r.length = len(r.req.prompt_ids)
            self._sample(new, logits)
        # 3. decode one token for every row that was running before this step
        if old:
            t0 = time.perf_counter()
            tokens = torch.tensor([r.last_token for r in old], device=self.runner.device)  # (B,)
            positions = torch.tensor([r.length for r in old], device=self.runner.device)  # (B,)
            logits = self.runner.decode(tokens, positions, use_lora=any(r.lora for r in old))  # (B, V)
            self._counters.forward_seconds += time.perf_counter() - t0
            self._counters.decode_passes += 1
            self._counters.decode_rows += len(old)
            for r in old:
                r.length += 1
            self._sample(old, logits)
        # 4. retire rows that ended; keep the batch a dense prefix of the buffers
        self._retire()
        busy = bool(new or old or cancelled)
        self._counters.steps += busy  # idle wake-ups are not steps
        return busy

    # --- scheduling -------------------------------------------------------------
    def _admit(self) -> list[_Row]:
        free = self.max_batch_size - len(self._running)
        with self._lock:
            waiting = list(self._waiting)
        new: list[_Row] = []
        taken: list[GenerationRequest] = []
        budget = self.max_prefill_tokens
        lookahead = max(0, self.adapters.capacity - len(self.adapters.pinned_keys()))
        for req in waiting:
            if req.cancelled.is_set():
                taken.append(req)
                req.stream.put(EndEvent("cancelled", 0, len(req.prompt_ids)))
                self._count("cancelled")
                continue
            if len(new) >= free or (new and budget < len(req.prompt_ids)):
                if req.adapter is not None and lookahead > 0:
                    self.adapters.prefetch(req.adapter)  # loads in the background while the batch runs
                    lookahead -= 1
                continue
            problem = self._validate(req)
            if problem is not None:
                taken.append(req)
                req.stream.put(EndEvent("error", 0, len(req.prompt_ids), error=problem))
                self._count("error")
                continue
            if req.params.max_new_tokens <= 0:
                taken.append(req)
                req.stream.put(EndEvent("length", 0, len(req.prompt_ids)))
                self._count("length")
                continue
            lora = None
            if req.adapter is not None:
                try:
                    lora = self.adapters.acquire(req.adapter)
                except AdapterLoadError as exc:
                    taken.append(req)
                    req.stream.put(EndEvent("error", 0, len(req.prompt_ids), error=str(exc)))
                    self._count("error")
                    continue
                if lora is None:
                    continue  # still loading: keeps its place, admitted at a later step
            taken.append(req)
            req.scheduled_at = time.perf_counter()
            budget -= len(req.prompt_ids)
            p = req.params
            new.append(_Row(
                req=req, slot=len(self._running) + len(new), lora=lora, detok=Detokenizer(self.tokenizer),
                generator=torch.Generator().manual_seed(p.seed) if p.seed is not None else None,
            ))
        if taken:
            gone = {id(r) for r in taken}
            with self._lock:
                self._waiting = deque(r for r in self._waiting if id(r) not in gone)
                for r in taken:
                    if not any(row.req is r for row in new):
                        self._by_id.pop(r.request_id, None)
        if new:
            rank = max((r.lora.rank for r in new if r.lora is not None), default=0)
            if self.runner.ensure_rank(rank):  # buffers reallocated: rewrite the running rows too
                for row in self._running:
                    self.runner.set_row_adapter(row.slot, row.lora)
            if self.runner.rank:
                for row in new:
                    self.runner.set_row_adapter(row.slot, row.lora)
            self._running.extend(new)
        return new

    def _validate(self, req: GenerationRequest) -> str | None:
        n = len(req.prompt_ids)
        if n == 0:
            return "empty prompt"
        if n + req.params.max_new_tokens > self.runner.max_positions:
            return (
                f"prompt ({n} tokens) + max_new_tokens ({req.params.max_new_tokens}) exceeds the model's "
                f"{self.runner.max_positions} positions; shorten the conversation or lower max_new_tokens"
            )
        return None

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick, emit and account one token per row; ``logits`` (len(rows), V)."""
        greedy = logits.argmax(-1).tolist() if any(r.req.params.temperature <= 0 for r in rows) else None
        for i, row in enumerate(rows):
            p = row.req.params
            tok = greedy[i] if p.temperature <= 0 else sample_next(logits[i], p.temperature, p.top_p, row.generator)
            row.generated += 1
            row.last_token = tok
            self.tokens_generated += 1
            if tok in self._stop_ids and not p.ignore_eos:
                self._finish(row, "stop")
                continue
            row.req.stream.put(TokenEvent(text=row.detok.add(tok), token_ids=[tok]))
            if row.generated >= p.max_new_tokens:
                self._finish(row, "length")

    def _finish(self, row: _Row, reason: str, error: str | None = None) -> None:
        row.finish = reason
        row.req.stream.put(EndEvent(reason, row.generated, len(row.req.prompt_ids), error=error))
        self._count(reason)

    def _count(self, reason: str) -> None:
        self._counters.finished[reason] = self._counters.finished.get(reason, 0) + 1

    def _retire(self) -> None:
        """Drop ended rows, unpin their adapters, and move the last rows into the holes."""
        done = [r for r in self._running if r.finish is not None]
        if not done:
            return
        for row in done:
            if row.lora is not None:
                self.adapters.release(row.lora.key)
        with self._lock:
            for row in done:
                self._by_id.pop(row.req.request_id, None)
        live = [r for r in self._running if r.finish is None]
        n = len(live)
        holes = sorted(r.slot for r in done if r.slot < n)
        movers = sorted((r for r in live if r.slot >= n), key=lambda r: r.slot)
        for hole, row in zip(holes, movers):
            self.runner.move_row(row.slot, hole)
            row.slot = hole
        self._running = sorted(live, key=lambda r: r.slot)
        if not self._running:
            self.runner.shrink_cache()
