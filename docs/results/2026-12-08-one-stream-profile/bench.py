"""Micro-benchmark: one-row decode matmuls of SmolLM2-135M's shapes, bf16 dense vs int8pack vs int4pack (CPU)."""
import time, torch, torch.nn.functional as F
torch.manual_seed(0)
torch.set_num_threads(int(__import__('os').environ.get('THREADS', '2')))
shapes = {"qkv": (960, 576), "o": (576, 576), "gu": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
counts = {"qkv": 30, "o": 30, "gu": 30, "down": 30, "lm_head": 1}

def int8(w):
    s = w.float().abs().amax(1).clamp(min=1e-8) / 127
    q = (w.float() / s[:, None]).round().clamp(-128, 127).to(torch.int8)
    return q, s.to(w.dtype)

def int4(w, g):
    n, k = w.shape
    wf = w.float().reshape(n, k // g, g)
    mn, mx = wf.amin(-1), wf.amax(-1)
    scale = ((mx - mn).clamp(min=1e-8) / 15)
    zero = mn + scale * 8  # torch's int4pack: w = (q - 8) * scale + zero
    q = ((wf - mn[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (k/g, n, 2)
    deq = ((q.reshape(n, k // g, g).float() - 8) * scale[..., None] + zero[..., None]).reshape(n, k)
    return packed, sz, deq

def bench(fn, reps=200):
    for _ in range(10): fn()
    t = time.perf_counter()
    for _ in range(reps): fn()
    return (time.perf_counter() - t) / reps

tot = {"bf16": 0.0, "int8": 0.0, "int4g32": 0.0, "int4g64": 0.0}
for name, (n, k) in shapes.items():
    w = (torch.randn(n, k) * 0.02).to(torch.bfloat16)
    x = torch.randn(1, k).to(torch.bfloat16)
    q8, s8 = int8(w)
    res = {"bf16": bench(lambda: F.linear(x, w)), "int8": bench(lambda: torch._weight_int8pack_mm(x, q8, s8))}
    for g in (32, 64):
        p, sz, deq = int4(w, g)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz)
        ref = F.linear(x.float(), deq)
        err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
        res[f"int4g{g}"] = bench(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz))
        res[f"err{g}"] = err
    for key in tot:
        tot[key] += res[key] * counts[name]
    print(name, {k: (f"{v*1e6:.1f}us" if not k.startswith("err") else f"{v:.3g}") for k, v in res.items()})
print("per token (matmuls only):", {k: f"{v*1e3:.2f}ms" for k, v in tot.items()})
print("ratios vs int8:", {k: round(tot["int8"] / v, 2) for k, v in tot.items()})
