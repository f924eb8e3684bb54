"""Exact-match response cache.

`ResponseCache` is the seam (get/set/close); `DiskResponseCache` is the embedded default over
diskcache (SQLite + files, safe across threads and processes). A shared engine such as Redis
can implement the same three methods later. The key covers everything that changes the answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from router.types import ChatRequest

KEY_VERSION = 1


class ResponseCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def cache_key(request: ChatRequest, params: dict[str, Any], routing_fingerprint: str) -> str:
    """sha256 over messages, requested model, sampling params and the routing configuration
    (a changed models.toml must not serve answers chosen under the old one)."""
    payload = json.dumps(
        {
            "v": KEY_VERSION,
            "model": request.model,
            "messages": request.messages,
            "params": params,
            "routing": routing_fingerprint,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class DiskResponseCache:
    def __init__(self, directory: Path, *, ttl_seconds: int, size_limit_mb: int) -> None:
        import diskcache

        directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(directory), size_limit=size_limit_mb * 1024 * 1024)
        self._ttl = ttl_seconds or None

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._cache.get(key)
        return value if isinstance(value, dict) else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._cache.set(key, value, expire=self._ttl)

    def __len__(self) -> int:
        """Entries stored (expired ones included until they are evicted)."""
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
