"""The llama.cpp peer of `assistant bench serve` runs our exact weights and adapters (issue 30)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.bench_common import make_random_adapter
from service.bench_peers import _permute, find_llama_server, write_lora_gguf, write_model_gguf
from service.model_loading import embedded_gguf_path, load_base_model, load_tokenizer
from service.settings import Settings


@pytest.fixture(scope="module")
def model(model_data_dir):
    return load_base_model(Settings(data_dir=model_data_dir, dev_mode=True), dtype=torch.float32)


@pytest.fixture(scope="module")
def f32_gguf(model, tmp_path_factory):
    """The served weights as a float32 GGUF, written once for the tests below."""
    out = tmp_path_factory.mktemp("gguf")
    return write_model_gguf(model, embedded_gguf_path(), out / "model-f32.gguf", quantized=False)


def test_permute_interleaves_each_heads_rotary_halves():
    # one head of 4 rows: llama.cpp's order takes the halves' rows alternately (0, 2, 1, 3)
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert _permute(w, 1)[:, 0].tolist() == [0, 4, 2, 6]
    assert _permute(np.concatenate([w, w + 8]), 2)[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]


def test_the_float32_gguf_loads_back_as_the_same_weights(model, f32_gguf):
    """transformers reads a llama GGUF by undoing llama.cpp's q/k order: every tensor must come back equal."""
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(f32_gguf.parent, gguf_file=f32_gguf.name, dtype=torch.float32).state_dict()
    ours = model.state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
                 "model.layers.3.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(back[name], ours[name]), name


def test_the_q4_1_gguf_keeps_the_shipped_files_tensor_types_and_size(model, tmp_path):
    import gguf

    path = write_model_gguf(model, embedded_gguf_path(), tmp_path / "model-q4_1.gguf", quantized=True)
    shipped = {t.name: t.tensor_type for t in gguf.GGUFReader(str(embedded_gguf_path())).tensors}
    written = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert written == shipped
    assert abs(path.stat().st_size - embedded_gguf_path().stat().st_size) < 2**16


def test_the_lora_gguf_holds_each_factor_in_llama_cpps_layout(model, tmp_path):
    import gguf
    from safetensors.numpy import load_file

    adapter = make_random_adapter(model, tmp_path / "a", seed=7, r=4)
    path = write_lora_gguf(adapter, model.config, tmp_path / "a.gguf")
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    src = load_file(str(adapter / "adapter_model.safetensors"))
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    assert len(tensors) == len(src)  # every A and B, nothing else
    q_b = src["base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight"]
    k_b = src["base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight"]
    v_b = src["base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"]
    assert np.array_equal(tensors["blk.2.attn_q.weight.lora_b"], _permute(q_b, model.config.num_attention_heads))
    assert np.array_equal(tensors["blk.2.attn_k.weight.lora_b"], _permute(k_b, model.config.num_key_value_heads))
    assert np.array_equal(tensors["blk.2.attn_v.weight.lora_b"], v_b)  # only q and k are reordered
    assert np.array_equal(tensors["blk.2.attn_q.weight.lora_a"],
                          src["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"])


@pytest.mark.skipif(find_llama_server() is None, reason="no llama-server here (make peer-llamacpp installs the peer)")
def test_llama_cpp_with_the_converted_adapter_generates_what_hf_and_peft_generate(model, model_data_dir, f32_gguf, tmp_path):
    from peft import PeftModel

    from service.bench_peers import LlamaServer

    tokenizer = load_tokenizer(Settings(data_dir=model_data_dir, dev_mode=True))
    adapter = make_random_adapter(model, tmp_path / "a", seed=1000, r=8)
    lora = write_lora_gguf(adapter, model.config, tmp_path / "a.gguf")
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "Give me three tips for a job interview."}],
                                        add_generation_prompt=True, tokenize=True)
    ids = list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)
    base = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0][len(ids):].tolist()
    peft = PeftModel.from_pretrained(model, str(adapter))
    try:
        tuned = peft.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0][len(ids):].tolist()
    finally:
        peft.unload()
    assert tuned != base  # the adapter changes the greedy reply, so agreement below means it was applied
    with LlamaServer(find_llama_server(), f32_gguf, [lora], slots=2, threads=1, log=tmp_path / "server.log") as srv:
        assert srv.complete(ids, 0, 16, ignore_eos=False)["tokens"] == tuned
        assert srv.complete(ids, None, 16, ignore_eos=False)["tokens"] == base  # scales zeroed: no adapter
