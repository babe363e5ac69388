"""Fixtures for the engine tests: the embedded model, random adapters, HF reference outputs."""

from __future__ import annotations

import pytest
import torch

from service.engine.base import AdapterRef
from service.settings import Settings

QUESTIONS = ["Explain what a hash table is.", "Write a short poem about the sea.", "How do plants make food?"]


@pytest.fixture(scope="session")
def engine_settings(model_data_dir) -> Settings:
    return Settings(data_dir=model_data_dir, dev_mode=True)


@pytest.fixture(scope="session")
def tokenizer(engine_settings):
    from service.model_loading import load_tokenizer

    return load_tokenizer(engine_settings)


@pytest.fixture(scope="session")
def base_model(engine_settings):
    """The base model the engines under test share (never wrapped by PEFT)."""
    from service.model_loading import load_base_model

    return load_base_model(engine_settings)


@pytest.fixture(scope="session")
def prompts(tokenizer) -> list[list[int]]:
    out = []
    for q in QUESTIONS:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        out.append(list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc))
    return out


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, base_model) -> list[AdapterRef]:
    """Three random rank-8 LoRA adapters on all linear layers (PEFT files, safetensors)."""
    from service.bench import make_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [
        AdapterRef(key=f"t{i}", path=make_random_adapter(base_model, root / f"a{i}", seed=10 + i, r=8, b_std=0.05))
        for i in range(3)
    ]


@pytest.fixture(scope="session")
def reference(engine_settings, adapters, tokenizer):
    """``reference(prompt_ids, adapter, n)`` -> HF ``generate(do_sample=False)`` tokens with that adapter alone.

    Uses its own base model copy wrapped in a PeftModel holding every test adapter;
    the output is cut before the first stop token, as the engine does not emit it.
    """
    from peft import PeftModel

    from service.engine.sampling import stop_token_ids
    from service.model_loading import load_base_model

    base = load_base_model(engine_settings)
    peft = PeftModel.from_pretrained(base, str(adapters[0].path), adapter_name=adapters[0].key)
    for ad in adapters[1:]:
        peft.load_adapter(str(ad.path), adapter_name=ad.key)
    peft.eval()
    stops = stop_token_ids(tokenizer, base.config)
    cache: dict = {}

    def run(prompt_ids: list[int], adapter: AdapterRef | None, n: int) -> list[int]:
        key = (tuple(prompt_ids), adapter.key if adapter else None, n)
        if key in cache:
            return cache[key]
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            if adapter is None:
                with peft.disable_adapter():
                    out = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
            else:
                peft.set_adapter(adapter.key)
                out = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
        toks = out[0, len(prompt_ids):].tolist()
        for i, t in enumerate(toks):
            if t in stops:
                toks = toks[:i]
                break
        cache[key] = toks
        return toks

    return run
