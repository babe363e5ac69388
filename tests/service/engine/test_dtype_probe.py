"""ASSISTANT_DTYPE=auto: the serving dtype is measured on this machine, not assumed."""

from __future__ import annotations

import torch

from service.engine.dtype_probe import choose_dtype


def test_auto_dtype_times_both_and_keeps_float32_unless_the_other_is_faster_and_agrees(base_model, tokenizer):
    dtype, report = choose_dtype(base_model, tokenizer, steps=3)
    assert set(report.decode_ms) == {"float32", "bfloat16"} and all(ms > 0 for ms in report.decode_ms.values())
    assert report.agreement["float32"] == 1.0
    speedup = report.decode_ms["float32"] / report.decode_ms["bfloat16"]
    if dtype == torch.bfloat16:
        assert speedup >= 1.1 and report.agreement["bfloat16"] >= 2 / 3
    else:
        assert speedup < 1.1 or report.agreement["bfloat16"] < 2 / 3, report
    assert report.chosen == str(dtype).removeprefix("torch.") and report.reason
    # a speed-up no dtype reaches keeps float32, and says why
    dtype, report = choose_dtype(base_model, tokenizer, steps=2, min_speedup=1000.0)
    assert dtype == torch.float32 and "not faster" in report.reason


def test_healthz_reports_the_serving_dtype_and_how_it_was_chosen(client):
    engine = client.get("/healthz").json()["engine"]
    assert engine["dtype"] in ("float32", "bfloat16")
    assert engine["dtype_choice"]["chosen"] == engine["dtype"] and engine["dtype_choice"]["reason"]
    # and how wide a decode step runs on int8 weights (ASSISTANT_INT8_DECODE_ROWS=-1 measures; never in float32)
    int8 = engine["int8_decode"]
    assert int8["reason"] and (int8["rows"] == 0 if engine["dtype"] == "float32" else int8["rows"] >= 0)
