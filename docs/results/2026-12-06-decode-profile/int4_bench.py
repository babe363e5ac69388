import torch, time
torch.set_num_threads(2)
shapes = {"qkv": (960, 576), "o": (576, 576), "gu": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
def t(f, n=200):
    for _ in range(10): f()
    t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n * 1e6
tot = {"bf16": 0, "int8": 0}
for gs in (32, 64):
    tot[f"int4g{gs}"] = 0
for name, (N, K) in shapes.items():
    w = torch.randn(N, K) * 0.02
    x = torch.randn(1, K, dtype=torch.bfloat16)
    wb = w.to(torch.bfloat16)
    s8 = w.abs().amax(1) / 127
    q8 = torch.round(w / s8[:, None]).clamp(-127, 127).to(torch.int8)
    s8b = s8.to(torch.bfloat16)
    reps = 30 if name != "lm_head" else 1
    tot["bf16"] += reps * t(lambda: torch.nn.functional.linear(x, wb))
    tot["int8"] += reps * t(lambda: torch._weight_int8pack_mm(x, q8, s8b))
    row = [name, t(lambda: torch.nn.functional.linear(x, wb)), t(lambda: torch._weight_int8pack_mm(x, q8, s8b))]
    for gs in (32, 64):
        # asymmetric int4 per group: values 0..15
        wg = w.view(N, K // gs, gs)
        mn, mx = wg.amin(-1), wg.amax(-1)
        scale = ((mx - mn) / 15).clamp(min=1e-8)
        zero = mn + scale * 8
        q = torch.round((wg - mn[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).view(N, K)
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (K/gs, N, 2)
        f = lambda: torch._weight_int4pack_mm_for_cpu(x, packed, gs, sz)
        us = t(f)
        row.append(us)
        tot[f"int4g{gs}"] += reps * us
        if gs == 32 and name == "gu":
            ref = torch.nn.functional.linear(x.float(), w)
            got = f().float()
            print("int4 rel err", ((got - ref).norm() / ref.norm()).item())
    print(" ".join(f"{v:.1f}" if isinstance(v, float) else v for v in row))
print({k: round(v / 1000, 2) for k, v in tot.items()}, "ms per token (matmuls only)")
