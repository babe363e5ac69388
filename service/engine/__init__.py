"""Generation engines. ``build_engine`` loads the base model and picks the engine from settings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from service.engine.base import Engine
from service.settings import Settings

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """Load the model and tokenizer (heavy: imported late) and return a started-able engine."""
    if settings.compile_decode:  # inductor's compiled code kept with the data, so a restart finds it (23 s, not
        # 2-3 minutes); before anything loads transformers, which fixes inductor's cache dir (/tmp) in the environment
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(settings.data_dir) / "compile-cache"))
    import torch

    from service.model_loading import load_base_model, load_tokenizer

    from service.threads import cores, run_in_thread

    threads = settings.server_threads or cores()  # the engine thread's budget (see service.threads)
    tokenizer = load_tokenizer(settings)
    if settings.engine == "vllm":  # the model runs on the vLLM server, not here
        from service.engine.vllm import VllmEngine

        assert settings.vllm_url is not None  # Settings' validation requires it with ASSISTANT_ENGINE=vllm
        return VllmEngine(settings.vllm_url, tokenizer, model=settings.vllm_model, api_key=settings.vllm_api_key,
                          max_batch_size=settings.max_batch_size, max_queue=settings.max_queue)
    model = load_base_model(settings)
    if settings.engine == "naive":
        from service.engine.naive import NaiveEngine

        return NaiveEngine(model, tokenizer, max_queue=settings.max_queue, threads=threads)
    from service.engine.batched import BatchedEngine
    from service.engine.dtype_probe import DtypeReport, Int8Report, choose_dtype, choose_int8_rows

    if settings.dtype == "auto":
        dtype, report = run_in_thread(lambda: choose_dtype(model, tokenizer), threads=threads, name="dtype-probe")
    else:
        dtype = getattr(torch, settings.dtype)
        report = DtypeReport(chosen=settings.dtype, reason="set by ASSISTANT_DTYPE")
    if settings.int8_decode_rows < 0:
        int8 = run_in_thread(lambda: choose_int8_rows(model, tokenizer, dtype, reference=report.reference), threads=threads, name="int8-probe")
    else:
        int8 = Int8Report(settings.int8_decode_rows, "set by ASSISTANT_INT8_DECODE_ROWS")
    engine = BatchedEngine(
        model, tokenizer, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
        adapter_cache_size=settings.adapter_cache_size, dtype=dtype,
        prefill_chunk_tokens=settings.prefill_chunk_tokens, prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
        threads=threads, int8_rows=int8.rows,
    )
    if settings.compile_decode:  # in the background: the engine serves eagerly until the step is ready
        from service.engine.compiled_decode import CompiledDecode

        engine.compiled_decode = CompiledDecode.attach(engine.runner, threads=threads, background=True,
                                                       pause_while=engine.needs_cpu)
    engine.dtype_report = report.as_dict()
    engine.int8_report = {**int8.as_dict(), "rows": engine.runner.int8_rows}
    return engine
