import threading, time, sys
import torch
from service.engine.runner import LlamaRunner
from service.model_loading import load_base_model
from service.settings import Settings
from service.threads import cores, single_threaded_control
single_threaded_control()
model = load_base_model(Settings(), dtype=torch.bfloat16)
r = LlamaRunner(model, max_rows=16, dtype=torch.bfloat16, int8_rows=1)
pos = torch.tensor([40]); tk = torch.tensor([42])
def bench(label):
    torch.set_num_threads(cores())
    with torch.inference_mode():
        r.ensure_length(64)
        for _ in range(5): r.decode(tk, pos, False)
        t = time.perf_counter()
        for _ in range(40): r.decode(tk, pos, False)
        print(label, f"{(time.perf_counter()-t)/40*1e3:.2f} ms", flush=True)
bench("main 1")
for name in ("thread A", "thread B"):
    x = threading.Thread(target=bench, args=(name,)); x.start(); x.join()
bench("main 2")
x = threading.Thread(target=lambda: [bench("thread C x3") for _ in range(3)]); x.start(); x.join()
