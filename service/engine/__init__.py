"""Generation engines. ``build_engine`` loads the base model and picks the engine from settings."""

from __future__ import annotations

import logging

from service.engine.base import Engine
from service.settings import Settings

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """Load the model and tokenizer (heavy: imported late) and return a started-able engine."""
    import torch

    from service.model_loading import load_base_model, load_tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_base_model(settings)
    tokenizer = load_tokenizer(settings)
    if settings.engine == "naive":
        from service.engine.naive import NaiveEngine

        return NaiveEngine(model, tokenizer, max_queue=settings.max_queue)
    from service.engine.batched import BatchedEngine

    return BatchedEngine(
        model, tokenizer, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
        adapter_cache_size=settings.adapter_cache_size,
    )
