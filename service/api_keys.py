"""API keys: ``ak_`` and 256 random bits, stored as SHA-256 (a key that random needs no slow hash;
a fast one costs nothing per request). Made and revoked through ``service.crud``; checked by
``service.auth``."""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "ak_"


def new_api_key() -> tuple[str, str]:
    """A fresh key and its stored hash."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
