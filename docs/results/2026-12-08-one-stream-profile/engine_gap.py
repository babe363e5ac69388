import sys, tempfile, time, threading
from pathlib import Path
import torch
from service.bench import PROMPTS, _chat_ids, _generate
from service.bench_common import make_random_adapter
from service.engine.base import AdapterRef
from service.engine.batched import BatchedEngine
from service.model_loading import load_base_model, load_tokenizer
from service.settings import Settings
from service.threads import cores, single_threaded_control

single_threaded_control()
settings = Settings(); tok = load_tokenizer(settings)
model = load_base_model(settings, dtype=torch.bfloat16)
with tempfile.TemporaryDirectory() as tmp:
    ref = AdapterRef(key="p0", path=make_random_adapter(model, Path(tmp) / "a0", seed=1000, r=8))
    eng = BatchedEngine(model, tok, max_batch_size=16, max_queue=16, adapter_cache_size=4, dtype=torch.bfloat16,
                        prefix_cache_bytes=0, threads=cores(), int8_rows=1)
    eng.start()
    ids = _chat_ids(tok, [{"role": "user", "content": PROMPTS[0]}])
    _generate(eng, ids, ref, 8, ignore_eos=True)
    for trial in range(3):
        c = eng._counters
        f0, d0 = c.forward_seconds, c.decode_passes
        t = time.perf_counter(); _generate(eng, ids, ref, 64, ignore_eos=True); dt = time.perf_counter() - t
        print(f"wall/token {dt/64*1e3:.2f} ms; forward/pass {(c.forward_seconds-f0)/max(1,c.decode_passes-d0)*1e3:.2f} ms over {c.decode_passes-d0} passes")
    eng.stop()
    r = eng.runner
    pos = torch.tensor([len(ids) + 10]); tk = torch.tensor([42])
    def bench(label):
        with torch.inference_mode():
            for _ in range(5): r.decode(tk, pos, True)
            t = time.perf_counter()
            for _ in range(30): r.decode(tk, pos, True)
            print(label, f"{(time.perf_counter()-t)/30*1e3:.2f} ms", torch.get_num_threads())
    torch.set_num_threads(cores()); bench("main thread")
    def th():
        torch.set_num_threads(cores()); bench("new thread")
    x = threading.Thread(target=th); x.start(); x.join()
    print("engine thread counters", {k: getattr(eng._counters, k) for k in ("decode_passes", "prefill_passes")})
