"""Prefix reuse: the KV cache of finished requests, found again by a hash of token blocks.

A chat turn's prompt is the previous turn's prompt, its reply and the new message, so the
previous request's cache already holds most of the next one. When a request ends, the
engine stores its cached tokens and their keys/values here; when a request arrives, the
scheduler asks for the longest stored prefix of its prompt and copies it into the row,
so prefill runs over the new tokens only.

The index follows vLLM's automatic prefix caching: a prompt is cut into blocks of
``block_size`` tokens, and block ``i``'s key is a hash chained over the adapter key and
blocks ``0..i``, so a lookup walks the prompt's blocks until one is missing. Keys and
values depend on the adapter, so the adapter key is part of every hash, and so is the
request's ``cache_salt`` (the server passes the user's id, as vLLM's ``cache_salt`` does):
a shared prefix would otherwise let one user time whether another sent a given text. A hit is checked token
for token before it is used, and extended past the last full block to the exact common
length. Entries are evicted least recently used first when the stored bytes pass the
budget; an entry whose tokens are a prefix of a newer one (the previous turn of the same
conversation) is dropped when the newer one arrives.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class _Entry:
    scope: tuple[str | None, str | None]  # (adapter key, cache salt)
    tokens: list[int]
    k: torch.Tensor  # (L, Hkv, n, hd)
    v: torch.Tensor
    hashes: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class PrefixHit:
    """``length`` tokens of the prompt are cached in ``k``/``v`` (L, Hkv, >=length, hd)."""

    length: int
    k: torch.Tensor
    v: torch.Tensor


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    looked_up_tokens: int = 0
    stored: int = 0
    evicted: int = 0


class PrefixCache:
    """Stored KV prefixes keyed by (adapter, salt, token blocks); LRU under a byte budget.

    The engine thread looks up and stores; ``drop_adapter`` may come from any thread.
    """

    def __init__(self, max_bytes: int, *, block_size: int = 16) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.max_bytes = max(0, int(max_bytes))
        self.block_size = block_size
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id -> entry, least recent first
        self._index: dict[int, int] = {}  # block hash -> entry id (the newest entry holding that block)
        self._next_id = 0
        self.bytes = 0
        self.stats = PrefixStats()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _hashes(self, scope: tuple, tokens: list[int], limit: int | None = None) -> list[int]:
        bs = self.block_size
        n = len(tokens) if limit is None else min(limit, len(tokens))
        out, h = [], hash(("prefix", scope))
        for i in range(n // bs):
            h = hash((h, tuple(tokens[i * bs:(i + 1) * bs])))
            out.append(h)
        return out

    def lookup(self, adapter: str | None, salt: str | None, tokens: list[int], *, max_length: int) -> PrefixHit | None:
        """The longest stored prefix of ``tokens`` (at most ``max_length`` tokens) for this adapter and salt."""
        if not self.enabled or max_length < self.block_size:
            return None
        with self._lock:
            return self._lookup((adapter, salt), tokens, max_length)

    def _lookup(self, scope: tuple, tokens: list[int], max_length: int) -> PrefixHit | None:
        self.stats.lookups += 1
        self.stats.looked_up_tokens += len(tokens)
        entry_id = None
        for h in self._hashes(scope, tokens, limit=max_length):
            found = self._index.get(h)
            if found is None:
                break
            entry_id = found
        if entry_id is None:
            return None
        entry = self._entries[entry_id]
        n = 0  # exact common length, verified token for token (hashes can collide)
        limit = min(len(entry.tokens), len(tokens), max_length)
        while n < limit and entry.tokens[n] == tokens[n]:
            n += 1
        if n < self.block_size:
            return None
        self._entries.move_to_end(entry_id)
        self.stats.hits += 1
        self.stats.hit_tokens += n
        return PrefixHit(length=n, k=entry.k, v=entry.v)

    def store(self, adapter: str | None, salt: str | None, tokens: list[int], k: torch.Tensor, v: torch.Tensor) -> bool:
        """Keep ``tokens`` with their keys/values (L, Hkv, len(tokens), hd); False if it does not fit."""
        if not self.enabled or len(tokens) < self.block_size:
            return False
        scope = (adapter, salt)
        entry = _Entry(scope=scope, tokens=list(tokens), k=k, v=v, hashes=self._hashes(scope, tokens))
        if entry.nbytes > self.max_bytes:
            return False
        with self._lock:
            return self._store(entry)

    def _store(self, entry: _Entry) -> bool:
        # the previous turn of this conversation is a prefix of this one: it is now redundant
        older = {self._index[h] for h in entry.hashes if h in self._index}
        for old_id in older:
            old = self._entries[old_id]
            if len(old.tokens) <= len(entry.tokens) and entry.tokens[: len(old.tokens)] == old.tokens:
                self._drop(old_id)
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self._entries[entry_id] = entry
        for h in entry.hashes:
            self._index[h] = entry_id
        self.bytes += entry.nbytes
        self.stats.stored += 1
        while self.bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            self.stats.evicted += 1
        return entry_id in self._entries

    def drop_adapter(self, adapter: str) -> None:
        """Forget every prefix computed with ``adapter`` (its version was evicted or retired)."""
        with self._lock:
            for entry_id in [i for i, e in self._entries.items() if e.scope[0] == adapter]:
                self._drop(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._index.clear()
            self.bytes = 0

    def _drop(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self.bytes -= entry.nbytes
        for h in entry.hashes:
            if self._index.get(h) == entry_id:
                del self._index[h]
        # blocks this entry shared with an older, still-stored entry point back at it
        for other_id in reversed(self._entries):
            other = self._entries[other_id]
            for h in other.hashes:
                self._index.setdefault(h, other_id)
