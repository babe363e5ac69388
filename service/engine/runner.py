"""The model runner: weights, per-row KV cache, per-row LoRA buffers, and the forward pass.

``LlamaRunner`` re-implements the Hugging Face Llama forward (same operations in the
same order, so greedy outputs match ``generate``) with three changes that make
batching cheap on CPU:

- a per-row KV cache: buffers (L, rows, kv_heads, capacity, head_dim) where row ``i``
  holds its own tokens from position 0; an attention mask hides the unused tail, so
  rows joining or leaving never re-align anybody's cache;
- batched LoRA: each row's adapter factors are copied once, at admission, into per-row
  buffers, and every adapted projection adds ``baddbmm(x @ A_rows, B_rows)``. The
  modules that share an input (q/k/v, gate/up) share one A buffer and one
  block-diagonal B buffer, so a layer costs four ``bmm`` and four ``baddbmm_`` whatever
  the number of distinct adapters, with no Python loop over adapters (PEFT's
  mixed-batch path loops over adapters per module);
- ``extend``: rows may start from a non-zero position (a prefix copied from the prefix
  cache, or the earlier chunks of a long prompt), so one pass covers a decode step
  (one token per row), a fresh prompt, a chunk of a long prompt, or the suffix of a
  prompt whose prefix was cached.

The scheduler (``service.engine.scheduler``) decides which rows run; this module only
computes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

from dataclasses import dataclass
from typing import Protocol, overload

import torch
import torch.nn.functional as F

from service.engine.adapter_cache import LoraWeights


class DecodeStep(Protocol):
    """A faster one-token step for passes of at most ``rows`` rows (``service.engine.compiled_decode.CompiledDecode``):
    the logits with the cache written, or None when it cannot take this pass (the runner's eager step runs)."""

    rows: int

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool, n_keys: int) -> torch.Tensor | None: ...

    def stats(self) -> dict[str, float | int | bool | str | None]: ...


class UnsupportedModel(RuntimeError):
    """The batched engine's forward pass does not cover this architecture."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype, model) -> torch.dtype:
    if dtype is None:
        return next(model.parameters()).dtype
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        return DTYPES[dtype]
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
    q8: dict[str, "_Int8"] | None = None  # weight-only int8 copies of w_qkv, w_o, w_gu, w_down (``int8_rows``)


@dataclass
class _Int8:
    """A projection's weights as int8 with one scale per output channel (symmetric, round to nearest)."""

    q: torch.Tensor  # (out, in) int8
    s: torch.Tensor  # (out,) in the runner's dtype

    @classmethod
    def of(cls, w: torch.Tensor) -> "_Int8":
        w32 = w.float()
        s = w32.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        return cls(torch.round(w32 / s[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), s.to(w.dtype))


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


def _check_supported(model) -> None:
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


# The modules of a group share one input, one A buffer (their A factors side by side) and one
# block-diagonal B buffer: group -> member modules, in the order of the fused output columns.
_LORA_GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gu": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


class LlamaRunner:
    """The Llama forward pass over a batch of rows, with per-row KV cache and LoRA buffers.

    Rows are indices into the buffers; the scheduler keeps every pass's rows a contiguous
    range, so every per-row tensor used in a pass is a slice (a view, never a gather).
    """

    def __init__(self, model, *, max_rows: int, dtype: torch.dtype, initial_capacity: int = 512, int8_rows: int = 0) -> None:
        _check_supported(model)
        cfg, core = model.config, model.model
        layer0 = core.layers[0]
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
        # Decode steps of at most this many rows multiply int8 copies of the weights (torch's weight-only
        # int8 kernel): one stream is bound by reading the weights, and int8 reads half of bfloat16. Wider
        # steps are bound by compute, where the kernel loses, so they keep the runner's dtype. 16-bit only:
        # the kernel is slower than float32 with float32 inputs, and float32 stays the exact reference.
        self.int8_rows = int8_rows if dtype in (torch.bfloat16, torch.float16) and self.device.type == "cpu" else 0
        self._int8_now = False
        self.compiled: DecodeStep | None = None  # a compiled one-row decode step, when ASSISTANT_COMPILE_DECODE
        # output columns of each module inside its group's fused projection
        self._cols = {
            "q_proj": (0, self.d_q), "k_proj": (self.d_q, self.d_q + self.d_kv),
            "v_proj": (self.d_q + self.d_kv, self.d_q + 2 * self.d_kv), "o_proj": (0, self.d_model),
            "gate_proj": (0, self.d_ff), "up_proj": (self.d_ff, 2 * self.d_ff), "down_proj": (0, self.d_model),
        }
        self._group_dims = {  # group -> (in, fused out)
            "qkv": (self.d_model, self.d_q + 2 * self.d_kv), "o": (self.d_q, self.d_model),
            "gu": (self.d_model, 2 * self.d_ff), "down": (self.d_ff, self.d_model),
        }

        self.load_weights(model)
        with torch.inference_mode():
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
            # The LoRA products are tiny (rows x 1 x in @ in x 24): on CPU a 16-bit bmm of that shape is
            # ~3x slower than float32 (bf16: 38 + 89 us for bmm + baddbmm_ at 16 rows; float32: 13 + 30),
            # so with 16-bit weights the factors stay float32 and the delta is cast back once.
            self.lora_dtype = torch.float32 if self.device.type == "cpu" else dtype

    def load_weights(self, model) -> None:
        """Copy the model's weights (cast to the runner's dtype); also how a new base of the same
        shape (the safe base, ``learning.safety``) replaces the old one between passes."""
        dtype = self.dtype
        core = model.model

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype)

        def cat(*ts: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.detach() for t in ts]).to(dtype)

        # biases: None on most Llama-style models, and then on every module of a fused group
        def cast_bias(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else cast(t)

        def cat_bias(*ts: torch.Tensor | None) -> torch.Tensor | None:
            present = [t for t in ts if t is not None]
            if not present:
                return None
            if len(present) < len(ts):
                raise UnsupportedModel("BatchedEngine fuses q/k/v and gate/up, which needs a bias on all of a group's "
                                       "modules or none; set ASSISTANT_ENGINE=naive to serve this model")
            return cat(*present)

        with torch.inference_mode():
            self.embed = cast(core.embed_tokens.weight)  # (V, D)
            self.lm_head = cast(model.get_output_embeddings().weight)  # (V, D), tied or not
            self.lm_head_bias = cast_bias(getattr(model.get_output_embeddings(), "bias", None))
            self.norm = cast(core.norm.weight)
            self.layers: list[_Layer] = []
            for layer in core.layers:
                at, mlp = layer.self_attn, layer.mlp
                self.layers.append(_Layer(
                    ln1=cast(layer.input_layernorm.weight),
                    w_qkv=cat(at.q_proj.weight, at.k_proj.weight, at.v_proj.weight),
                    b_qkv=cat_bias(at.q_proj.bias, at.k_proj.bias, at.v_proj.bias),
                    w_o=cast(at.o_proj.weight), b_o=cast_bias(at.o_proj.bias),
                    ln2=cast(layer.post_attention_layernorm.weight),
                    w_gu=cat(mlp.gate_proj.weight, mlp.up_proj.weight),
                    b_gu=cat_bias(mlp.gate_proj.bias, mlp.up_proj.bias),
                    w_down=cast(mlp.down_proj.weight), b_down=cast_bias(mlp.down_proj.bias),
                ))
            self.lm_head_q8 = _Int8.of(self.lm_head) if self.int8_rows else None
            for ly in self.layers if self.int8_rows else ():
                ly.q8 = {name: _Int8.of(getattr(ly, name)) for name in ("w_qkv", "w_o", "w_gu", "w_down")}

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the weights the runner multiplies, and of their int8 copies (0 without them)."""
        dense = [self.embed, self.lm_head, self.norm] + [t for ly in self.layers for t in
                                                        (ly.ln1, ly.w_qkv, ly.w_o, ly.ln2, ly.w_gu, ly.w_down)]
        q8 = ([self.lm_head_q8] if self.lm_head_q8 else []) + [c for ly in self.layers for c in (ly.q8 or {}).values()]
        size = sum(t.numel() * t.element_size() for t in dense if t is not None)
        return {"weights": size, "int8_copies": sum(c.q.numel() + c.s.numel() * c.s.element_size() for c in q8)}

    def set_step_rows(self, rows: int) -> None:
        """Chooses the weights the next decode step of ``rows`` rows multiplies: the int8 copies up to
        ``int8_rows`` rows, the runner's dtype above (``decode`` calls it; so does a compiler tracing the step)."""
        self._int8_now = rows <= self.int8_rows

    def _proj(self, h: torch.Tensor, ly: _Layer, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(h, ly.<name>, bias)``, on the int8 copy during a small decode step."""
        if not self._int8_now or ly.q8 is None:
            return F.linear(h, getattr(ly, name), bias)
        c = ly.q8[name]
        out = torch._weight_int8pack_mm(h.reshape(-1, h.shape[-1]), c.q, c.s).view(*h.shape[:-1], -1)
        return out if bias is None else out + bias

    # --- KV cache -------------------------------------------------------------------
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

    def scratch(self, capacity: int = 64) -> "LlamaRunner":
        """A runner that shares this one's weights (the same tensors) but owns a small KV cache and LoRA buffers
        of its own: what a compilation traces on in the background while this runner serves
        (``service.engine.compiled_decode``), so it never writes into a row in use."""
        twin = copy.copy(self)
        twin.compiled = None
        twin.lora, twin.rank = {}, 0
        twin.capacity, twin.initial_capacity = 0, min(capacity, self.max_positions)
        with torch.inference_mode():  # inference tensors, as this runner's own cache is (guards tell them apart)
            twin._grow_cache(twin.initial_capacity)
        return twin

    def ensure_length(self, n: int) -> None:
        """Grow every row's capacity to at least ``n`` positions.

        Growing re-lays out the whole cache (every row, every layer), so it should happen
        rarely: the scheduler asks once per request for all it may need, and the new size
        is at least 1.5x the old, in steps of 256 positions.
        """
        if n > self.capacity:
            new = max(n, self.capacity * 3 // 2)
            new = -(-new // 256) * 256
            self._grow_cache(min(new, self.max_positions))

    def read_kv(self, row: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of row ``row``'s first ``n`` cached positions, each (L, Hkv, n, hd)."""
        return self.k_cache[:, row, :, :n].clone(), self.v_cache[:, row, :, :n].clone()

    def write_kv(self, row: int, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        """Put the first ``n`` positions of ``k``/``v`` (L, Hkv, >=n, hd) into row ``row``."""
        self.ensure_length(n)
        self.k_cache[:, row, :, :n] = k[:, :, :n]
        self.v_cache[:, row, :, :n] = v[:, :, :n]

    def move_row(self, src: int, dst: int) -> None:
        self.k_cache[:, dst] = self.k_cache[:, src]
        self.v_cache[:, dst] = self.v_cache[:, src]
        for buf in self.lora.values():
            buf[:, dst] = buf[:, src]

    # --- LoRA buffers ---------------------------------------------------------------
    def ensure_rank(self, r: int) -> bool:
        """Grow the LoRA buffers to rank ``r``; True when they were reallocated (rows need rewriting)."""
        if r <= self.rank:
            return False
        L, R = self.n_layers, self.max_rows
        self.lora = {}
        for g, modules in _LORA_GROUPS.items():
            d_in, d_out = self._group_dims[g]
            k = len(modules) * r
            self.lora[f"a_{g}"] = torch.zeros(L, R, d_in, k, dtype=self.lora_dtype, device=self.device)  # (L, rows, in, k r)
            self.lora[f"b_{g}"] = torch.zeros(L, R, k, d_out, dtype=self.lora_dtype, device=self.device)  # block-diagonal
        self.rank = r
        return True

    def set_row_adapter(self, row: int, w: LoraWeights | None) -> None:
        """Copy an adapter's factors into row ``row`` (zeros for the base model)."""
        for buf in self.lora.values():
            buf[:, row].zero_()
        if w is None:
            return
        r, R = w.rank, self.rank
        for g, modules in _LORA_GROUPS.items():
            for j, module in enumerate(modules):
                if module not in w.a:
                    continue
                c0, c1 = self._cols[module]
                self.lora[f"a_{g}"][:, row, :, j * R:j * R + r] = w.a[module].to(self.lora_dtype)  # (L, in, r)
                self.lora[f"b_{g}"][:, row, j * R:j * R + r, c0:c1] = w.b[module].to(self.lora_dtype)  # (L, r, out)

    @contextlib.contextmanager
    def merged(self, w: LoraWeights):
        """Every pass inside uses W + (A B)^T for one adapter, folded into the weights (rows then
        run without LoRA: ``use_lora=False``, adapter ``None``). For batches that all share one
        adapter, such as the trainer's rollouts, this costs one pass over the weights and makes each
        step as fast as the base model's. The original weights are restored on exit, untouched."""
        groups = {"qkv": "w_qkv", "o": "w_o", "gu": "w_gu", "down": "w_down"}
        original = self.layers
        merged: list[_Layer] = []
        with torch.inference_mode():
            for i, ly in enumerate(original):
                new = dataclasses.replace(ly)
                for g, attr in groups.items():
                    base = getattr(ly, attr)  # (out, in)
                    delta = torch.zeros(base.shape, dtype=torch.float32, device=self.device)
                    for module in _LORA_GROUPS[g]:
                        if module in w.a:
                            c0, c1 = self._cols[module]
                            delta[c0:c1] = (w.a[module][i].float() @ w.b[module][i].float()).t()  # (out_m, in)
                    setattr(new, attr, (base.float() + delta).to(self.dtype))
                merged.append(new)
        self.layers = merged
        try:
            yield self
        finally:
            self.layers = original

    # --- forward --------------------------------------------------------------------
    def _masked_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q (N, H, T, hd) over k, v (N, Hkv, S, hd) where ``mask`` (N, 1, T, S) is True.

        float32 uses PyTorch's kernel (what Hugging Face runs, so greedy outputs match), and so
        do passes of many queries (its blocked kernel wins there). For one query per row in
        16-bit weights, the decode step, the CPU kernel with a mask is ~3x slower than two
        matmuls with a float32 softmax (measured at 9 rows x 2,142 keys: 9.4 vs 3.0 ms per
        layer), and its cost grows with the longest row, which every row of the pass pays for.
        """
        if self.dtype == torch.float32 or q.shape[2] > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)
        N, H, T, hd = q.shape
        S, g = k.shape[2], H // self.n_kv
        qg = q.reshape(N, self.n_kv, g * T, hd)  # q heads h*g..h*g+g-1 share kv head h (HF's repeat_kv)
        scores = (qg @ k.transpose(-1, -2)).float().mul_(self.scale)  # (N, Hkv, g T, S)
        scores = scores.view(N, self.n_kv, g, T, S).masked_fill_(~mask[:, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype).view(N, self.n_kv, g * T, S)
        return (probs @ v).view(N, H, T, hd)  # (N, H, T, hd)

    def _add_lora(self, out: torch.Tensor, h: torch.Tensor, group: str, layer: int, rows: slice) -> None:
        """``out`` (N, T, out) += per-row LoRA delta of ``group`` for input ``h`` (N, T, in)."""
        a, b = self.lora[f"a_{group}"][layer, rows], self.lora[f"b_{group}"][layer, rows]
        if out.dtype == self.lora_dtype:
            out.baddbmm_(torch.bmm(h, a), b)  # (N, T, k r) @ (N, k r, out)
        else:
            out += torch.bmm(torch.bmm(h.to(self.lora_dtype), a), b)

    def _layers(self, x: torch.Tensor, rows: slice, cos: torch.Tensor, sin: torch.Tensor, attend, use_lora: bool) -> torch.Tensor:
        N, T, _ = x.shape
        Dq, Dkv = self.d_q, self.d_kv
        for i, ly in enumerate(self.layers):
            # attention block
            h = _rms_norm(x, ly.ln1, self.eps)  # (N, T, D)
            qkv = self._proj(h, ly, "w_qkv", ly.b_qkv)  # (N, T, Dq + 2 Dkv)
            if use_lora:
                self._add_lora(qkv, h, "qkv", i, rows)
            q = qkv[..., :Dq].view(N, T, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
            k = qkv[..., Dq:Dq + Dkv].view(N, T, self.n_kv, self.head_dim).transpose(1, 2)  # (N, Hkv, T, hd)
            v = qkv[..., Dq + Dkv:].view(N, T, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            att = attend(i, q, k, v)  # (N, H, T, hd)
            att = att.transpose(1, 2).reshape(N, T, Dq)
            o = self._proj(att, ly, "w_o", ly.b_o)  # (N, T, D)
            if use_lora:
                self._add_lora(o, att, "o", i, rows)
            x = x + o
            # MLP block
            h = _rms_norm(x, ly.ln2, self.eps)
            gu = self._proj(h, ly, "w_gu", ly.b_gu)  # (N, T, 2 I)
            if use_lora:
                self._add_lora(gu, h, "gu", i, rows)
            m = F.silu(gu[..., : self.d_ff]) * gu[..., self.d_ff:]  # (N, T, I)
            d = self._proj(m, ly, "w_down", ly.b_down)  # (N, T, D)
            if use_lora:
                self._add_lora(d, m, "down", i, rows)
            x = x + d
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = _rms_norm(h, self.norm, self.eps)  # (N, D)
        if self._int8_now and self.lm_head_q8 is not None:
            out = torch._weight_int8pack_mm(h, self.lm_head_q8.q, self.lm_head_q8.s)
            return out if self.lm_head_bias is None else out + self.lm_head_bias
        return F.linear(h, self.lm_head, self.lm_head_bias)  # (N, V)

    @overload
    def extend(self, chunks: list[list[int]], starts: list[int], first_row: int, use_lora: bool,
               want_logits: None = None) -> torch.Tensor: ...

    @overload
    def extend(self, chunks: list[list[int]], starts: list[int], first_row: int, use_lora: bool,
               want_logits: list[bool]) -> torch.Tensor | None: ...

    def extend(self, chunks: list[list[int]], starts: list[int], first_row: int, use_lora: bool,
               want_logits: list[bool] | None = None) -> torch.Tensor | None:
        """Append ``chunks[j]`` to row ``first_row + j``, whose cache holds ``starts[j]`` tokens.

        Returns the logits after each chunk's last token (R, V), for the rows in
        ``want_logits`` (all when None; None when no row wants them: an intermediate
        chunk of a long prompt skips the vocabulary projection).

        Chunks are right-padded to the longest. Padding never reaches the cache (only
        real positions are written) and its queries read position-clamped keys, so a
        real position's output is the same as in a pass without the other rows.
        A pass whose rows all start at 0 uses the causal kernel directly (numerically
        identical to a single-prompt forward); its padding's keys land in the cache
        beyond each row's length, where masks hide them until they are overwritten.
        """
        R, T = len(chunks), max(len(c) for c in chunks)
        dev = self.device
        self._int8_now = False  # prefill is compute-bound: the runner's dtype
        lens = torch.tensor([len(c) for c in chunks], device=dev)  # (R,)
        start = torch.tensor(starts, device=dev)  # (R,)
        n_keys = int((start + lens).max())
        self.ensure_length(n_keys)
        ids = torch.zeros(R, T, dtype=torch.long, device=dev)  # (R, T)
        for j, c in enumerate(chunks):
            ids[j, : len(c)] = torch.tensor(c, dtype=torch.long)
        rows = slice(first_row, first_row + R)
        t = torch.arange(T, device=dev)
        pos = start[:, None] + torch.minimum(t[None, :], lens[:, None] - 1)  # (R, T), padding clamped
        real = t[None, :] < lens[:, None]  # (R, T)
        if not any(starts):  # fresh prompts: padding sits after every real token, so causal hides it
            cos, sin = self.cos[:T][None, None], self.sin[:T][None, None]  # (1, 1, T, hd)

            def attend(i, q, k, v):
                self.k_cache[i, rows, :, :T] = k
                self.v_cache[i, rows, :, :T] = v
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (R, 1, T, hd)
            key_pos = torch.arange(n_keys, device=dev)
            mask = (key_pos[None, None, :] <= pos[:, :, None])[:, None]  # (R, 1, T, n_keys)
            r_idx = torch.arange(R, device=dev)[:, None].expand(R, T)[real]  # (n_real,)
            p_idx = pos[real]  # (n_real,)

            def attend(i, q, k, v):
                kc, vc = self.k_cache[i, rows], self.v_cache[i, rows]  # (R, Hkv, C, hd)
                kc[r_idx, :, p_idx] = k.transpose(1, 2)[real]  # (n_real, Hkv, hd)
                vc[r_idx, :, p_idx] = v.transpose(1, 2)[real]
                return self._masked_attention(q, kc[:, :, :n_keys], vc[:, :, :n_keys], mask)

        x = F.embedding(ids, self.embed)  # (R, T, D)
        x = self._layers(x, rows, cos, sin, attend, use_lora)
        want = [True] * R if want_logits is None else want_logits
        if not any(want):
            return None
        last = lens - 1
        return self.logits(x[torch.arange(R, device=dev), last])  # (R, V)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, use_lora: bool) -> torch.Tensor:
        """One token for each of rows ``0..B-1``; ``tokens``/``positions`` (B,). Returns (B, V).

        Steps of at most ``compiled.rows`` rows run the compiled pure step when there is one
        (``service.engine.compiled_decode``; ``None`` back means its graph does not fit: eager)."""
        B = tokens.shape[0]
        self.set_step_rows(B)
        n_keys = int(positions.max()) + 1
        step = self.compiled if self.compiled is not None and B <= self.compiled.rows else None
        # the compiled step takes the cache's first n_keys positions as a view; a view of the whole capacity is
        # contiguous, which its graph's guards tell apart (a fallback at each growth): one spare position for it
        self.ensure_length(min(n_keys + (step is not None), self.max_positions))
        if step is not None:
            logits = step(tokens, positions, use_lora, n_keys)
            if logits is not None:
                return logits
        rows = slice(0, B)
        row_idx = torch.arange(B, device=self.device)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]  # (B, 1, 1, hd)
        key_pos = torch.arange(n_keys, device=self.device)
        mask = (key_pos[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, n_keys)

        def attend(i, q, k, v):
            kc, vc = self.k_cache[i], self.v_cache[i]  # (rows, Hkv, C, hd)
            kc[row_idx, :, positions] = k[:, :, 0]  # (B, Hkv, hd)
            vc[row_idx, :, positions] = v[:, :, 0]
            return self._masked_attention(q, kc[rows, :, :n_keys], vc[rows, :, :n_keys], mask)

        x = F.embedding(tokens[:, None], self.embed)  # (B, 1, D)
        x = self._layers(x, rows, cos, sin, attend, use_lora)
        return self.logits(x[:, 0])  # (B, V)

    # --- the pure decode step (what ``service.engine.compiled_decode`` compiles) --------
    def decode_pure(self, tokens: torch.Tensor, positions: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor,
                    use_lora: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode`` with no host reads and no writes, so a compiler can trace it once for every length.

        ``k_all``/``v_all``: the first S positions of rows ``0..B-1``'s cache, (L, B, Hkv, S, hd), S larger
        than every position; each row's new token attends to its earlier positions there (the rest is
        masked) and to its own key, in one softmax. Returns the logits (B, V) and the step's keys and values, each
        (L, B, Hkv, hd), which ``write_step_kv`` puts at ``positions``. The same arithmetic as the
        eager step up to the rounding of the 16-bit attention output (its last key's share is added
        apart); greedy agreement is tested (tests/service/engine/test_compiled_decode.py).
        """
        B = tokens.shape[0]
        rows = slice(0, B)
        cos, sin = self.cos[positions][:, None, None], self.sin[positions][:, None, None]  # (B, 1, 1, hd)
        key_pos = torch.arange(k_all.shape[3], device=self.device)  # (S,)
        earlier = (key_pos[None, :] < positions[:, None])[:, None, None, :]  # (B, 1, 1, S)
        new_k: list[torch.Tensor] = []
        new_v: list[torch.Tensor] = []

        def attend(i, q, k, v):  # q (B, H, 1, hd); k, v (B, Hkv, 1, hd)
            new_k.append(k[:, :, 0])
            new_v.append(v[:, :, 0])
            g = self.n_heads // self.n_kv
            qg = q.reshape(B, self.n_kv, g, self.head_dim)  # q heads h*g..h*g+g-1 share kv head h
            s_cache = (qg @ k_all[i].transpose(-1, -2)).float().mul(self.scale)  # (B, Hkv, g, S)
            s_cache = s_cache.masked_fill(~earlier, float("-inf"))
            s_own = (qg @ k.transpose(-1, -2)).float().mul(self.scale)  # (B, Hkv, g, 1)
            probs = torch.softmax(torch.cat([s_cache, s_own], dim=-1), dim=-1).to(q.dtype)  # (B, Hkv, g, S + 1)
            out = probs[..., :-1] @ v_all[i] + probs[..., -1:] * v  # (B, Hkv, g, hd)
            return out.reshape(B, self.n_heads, 1, self.head_dim)

        x = F.embedding(tokens[:, None], self.embed)  # (B, 1, D)
        x = self._layers(x, rows, cos, sin, attend, use_lora)
        return self.logits(x[:, 0]), torch.stack(new_k), torch.stack(new_v)  # (B, V), (L, B, Hkv, hd) x 2

    def write_step_kv(self, positions: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Put a pure step's keys and values (L, B, Hkv, hd) at ``positions`` (B,) of rows ``0..B-1``, every layer at once."""
        row_idx = torch.arange(positions.shape[0], device=self.device)
        self.k_cache[:, row_idx, :, positions] = k_new.transpose(0, 1)  # indexed view: (B, L, Hkv, hd)
        self.v_cache[:, row_idx, :, positions] = v_new.transpose(0, 1)
