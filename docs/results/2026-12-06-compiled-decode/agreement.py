"""How close the compiled one-row decode step stays to float32, against the eager step on the same weights.

For the dtype probe's prompts and 12 more (the bench's), no adapter: the float32 runner's 48 greedy tokens; each
bfloat16 runner (dense or int8, eager or compiled) reproduces them (greedy prefix agreement) and, fed those tokens,
gives them log-probabilities (the largest |drift| from float32's, in nats). Also times the warm-up (inductor's
on-disk cache is warm after the benchmark compiled the same graphs).

    ASSISTANT_DEV_MODE=1 python docs/results/2026-12-06-compiled-decode/agreement.py OUT.json
"""
import json
import sys
import time

import torch

from service.bench import PROMPTS
from service.engine.compiled_decode import CompiledDecode
from service.engine.dtype_probe import PROBE_PROMPTS, _greedy, _greedy_logprobs, _prompt_ids, float32_reference
from service.engine.runner import LlamaRunner
from service.model_loading import load_base_model, load_tokenizer
from service.settings import Settings
from service.threads import single_threaded_control

N = 48
single_threaded_control()
settings = Settings(dev_mode=True)
tok = load_tokenizer(settings)
prompts = [_prompt_ids(tok, t) for t in list(PROBE_PROMPTS) + list(PROMPTS)[:12]]
torch.set_num_threads(2)
with torch.inference_mode():
    fp32 = LlamaRunner(load_base_model(settings, dtype=torch.float32), max_rows=1, dtype=torch.float32, initial_capacity=256)
    ref = float32_reference(fp32, prompts, N)
    del fp32
    model = load_base_model(settings, dtype=torch.bfloat16)
out = {"tokens": N, "prompts": len(prompts), "runners": {}}
for int8 in (0, 1):
    for compiled in (False, True):
        r = LlamaRunner(model, max_rows=1, dtype=torch.bfloat16, initial_capacity=256, int8_rows=int8)
        name = ("int8" if int8 else "bf16") + ("_compiled" if compiled else "_eager")
        if compiled:
            torch._dynamo.reset()  # its own graphs (one runner per process in a server)
            t0 = time.perf_counter()
            c = CompiledDecode.attach(r, threads=2)
            out.setdefault("warm_s", {})[name] = round(time.perf_counter() - t0, 1)
        agree, drift = [], []
        with torch.inference_mode():
            for p, want, lp in zip(prompts, ref.tokens, ref.logprobs):
                got = _greedy(r, p, N)
                agree.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), N) / N)
                drift.append(max(abs(a - b) for a, b in zip(_greedy_logprobs(r, p, want), lp)))
        out["runners"][name] = {"greedy_prefix_agreement_mean": round(sum(agree) / len(agree), 3),
                                "prompts_fully_agreeing": sum(a == 1.0 for a in agree),
                                "logprob_drift_max": round(max(drift), 3),
                                "logprob_drift_median": round(sorted(drift)[len(drift) // 2], 3),
                                **({"compiled": r.compiled.stats()} if compiled and r.compiled else {})}
        print(name, out["runners"][name], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
print(json.dumps(out, indent=2))
