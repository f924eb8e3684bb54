"""API keys for the server: shown once at creation, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a plain hash (no salt, no slow KDF) is enough: there is
nothing to brute-force. The store is SQLite beside the ledger; a shared database can take its
place behind the same four methods.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Protocol

from router.config import Config
from router.errors import UnavailableError
from router.shared import Link, errors
from router.sqlite import Store, migrate, open_db

PREFIX = "rk-"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
]


class Keys(Protocol):
    """What the server and `router keys` need of a key store (SQLite here, or Redis)."""

    def create(self, user: str) -> tuple[str, str]: ...

    def owner(self, key: str) -> str | None: ...

    def list(self) -> list[tuple[str, str, float]]: ...

    def revoke(self, key_id: str) -> bool: ...


class KeyStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path)
        migrate(self._db, _MIGRATIONS, path)

    def create(self, user: str) -> tuple[str, str]:
        """A new key for `user`: (key, key_id). The key is not kept; show it once."""
        if not user.strip():
            raise ValueError("a key needs a user name")
        key = PREFIX + secrets.token_urlsafe(32)
        key_id = key[: len(PREFIX) + 6]
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?)", (digest(key), key_id, user, time.time())
            )
        return key, key_id

    def owner(self, key: str) -> str | None:
        """The user a key belongs to, or None for an unknown or revoked key."""
        with self._lock:
            row = self._db.execute(
                "SELECT user FROM api_keys WHERE key_hash = ?", (digest(key),)
            ).fetchone()
        return str(row[0]) if row else None

    def list(self) -> list[tuple[str, str, float]]:
        """(key_id, user, created) for every key; never the key itself."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, user, created FROM api_keys ORDER BY created"
            ).fetchall()
        return [(str(a), str(b), float(c)) for a, b, c in rows]

    def revoke(self, key_id: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0


class RedisKeyStore:
    """KeyStore's methods on Redis: the same scheme (only SHA-256 hashes are kept, the key is
    shown once) in two hashes, hash -> {id, user, created} and id -> hash. A revoked key stops
    working on every replica at once; while Redis is down keys cannot be checked (503)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._by_hash = link.key("keys", "by_hash")
        self._by_id = link.key("keys", "by_id")

    def create(self, user: str) -> tuple[str, str]:
        if not user.strip():
            raise ValueError("a key needs a user name")
        key = PREFIX + secrets.token_urlsafe(32)
        key_id = key[: len(PREFIX) + 6]
        record = json.dumps({"id": key_id, "user": user, "created": time.time()})
        try:
            pipe = self._link.client.pipeline()
            pipe.hset(self._by_hash, digest(key), record)
            pipe.hset(self._by_id, key_id, digest(key))
            pipe.execute()
        except errors() as exc:
            raise self._down(exc) from None
        return key, key_id

    def owner(self, key: str) -> str | None:
        try:
            record = self._link.client.hget(self._by_hash, digest(key))
        except errors() as exc:
            raise self._down(exc) from None
        self._link.ok()
        return str(json.loads(record)["user"]) if isinstance(record, str) else None

    def list(self) -> list[tuple[str, str, float]]:
        try:
            records = self._link.client.hgetall(self._by_hash)
        except errors() as exc:
            raise self._down(exc) from None
        rows = [json.loads(r) for r in records.values()]
        return sorted(((r["id"], r["user"], float(r["created"])) for r in rows), key=lambda r: r[2])

    def revoke(self, key_id: str) -> bool:
        try:
            digest = self._link.client.hget(self._by_id, key_id)
            if not isinstance(digest, str):
                return False
            pipe = self._link.client.pipeline()
            pipe.hdel(self._by_hash, digest)
            pipe.hdel(self._by_id, key_id)
            pipe.execute()
        except errors() as exc:
            raise self._down(exc) from None
        return True

    def _down(self, exc: BaseException) -> UnavailableError:
        self._link.failed(exc)
        return UnavailableError(
            f"the key store (Redis at {self._link.safe_url}) cannot be reached: {exc}",
            retry_after=5,
        ).publicly("the key store cannot be reached now, so no key can be checked")

    def close(self) -> None:
        pass

    def __enter__(self) -> RedisKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def key_store(config: Config) -> KeyStore | RedisKeyStore:
    """Redis when [shared] redis_url is set (every replica and command sees the same keys),
    else the SQLite file."""
    url = config.shared.resolved_redis_url()
    if url is None:
        return KeyStore(config.keys_path())
    return RedisKeyStore(Link(url, config.shared.key_prefix, config.shared.timeout_seconds))
