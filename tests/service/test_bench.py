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
    for name in ("batched_1_user", "batched_distinct", "batched_one_adapter", "batched_base"):
        assert r[name]["tokens"] == r[name]["requests"] * 4 and r[name]["tokens_per_s"] > 0
    # a five-turn conversation: every later turn reused the cache of the one before
    turns = r["prefix_reuse"]
    assert len(turns["ttft_s_with_reuse"]) == len(turns["ttft_s_without_reuse"]) == 5
    assert r["engine_stats"]["prefix_cache"]["reused_tokens"] >= sum(turns["prompt_tokens"][:4])
    lj = r["long_prompt_join"]
    assert lj["chunked"]["long_prompt_tokens"] > 2000 and lj["chunked"]["chunk_tokens"] == settings.prefill_chunk_tokens
    assert set(r["ratios"]) >= {"distinct_vs_one_adapter", "ttft_p95_vs_single_user", "ttft_turn5_with_vs_without_prefix_reuse",
                                "itl_p95_during_long_prompt_vs_idle_chunked", "itl_p95_during_long_prompt_vs_idle_one_pass"}


def test_bench_best_of_n_through_a_real_server_reports_its_cost_and_how_often_it_applied(model_data_dir):
    from service.bench_api import run_api_bench

    settings = Settings(data_dir=model_data_dir, dev_mode=True, dtype="float32")
    r = run_api_bench(settings, users=2, max_new_tokens=4, repeats=1, best_of_n=2)
    for side in ("off", "on"):
        assert r[side]["api_v1_users"]["failures"] == 0 and r[side]["api_v1_users"]["tokens"] > 0
    # every reply of a user with a stored reward was eligible; with 2 users x 2 rows the engine had room
    assert sum(r["replies_by_n"].values()) >= 1 + 2 + 2  # the 1-user run, then both users, /v1 and WebSocket
    assert r["replies_by_n"].get("2", 0) >= 1 and 0 < r["share_with_n_above_1"] <= 1
    assert set(r["ratios"]) == {"ttft_1_user_on_vs_off", "tokens_per_s_1_user_on_vs_off", "tokens_per_s_users_on_vs_off",
                                "ttft_p95_users_on_vs_off"}
