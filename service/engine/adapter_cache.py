"""LRU cache of resident LoRA adapters for the batched engine.

An adapter version is identified by ``AdapterRef.key`` (unique per version) and
read from ``AdapterRef.path`` (PEFT files: ``adapter_config.json`` and
``adapter_model.safetensors``; safetensors only, never pickle). Loading runs on
one background thread, so the engine loop never waits on disk: the scheduler
asks with ``acquire``, gets ``None`` while the load runs, and admits the request
at a later step once the weights are resident.

Adapters used by running requests are pinned (``acquire`` pins, ``release``
unpins) and never evicted; when the cache is over capacity the least recently
used unpinned adapter goes. A new version has a new key, so new requests load it
while running ones finish on the old one, which then ages out (or is dropped at
once by ``evict``).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.engine.base import AdapterRef

logger = logging.getLogger(__name__)

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY_RE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterLoadError(RuntimeError):
    """An adapter directory could not be turned into LoRA weights; the message says why."""


@dataclass
class LoraWeights:
    """One adapter's LoRA factors, stacked over layers, in the layout the engine multiplies.

    ``a[module]`` is (L, in, r) = lora_A.weight transposed, ``b[module]`` is (L, r, out) =
    (lora_B.weight * scaling) transposed, so a row's delta is ``(x @ a[l]) @ b[l]``. Layers the
    adapter does not touch hold zeros; modules it does not target are absent.
    """

    key: str
    rank: int
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.a.values(), *self.b.values()))


def load_lora(ref: AdapterRef, *, num_layers: int, dtype: torch.dtype = torch.float32) -> LoraWeights:
    """Read a PEFT LoRA directory with safetensors and return it as ``LoraWeights``."""
    from safetensors.torch import load_file

    path = Path(ref.path)
    cfg_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise AdapterLoadError(
            f"adapter {ref.key!r} at {path} lacks adapter_config.json or adapter_model.safetensors "
            "(only safetensors adapters are served)"
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterLoadError(f"adapter {ref.key!r} is {cfg.get('peft_type')}, only LORA is served")
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append("bias")
    if cfg.get("fan_in_fan_out"):
        unsupported.append("fan_in_fan_out")
    if unsupported:
        raise AdapterLoadError(f"adapter {ref.key!r} uses {unsupported}, which the batched engine does not serve")
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    scaling = alpha / r**0.5 if cfg.get("use_rslora") else alpha / r

    return lora_from_tensors(ref.key, load_file(str(weights_path)), rank=r, scaling=scaling, num_layers=num_layers,
                             dtype=dtype)


def lora_from_tensors(key: str, tensors: dict[str, torch.Tensor], *, rank: int, scaling: float, num_layers: int,
                      dtype: torch.dtype = torch.float32) -> LoraWeights:
    """PEFT LoRA tensors (``...layers.N.self_attn.q_proj.lora_A.weight`` etc., as in a file or
    ``get_peft_model_state_dict``) stacked into the engine's layout, B pre-multiplied by ``scaling``."""
    r = rank
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = {}  # module -> "A"/"B" -> layer -> weight
    for name, t in tensors.items():
        m = _KEY_RE.search(name)
        if m is None:
            raise AdapterLoadError(f"adapter {key!r}: unexpected tensor {name!r}")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if module not in LORA_MODULES:
            raise AdapterLoadError(f"adapter {key!r} targets {module!r}; served modules are {LORA_MODULES}")
        if layer >= num_layers:
            raise AdapterLoadError(f"adapter {key!r} has layer {layer} but the base model has {num_layers}")
        found.setdefault(module, {}).setdefault(ab, {})[layer] = t.detach()
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    for module, parts in found.items():
        if set(parts) != {"A", "B"}:
            raise AdapterLoadError(f"adapter {key!r}: {module} lacks lora_A or lora_B")
        any_a, any_b = next(iter(parts["A"].values())), next(iter(parts["B"].values()))
        a_stack = torch.zeros(num_layers, any_a.shape[1], r, dtype=dtype)  # (L, in, r)
        b_stack = torch.zeros(num_layers, r, any_b.shape[0], dtype=dtype)  # (L, r, out)
        for layer, w in parts["A"].items():  # w (r, in)
            a_stack[layer] = w.t().to(dtype)
        for layer, w in parts["B"].items():  # w (out, r); PEFT computes B(A(x)) * scaling
            b_stack[layer] = (w.float() * scaling).t().to(dtype)
        a[module], b[module] = a_stack, b_stack
    if not a:
        raise AdapterLoadError(f"adapter {key!r} holds no LoRA weights")
    return LoraWeights(key=key, rank=r, a=a, b=b)


@dataclass
class _Entry:
    weights: LoraWeights
    pins: int = 0
    doomed: bool = False  # evict as soon as the last pin is released


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    failures: int = 0
    load_seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


class AdapterCache:
    """Resident adapters by key, LRU order, with pins and one background loader thread.

    ``loader(ref) -> LoraWeights`` does the disk work; it runs on the loader thread
    (or inline when ``background=False``, for tests). All methods are thread-safe.
    """

    def __init__(
        self,
        loader: Callable[[AdapterRef], LoraWeights],
        capacity: int = 32,
        *,
        background: bool = True,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("adapter cache capacity must be at least 1")
        self._loader = loader
        self._capacity = capacity
        self._background = background
        self._on_ready = on_ready  # wakes the engine loop when a load finishes
        self._lock = threading.Lock()
        self._resident: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._ready: dict[str, LoraWeights] = {}  # loaded, waiting for room
        self._loading: set[str] = set()
        self._failed: dict[str, str] = {}
        self._jobs: queue.Queue[AdapterRef | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.stats = CacheStats()

    # --- capacity ---------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    def set_capacity(self, capacity: int) -> None:
        """Change how many adapters stay resident; shrinking evicts unpinned LRU entries."""
        if capacity < 1:
            raise ValueError("adapter cache capacity must be at least 1")
        with self._lock:
            self._capacity = capacity
            self._shrink_locked()

    def resident_keys(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def pinned_keys(self) -> dict[str, int]:
        with self._lock:
            return {k: e.pins for k, e in self._resident.items() if e.pins}

    def __len__(self) -> int:
        with self._lock:
            return len(self._resident)

    # --- use ----------------------------------------------------------------------
    def acquire(self, ref: AdapterRef) -> LoraWeights | None:
        """Pin and return the adapter if resident; else start loading it and return None.

        Raises ``AdapterLoadError`` once if the load failed (the next call retries).
        """
        start_inline = False
        with self._lock:
            entry = self._resident.get(ref.key)
            if entry is None and ref.key in self._ready and self._make_room_locked():
                entry = _Entry(self._ready.pop(ref.key))
                self._resident[ref.key] = entry
            if entry is not None:
                self._resident.move_to_end(ref.key)
                entry.pins += 1
                entry.doomed = False
                self.stats.hits += 1
                return entry.weights
            if ref.key in self._failed:
                raise AdapterLoadError(self._failed.pop(ref.key))
            if ref.key not in self._loading and ref.key not in self._ready:
                self._loading.add(ref.key)
                start_inline = not self._background
                if self._background:
                    self._ensure_thread_locked()
                    self._jobs.put(ref)
        if start_inline:
            self._load(ref)
            return self.acquire(ref)
        return None

    def prefetch(self, ref: AdapterRef) -> None:
        """Start loading ``ref`` in the background if it is neither resident nor loading."""
        with self._lock:
            if ref.key in self._resident or ref.key in self._loading or ref.key in self._ready or ref.key in self._failed:
                if ref.key in self._resident:
                    self._resident.move_to_end(ref.key)
                return
            if not self._background:
                return
            self._loading.add(ref.key)
            self._ensure_thread_locked()
            self._jobs.put(ref)

    def release(self, key: str) -> None:
        """Unpin one use of ``key`` (a running request finished)."""
        with self._lock:
            entry = self._resident.get(key)
            if entry is None or entry.pins == 0:
                raise RuntimeError(f"adapter {key!r} released more often than acquired")
            entry.pins -= 1
            if entry.pins == 0 and entry.doomed:
                del self._resident[key]
                self.stats.evictions += 1
            self._shrink_locked()

    def evict(self, key: str) -> bool:
        """Drop ``key`` now if unpinned, else as soon as its running requests finish.

        Returns True when it was dropped at once.
        """
        with self._lock:
            self._ready.pop(key, None)
            entry = self._resident.get(key)
            if entry is None:
                return False
            if entry.pins:
                entry.doomed = True
                return False
            del self._resident[key]
            self.stats.evictions += 1
            return True

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    # --- internals ------------------------------------------------------------------
    def _make_room_locked(self) -> bool:
        """Evict unpinned LRU entries until one more fits; False if everything is pinned."""
        while len(self._resident) >= self._capacity:
            victim = next((k for k, e in self._resident.items() if e.pins == 0), None)
            if victim is None:
                return False
            del self._resident[victim]
            self.stats.evictions += 1
        return True

    def _shrink_locked(self) -> None:
        while len(self._resident) > self._capacity:
            victim = next((k for k, e in self._resident.items() if e.pins == 0), None)
            if victim is None:
                return
            del self._resident[victim]
            self.stats.evictions += 1

    def _ensure_thread_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="adapter-loader", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        # No OpenMP team of its own: a second pool kept alive in this process halves the engine
        # thread's speed (see service.threads), and reading an adapter needs no parallel kernels.
        from service.threads import omp_single_thread

        omp_single_thread()
        while True:
            ref = self._jobs.get()
            if ref is None:
                return
            self._load(ref)

    def _load(self, ref: AdapterRef) -> None:
        import time

        t0 = time.perf_counter()
        try:
            weights = self._loader(ref)
        except Exception as exc:  # reported to the requests that wait on this adapter
            logger.warning("loading adapter %s from %s failed: %s", ref.key, ref.path, exc)
            with self._lock:
                self._loading.discard(ref.key)
                self._failed[ref.key] = f"adapter {ref.key!r} could not be loaded: {exc}"
                self.stats.failures += 1
                self.stats.errors[ref.key] = str(exc)
            if self._on_ready is not None:
                self._on_ready()
            return
        with self._lock:
            self._loading.discard(ref.key)
            if self._make_room_locked():
                self._resident[ref.key] = _Entry(weights)
            else:  # everything resident is pinned: wait for a running request to finish
                self._ready[ref.key] = weights
            self.stats.loads += 1
            self.stats.load_seconds += time.perf_counter() - t0
        logger.debug("adapter %s loaded in %.3f s", ref.key, time.perf_counter() - t0)
        if self._on_ready is not None:
            self._on_ready()
