import threading, time, sys, os
import torch
from service.engine.runner import LlamaRunner
from service.model_loading import load_base_model
from service.settings import Settings
from service.threads import cores, single_threaded_control
single_threaded_control()
model = load_base_model(Settings(), dtype=torch.bfloat16)
r = LlamaRunner(model, max_rows=16, dtype=torch.bfloat16, int8_rows=1)
pos = torch.tensor([40]); tk = torch.tensor([42])
N = int(os.environ.get("NT", "2"))
def bench(label):
    torch.set_num_threads(N)
    with torch.inference_mode():
        r.ensure_length(64)
        for _ in range(5): r.decode(tk, pos, False)
        t = time.perf_counter()
        for _ in range(40): r.decode(tk, pos, False)
        print(label, N, f"{(time.perf_counter()-t)/40*1e3:.2f} ms", flush=True)
order = sys.argv[1:]
for o in order:
    if o == "main": bench("main")
    else:
        x = threading.Thread(target=bench, args=(o,)); x.start(); x.join()
