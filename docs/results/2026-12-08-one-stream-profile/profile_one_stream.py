"""Where one stream's decode time goes: the engine's per-token time vs the runner's decode step alone vs its matmuls.

Run from the repo root: ASSISTANT_DEV_MODE=1 .venv/bin/python profile_one_stream.py OUT_DIR
"""
import json, sys, tempfile, time
from pathlib import Path

import torch

from service.bench import PROMPTS, _chat_ids, _generate
from service.bench_common import make_random_adapter
from service.engine.base import AdapterRef
from service.engine.batched import BatchedEngine
from service.model_loading import load_base_model, load_tokenizer
from service.settings import Settings
from service.threads import cores, single_threaded_control

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
single_threaded_control()
settings = Settings()
tok = load_tokenizer(settings)
model = load_base_model(settings, dtype=torch.bfloat16)
res = {"threads": cores()}
with tempfile.TemporaryDirectory() as tmp:
    ref = AdapterRef(key="p0", path=make_random_adapter(model, Path(tmp) / "a0", seed=1000, r=8))
    for int8_rows in (0, 1):
        eng = BatchedEngine(model, tok, max_batch_size=16, max_queue=16, adapter_cache_size=4, dtype=torch.bfloat16,
                            prefix_cache_bytes=0, threads=cores(), int8_rows=int8_rows)
        eng.start()
        ids = _chat_ids(tok, [{"role": "user", "content": PROMPTS[0]}])
        _generate(eng, ids, ref, 8, ignore_eos=True)  # adapter resident, warm
        best = None
        for _ in range(3):
            t = time.perf_counter(); _generate(eng, ids, ref, 64, ignore_eos=True); dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        res[f"engine_stream_ms_per_token_int8rows{int8_rows}"] = round(best / 64 * 1e3, 2)
        eng.stop()
        # the runner's decode step alone, on row 0 (the adapter still set there by the engine)
        r = eng.runner
        torch.set_num_threads(cores())
        pos = torch.tensor([len(ids) + 10]); tk = torch.tensor([42])
        with torch.inference_mode():
            for use_lora in (False, True):
                for _ in range(5): r.decode(tk, pos, use_lora)
                t = time.perf_counter()
                for _ in range(50): r.decode(tk, pos, use_lora)
                res[f"runner_decode_ms_int8rows{int8_rows}_lora{int(use_lora)}"] = round((time.perf_counter() - t) / 50 * 1e3, 2)
            if int8_rows:
                from torch.profiler import ProfilerActivity, profile
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(20): r.decode(tk, pos, True)
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
                (out / "profile_runner_int8_lora.txt").write_text(table)
        del eng
(out / "one_stream.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
