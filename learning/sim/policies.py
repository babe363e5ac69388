"""Policy access: the base model and stored adapters from the adapter store, and generation and KL with them.

Sampled evaluations draw ``k`` replies per prompt, each row with a seed of its own derived from
(seed set, prompt, sample index) (``row_seed``): every policy compared in one run, and in every
later run with the same seed set, answers a prompt's i-th sample with the same random numbers
(common random numbers), so the difference between two policies is measured without the noise of
two independent draws. The base model's replies are drawn on a seed set of their own (a coupled
draw would make an adapter close to the base tie with it by construction) and kept on disk by
``BaseReplyCache``, keyed by everything that decides them, so every policy and every later run
compares against the same base replies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence, cast

if TYPE_CHECKING:
    from peft import PeftModel

    from learning.sim.config import EvalConfig
    from service.settings import Settings

logger = logging.getLogger(__name__)

BASE = "base"


class Generation(NamedTuple):
    texts: list[str]
    sequences: list[list[int]]  # prompt ids + reply ids (up to and including end-of-turn)
    prompt_lens: list[int]


class Pool(NamedTuple):
    """``k`` replies per prompt: ``texts[i][j]`` is prompt i's j-th sample (seed ``row_seed(seed_set, prompt, j)``)."""

    texts: list[list[str]]
    sequences: list[list[list[int]]]  # prompt ids + reply ids, per prompt and sample (empty when read from the cache)
    prompt_lens: list[int]


def row_seed(seed_set: str, prompt: str, index: int) -> int:
    """The sampling seed of ``prompt``'s ``index``-th reply in ``seed_set`` (63 bits, stable across runs)."""
    digest = hashlib.sha256(f"{seed_set}\0{prompt}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BaseReplyCache:
    """The base model's sampled replies on disk, one JSON file per generation setting
    (base weights, generator and dtype, temperature, reply length): seed -> reply text.

    A run reads what earlier runs drew and adds what it draws anew; ``save`` writes atomically."""

    def __init__(self, directory: Path, key: dict) -> None:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(directory) / f"base-{name}.json"
        self.key = key
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.replies: dict[str, str] = stored.get("replies", {})
        self.hits = self.misses = 0

    def get(self, seed: int) -> str | None:
        text = self.replies.get(str(seed))
        self.hits += text is not None
        self.misses += text is None
        return text

    def put(self, seed: int, text: str) -> None:
        self.replies[str(seed)] = text

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": self.key, "replies": self.replies}))
        tmp.replace(self.path)


class PolicyBank:
    """The base model with stored adapters loaded side by side; one active at a time.

    ``None`` (or ``"base"``) is the base model: the adapter disabled, as the trainer's reference.
    """

    def __init__(self, settings: "Settings", cfg: EvalConfig) -> None:
        from service.model_loading import load_base_model, load_tokenizer

        self.settings, self.cfg = settings, cfg
        self.tokenizer = load_tokenizer(settings)
        self.model = load_base_model(settings)
        self.peft: PeftModel | None = None
        self.paths: dict[str, Path] = {}
        self.sampler = None  # the serving engine (learning.rollouts.EngineSampler), built before PEFT wraps the base
        self.generator_label = "HF generate (float32)"
        self.generator_key = "hf-float32"  # what decides the replies (the label also says why, in words that vary)
        if cfg.engine == "batched":
            from learning.config import Budgets
            from learning.rollouts import rollout_sampler

            sampler, report = rollout_sampler(settings, Budgets(rollout_max_rows=max(cfg.batch_size, 1)), self.model,
                                              self.tokenizer)
            if report["engine"] == "batched":
                self.sampler = sampler
                self.generator_label = f"the batched serving engine ({report['dtype']}: {report['reason']})"
                self.generator_key = f"batched-{report['dtype']}"

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
        if label not in self.paths or self.peft is None:  # the first add() made self.peft
            raise KeyError(f"adapter {label} was not loaded")
        self.peft.set_adapter(label)
        yield self.peft

    def render(self, prompt: str) -> str:
        # tokenize=False: the rendered text (the stub's union also covers token ids)
        return cast(str, self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True))

    def _decode(self, ids: list[int]) -> str:
        # one sequence of ids decodes to one string (the stub's union also covers a batch)
        return cast(str, self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    @property
    def _batched(self):
        """The batched engine's sampler (``cfg.engine == "batched"``), for the paths that use it."""
        if self.sampler is None:
            raise ValueError("this evaluation needs the batched engine (--engine batched)")
        return self.sampler

    def _generate(self, label: str | None, prompts: list[str], row_seeds: list[int] | None = None) -> Generation:
        """``row_seeds``: one sampling seed per prompt (the batched engine honours them; HF ``generate``
        draws each chunk from ``cfg.seed``)."""
        if self.sampler is not None:
            return self._generate_batched(label, prompts, row_seeds)
        return self._generate_hf(label, prompts)

    def _weights(self, label: str | None):
        """The adapter's LoRA weights for the batched engine (None: the base)."""
        if label in (None, BASE):
            return None
        if label not in self.paths:
            raise KeyError(f"adapter {label} was not loaded")
        import torch

        from service.engine.adapter_cache import load_lora
        from service.engine.base import AdapterRef

        return load_lora(AdapterRef(label, self.paths[label]), num_layers=self._batched.engine.runner.n_layers,
                         dtype=torch.float32)

    def _generate_batched(self, label: str | None, prompts: list[str], row_seeds: list[int] | None = None) -> Generation:
        cfg = self.cfg
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        out = self._batched.generate(prompt_ids, self._weights(label), max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, seed=cfg.seed, row_seeds=row_seeds)
        return Generation([self._decode(ids) for ids, _ in out],
                          [p + ids for p, (ids, _) in zip(prompt_ids, out)], [len(p) for p in prompt_ids])

    def sample_best_of(self, label: str | None, prompts: Sequence[str], k: int, seed_set: str, *, n: int, block: int,
                       score, harmful, first_block: int = 0) -> tuple[Pool, list[dict]]:
        """``k`` replies per prompt as personal best-of-n serves them (``service.best_of_n.ReplyChoice``,
        the server's own chooser): reply j of a prompt starts from ``row_seed(seed_set, prompt, j)``,
        so with n = 1 and whole replies it is ``sample``'s reply. Every choice still open samples its
        next block in one batched call. Returns the pool and each reply's record (its choices)."""
        from service.best_of_n import Candidate, ReplyChoice

        if self.sampler is None:
            raise ValueError("best-of-n evaluation needs the batched engine (--engine batched)")
        cfg, eos = self.cfg, self.tokenizer.eos_token_id
        started = time.monotonic()
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        choices = [[ReplyChoice(prompt=p, n=n, block=block, first_block=first_block, max_new_tokens=cfg.max_new_tokens,
                                seed=row_seed(seed_set, p, j), score=score, harmful=harmful,
                                decode=self._decode)
                    for j in range(k)] for p in prompts]
        weights = self._weights(label)
        while True:
            rows = [(i, c, d) for i, cs in enumerate(choices) for c in cs for d in c.draws()]  # (prompt, choice, draw)
            if not rows:
                break
            size = max(d.max_new_tokens for _, _, d in rows)  # a row's first tokens do not depend on the limit
            out = []
            for start in range(0, len(rows), max(cfg.batch_size, 1)):
                chunk = rows[start:start + max(cfg.batch_size, 1)]
                out += self.sampler.generate([prompt_ids[i] + c.token_ids for i, c, _ in chunk], weights,
                                             max_new_tokens=size, temperature=cfg.temperature, seed=cfg.seed,
                                             row_seeds=[d.seed for _, _, d in chunk])
            by_choice: dict[int, list] = {}
            for (_, c, d), (ids, _) in zip(rows, out):
                ids = ids[:d.max_new_tokens]  # the end token included when the turn ended within the block
                ended = eos in ids
                by_choice.setdefault(id(c), [c, []])[1].append(Candidate(ids[:ids.index(eos)] if ended else ids, ended))
            for c, cands in by_choice.values():
                c.choose(cands)
        texts = [[self._decode(c.token_ids) for c in cs] for cs in choices]
        logger.info("%s: %d replies by best-of-%d (block %d) in %.0f s", label or BASE, len(prompts) * k, n, block,
                    time.monotonic() - started)
        return Pool(texts, [[[] for _ in cs] for cs in choices], [len(p) for p in prompt_ids]), \
            [c.record() for cs in choices for c in cs]

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
                texts.append(self._decode(reply))
                seqs.append(prompt_ids + reply)
                plens.append(len(prompt_ids))
        return Generation(texts, seqs, plens)

    def sample(self, label: str | None, prompts: Sequence[str], k: int, seed_set: str,
               cache: BaseReplyCache | None = None) -> Pool:
        """``k`` seeded replies per prompt from ``label`` (None: the base; with ``cache``, replies
        drawn before are read from it and the rest drawn and added)."""
        rows = [(i, j, row_seed(seed_set, p, j)) for i, p in enumerate(prompts) for j in range(k)]
        texts: list[list[str]] = [[""] * k for _ in prompts]
        seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in prompts]
        todo = rows
        if cache is not None:
            todo = []
            for i, j, seed in rows:
                hit = cache.get(seed)
                if hit is None:
                    todo.append((i, j, seed))
                else:
                    texts[i][j] = hit
        plens = [len(self._prompt_ids(p)) for p in prompts]
        if todo:
            started = time.monotonic()
            gen = self._generate(label, [prompts[i] for i, _, _ in todo], [seed for _, _, seed in todo])
            for (i, j, seed), text, seq in zip(todo, gen.texts, gen.sequences):
                texts[i][j], seqs[i][j] = text, seq
                if cache is not None:
                    cache.put(seed, text)
            logger.info("%s: %d replies in %.0f s (%d from the cache)", label or BASE, len(todo),
                        time.monotonic() - started, len(rows) - len(todo))
        return Pool(texts, seqs, plens)

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(self.render(prompt), add_special_tokens=False).input_ids

    def kl_to_base_batched(self, label: str, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
                           batch_size: int = 16) -> float | None:
        """Mean per-token KL(adapter || base) over the reply tokens of ``sequences`` (prompt + reply
        ids), ``batch_size`` sequences per forward pass (right-padded; padding never scored)."""
        import torch
        import torch.nn.functional as F

        pairs = [(s, n) for s, n in zip(sequences, prompt_lens) if len(s) > n]
        total, count = 0.0, 0
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            width = max(len(s) for s, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, L)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, L)
            scored = torch.zeros((len(chunk), width - 1), dtype=torch.bool)  # (B, L-1): position t predicts token t+1
            for b, (seq, plen) in enumerate(chunk):
                ids[b, :len(seq)] = torch.tensor(seq)
                attn[b, :len(seq)] = 1
                scored[b, plen - 1:len(seq) - 1] = True
            ids, attn = ids.to(self.settings.device), attn.to(self.settings.device)
            with torch.no_grad():
                with self.use(label) as m:
                    logp_a = F.log_softmax(m(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)  # (B, L-1, V)
                with self.use(None) as m:
                    logp_b = F.log_softmax(m(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)  # (B, L-1, V)
            kl = (logp_a.exp() * (logp_a - logp_b)).sum(-1)  # (B, L-1)
            total += float(kl[scored.to(kl.device)].sum())
            count += int(scored.sum())
        return total / count if count else None
