"""Where one stream's decode step spends its time (issue 30): runner.decode alone, bf16 + int8 at one row."""
import sys, time, json
import torch
from service.settings import Settings
from service.model_loading import load_base_model
from service.engine.runner import LlamaRunner

torch.set_num_threads(2)
s = Settings(dev_mode=True)
model = load_base_model(s)
int8 = int(sys.argv[1]) if len(sys.argv) > 1 else 1
r = LlamaRunner(model, max_rows=16, dtype=torch.bfloat16, int8_rows=int8)
prompt = list(range(100, 140))


def run(n, decode):
    with torch.inference_mode():
        logits = r.extend([prompt], [0], 0, False)
        tok = int(logits[0].argmax())
        pos = len(prompt)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = decode(torch.tensor([tok]), torch.tensor([pos]), False)
            tok = int(logits[0].argmax()); pos += 1
        return (time.perf_counter() - t0) / n * 1e3

run(8, r.decode)
out = {"eager_ms": [run(64, r.decode) for _ in range(3)]}
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(16, r.decode)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
ev = prof.key_averages()
out["ops_per_step"] = sum(e.count for e in ev if e.key.startswith("aten::")) / 17
print(json.dumps(out))
if "--compile" in sys.argv:
    t0 = time.perf_counter()
    compiled = torch.compile(r.decode, dynamic=True)
    first = run(4, compiled)
    out["compile_s"] = time.perf_counter() - t0
    out["compiled_ms"] = [run(64, compiled) for _ in range(3)]
    print(json.dumps(out))
