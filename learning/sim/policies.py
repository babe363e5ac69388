"""Policy access: the base model and stored adapters from the adapter store, and generation and KL with them."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:
    from learning.sim.evaluate import EvalConfig
    from service.settings import Settings

logger = logging.getLogger(__name__)

BASE = "base"


class Generation(NamedTuple):
    texts: list[str]
    sequences: list[list[int]]  # prompt ids + reply ids (up to and including end-of-turn)
    prompt_lens: list[int]


class PolicyBank:
    """The base model with stored adapters loaded side by side; one active at a time.

    ``None`` (or ``"base"``) is the base model: the adapter disabled, as the trainer's reference.
    """

    def __init__(self, settings: "Settings", cfg: EvalConfig) -> None:
        from service.model_loading import load_base_model, load_tokenizer

        self.settings, self.cfg = settings, cfg
        self.tokenizer = load_tokenizer(settings)
        self.model = load_base_model(settings)
        self.peft = None
        self.paths: dict[str, Path] = {}
        self._cache: dict[tuple[str, tuple[str, ...]], Generation] = {}
        self.sampler = None  # the serving engine (learning.rollouts.EngineSampler), built before PEFT wraps the base
        self.generator_label = "HF generate (float32)"
        if cfg.engine == "batched":
            from learning.config import Budgets
            from learning.rollouts import rollout_sampler

            sampler, report = rollout_sampler(settings, Budgets(rollout_max_rows=max(cfg.batch_size, 1)), self.model,
                                              self.tokenizer)
            if report["engine"] == "batched":
                self.sampler = sampler
                self.generator_label = f"the batched serving engine ({report['dtype']}: {report['reason']})"

    def add(self, label: str, path: Path) -> None:
        """Load a stored adapter directory (safetensors only) under ``label``."""
        from peft import PeftModel

        from service.adapter_store import validate_adapter_dir

        if label in self.paths:
            return
        validate_adapter_dir(path)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=label, is_trainable=False)
            self.peft.eval()
        else:
            self.peft.load_adapter(str(path), adapter_name=label, is_trainable=False)
        self.paths[label] = path

    @contextlib.contextmanager
    def use(self, label: str | None):
        """The model to call, with ``label``'s adapter active (``None``/"base": adapter disabled)."""
        if label in (None, BASE):
            if self.peft is None:
                yield self.model
            else:
                with self.peft.disable_adapter():
                    yield self.peft
            return
        if label not in self.paths:
            raise KeyError(f"adapter {label} was not loaded")
        self.peft.set_adapter(label)
        yield self.peft

    def render(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, label: str | None, prompts: Sequence[str]) -> Generation:
        key = (label or BASE, tuple(prompts))
        if key not in self._cache:
            started = time.monotonic()
            self._cache[key] = self._generate(label, list(prompts))
            logger.info("%s: %d replies in %.0f s", label or BASE, len(prompts), time.monotonic() - started)
        return self._cache[key]

    def _generate(self, label: str | None, prompts: list[str]) -> Generation:
        if self.sampler is not None:
            return self._generate_batched(label, prompts)
        return self._generate_hf(label, prompts)

    def _generate_batched(self, label: str | None, prompts: list[str]) -> Generation:
        from service.engine.adapter_cache import load_lora
        from service.engine.base import AdapterRef

        tok, cfg = self.tokenizer, self.cfg
        weights = None
        if label not in (None, BASE):
            if label not in self.paths:
                raise KeyError(f"adapter {label} was not loaded")
            import torch

            weights = load_lora(AdapterRef(label, self.paths[label]), num_layers=self.sampler.engine.runner.n_layers,
                                dtype=torch.float32)
        prompt_ids = [tok(self.render(p), add_special_tokens=False).input_ids for p in prompts]
        out = self.sampler.generate(prompt_ids, weights, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    seed=cfg.seed)
        return Generation([tok.decode(ids, skip_special_tokens=True).strip() for ids, _ in out],
                          [p + ids for p, (ids, _) in zip(prompt_ids, out)], [len(p) for p in prompt_ids])

    def _generate_hf(self, label: str | None, prompts: list[str]) -> Generation:
        import torch

        tok, cfg = self.tokenizer, self.cfg
        tok.padding_side = "left"
        eos = tok.eos_token_id
        texts, seqs, plens = [], [], []
        device = self.settings.device
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start:start + cfg.batch_size]
            enc = tok([self.render(p) for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": 1.0, "top_k": 0} \
                if cfg.temperature > 0 else {"do_sample": False}
            torch.manual_seed(cfg.seed + start)
            with torch.no_grad(), self.use(label) as model:
                out = model.generate(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                                     max_new_tokens=cfg.max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                     **sampling).cpu()  # (B, P + T)
            width = enc.input_ids.shape[1]
            for row in range(len(chunk)):
                prompt_ids = enc.input_ids[row][enc.attention_mask[row].bool()].tolist()
                reply = out[row, width:].tolist()
                if eos in reply:
                    reply = reply[:reply.index(eos) + 1]
                texts.append(tok.decode(reply, skip_special_tokens=True).strip())
                seqs.append(prompt_ids + reply)
                plens.append(len(prompt_ids))
        return Generation(texts, seqs, plens)

    def kl_to_base(self, label: str, *prompt_sets: Sequence[str]) -> float | None:
        """Mean per-token KL(adapter || base) over the adapter's own replies to every prompt set
        (each set generated once: the replies already made for the other measurements are reused)."""
        import torch
        import torch.nn.functional as F

        gens = [self.generate(label, prompts) for prompts in prompt_sets]
        total, count = 0.0, 0
        for seq, plen in ((s, n) for gen in gens for s, n in zip(gen.sequences, gen.prompt_lens)):
            if len(seq) <= plen:
                continue
            ids = torch.tensor([seq], device=self.settings.device)  # (1, L)
            with torch.no_grad():
                with self.use(label) as m:
                    logits_a = m(input_ids=ids).logits[0, plen - 1:-1].float()  # (T, V): predicts each reply token
                with self.use(None) as m:
                    logits_b = m(input_ids=ids).logits[0, plen - 1:-1].float()  # (T, V)
            logp_a, logp_b = F.log_softmax(logits_a, -1), F.log_softmax(logits_b, -1)
            kl = (logp_a.exp() * (logp_a - logp_b)).sum(-1)  # (T,)
            total += float(kl.sum())
            count += kl.numel()
        return total / count if count else None
