"""`assistant bench serve` runs end to end (tiny sizes) and reports every scenario and ratio."""

from __future__ import annotations

import json

from service.bench import run_serve_bench
from service.settings import Settings


def test_bench_serve_reports_every_scenario(model_data_dir, tmp_path):
    settings = Settings(data_dir=model_data_dir, dev_mode=True, dtype="float32")
    out = tmp_path / "bench.json"
    r = run_serve_bench(settings, users=2, adapters=2, max_new_tokens=4, many_adapters=0, skip_naive=True, repeats=1, out_path=out)
    assert json.loads(out.read_text())["ratios"] == r["ratios"]
    for name in ("batched_1_user", "batched_distinct", "batched_one_adapter"):
        assert r[name]["tokens"] == r[name]["requests"] * 4 and r[name]["tokens_per_s"] > 0
    # a five-turn conversation: every later turn reused the cache of the one before
    turns = r["prefix_reuse"]
    assert len(turns["ttft_s_with_reuse"]) == len(turns["ttft_s_without_reuse"]) == 5
    assert r["engine_stats"]["prefix_cache"]["reused_tokens"] >= sum(turns["prompt_tokens"][:4])
    lj = r["long_prompt_join"]
    assert lj["chunked"]["long_prompt_tokens"] > 2000 and lj["chunked"]["chunk_tokens"] == settings.prefill_chunk_tokens
    assert set(r["ratios"]) >= {"distinct_vs_one_adapter", "ttft_p95_vs_single_user", "ttft_turn5_with_vs_without_prefix_reuse",
                                "itl_p95_during_long_prompt_vs_idle_chunked", "itl_p95_during_long_prompt_vs_idle_one_pass"}
