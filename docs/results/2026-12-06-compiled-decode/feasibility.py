"""Feasibility (the third variant, which landed): a pure decode step (no host reads, no cache writes inside the graph), compiled. Run: ASSISTANT_DEV_MODE=1 python feasibility.py 128 --lora"""
import sys, time, json
import torch
from service.settings import Settings
from service.model_loading import load_base_model
from service.engine.runner import LlamaRunner
from service.engine.adapter_cache import LoraWeights

torch.set_num_threads(2)
s = Settings(dev_mode=True)
model = load_base_model(s)
r = LlamaRunner(model, max_rows=16, dtype=torch.bfloat16, int8_rows=0 if "--no-int8" in sys.argv else 1)
prompt = list(range(100, 140))
BUCKET = int(sys.argv[1]) if len(sys.argv) > 1 else 128
use_lora = "--lora" in sys.argv
if use_lora:
    torch.manual_seed(0)
    a = {m: torch.randn(r.n_layers, r._group_dims[g][0], 8) * 0.02 for g, ms in {"qkv": ("q_proj","k_proj","v_proj"), "o": ("o_proj",), "gu": ("gate_proj","up_proj"), "down": ("down_proj",)}.items() for m in ms}
    outd = {"q_proj": r.d_q, "k_proj": r.d_kv, "v_proj": r.d_kv, "o_proj": r.d_model, "gate_proj": r.d_ff, "up_proj": r.d_ff, "down_proj": r.d_model}
    b = {m: torch.randn(r.n_layers, 8, outd[m]) * 0.02 for m in a}
    w = LoraWeights.__new__(LoraWeights)
    try:
        w = LoraWeights(key="x", a=a, b=b, rank=8)
    except TypeError as e:
        print("LoraWeights sig", e); raise
    r.ensure_rank(8); r.set_row_adapter(0, w)

import torch.nn.functional as F
def decode_static(tokens, positions, n_keys: int):
    """Pure: reads the caches, returns logits and the new keys/values (L, B, Hkv, hd) to write after."""
    B = tokens.shape[0]
    r._int8_now = B <= r.int8_rows
    rows = slice(0, B)
    cos, sin = r.cos[positions][:, None, None], r.sin[positions][:, None, None]
    key_pos = torch.arange(n_keys)
    mask = (key_pos[None, :] < positions[:, None])[:, None, None, :]  # (B,1,1,S): earlier positions only
    new_k, new_v = [], []
    H, Hkv, hd = r.n_heads, r.n_kv, r.head_dim
    g = H // Hkv
    def attend(i, q, k, v):
        new_k.append(k[:, :, 0]); new_v.append(v[:, :, 0])
        kc, vc = r.k_cache[i, rows, :, :n_keys], r.v_cache[i, rows, :, :n_keys]  # (B,Hkv,S,hd)
        qg = q.reshape(B, Hkv, g, hd)
        s_cache = (qg @ kc.transpose(-1, -2)).float() * r.scale  # (B,Hkv,g,S)
        s_cache = s_cache.masked_fill(~mask[:, :, 0], float("-inf"))
        s_self = (qg.float() * k.float()).sum(-1, keepdim=True) * r.scale  # (B,Hkv,g,1)  k: (B,Hkv,1,hd)
        probs = torch.softmax(torch.cat([s_cache, s_self], -1), -1).to(q.dtype)
        out = probs[..., :-1] @ vc + probs[..., -1:] * v  # (B,Hkv,g,hd)
        return out.reshape(B, H, 1, hd)
    x = F.embedding(tokens[:, None], r.embed)
    x = r._layers(x, rows, cos, sin, attend, use_lora)
    return r.logits(x[:, 0]), torch.stack(new_k), torch.stack(new_v)

def step(fn, t, p):
    logits, nk, nv = fn(t, p, BUCKET)
    B = t.shape[0]
    row_idx = torch.arange(B)
    r.k_cache[:, row_idx, :, p] = nk.transpose(0, 1)
    r.v_cache[:, row_idx, :, p] = nv.transpose(0, 1)
    return logits

def run(n, fn):
    with torch.inference_mode():
        logits = r.extend([prompt], [0], 0, use_lora)
        tok = int(logits[0].argmax()); pos = len(prompt); toks = [tok]
        t0 = time.perf_counter()
        for _ in range(n):
            logits = fn(torch.tensor([tok]), torch.tensor([pos]))
            tok = int(logits[0].argmax()); pos += 1; toks.append(tok)
        return (time.perf_counter() - t0) / n * 1e3, toks

eager = lambda t, p: r.decode(t, p, use_lora)
run(8, eager)
e = [run(64, eager) for _ in range(3)]
out = {"eager_ms": [x[0] for x in e]}
print(json.dumps(out), flush=True)
static_eager = lambda t, p: step(decode_static, t, p)
se = [run(64, static_eager) for _ in range(2)]
out["static_eager_ms"] = [x[0] for x in se]
out["static_eager_same"] = se[0][1] == e[0][1]
print(json.dumps(out), flush=True)
mode = "max-autotune-no-cudagraphs" if "--autotune" in sys.argv else None
compiled_core = torch.compile(decode_static, dynamic=False, fullgraph="--fullgraph" in sys.argv, mode=mode)
comp = lambda t, p: step(compiled_core, t, p)
t0 = time.perf_counter()
run(2, comp)
out["compile_s"] = time.perf_counter() - t0
c = [run(64, comp) for _ in range(3)]
out["compiled_ms"] = [x[0] for x in c]
out["compiled_same"] = c[0][1] == e[0][1]
out["agree"] = sum(a == b for a, b in zip(c[0][1], e[0][1])) / len(e[0][1])
print(json.dumps(out), flush=True)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(4, comp)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
