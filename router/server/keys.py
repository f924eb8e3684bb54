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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.config import Config
from router.errors import UnavailableError
from router.ledger.sqlite import Store, migrate, open_db
from router.shared import Link, errors

PREFIX = "rk-"
ROLES = ("user", "admin")


@dataclass(frozen=True)
class KeyOwner:
    """Whom a key belongs to, and what it may see: a `user` key only that user's own figures
    and answers; an `admin` key everyone's, /metrics and /health's details."""

    name: str
    role: str = "user"

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose {' or '.join(ROLES)}")
    return role


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
    """
    ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'user';
    """,
]


class Keys(Protocol):
    """What the server and `router keys` need of a key store (SQLite here, or Redis)."""

    def create(self, user: str, role: str = "user") -> tuple[str, str]: ...

    def owner(self, key: str) -> KeyOwner | None: ...

    def list(self) -> list[tuple[str, str, str, float]]: ...

    def revoke(self, key_id: str) -> bool: ...


class KeyStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path)
        migrate(self._db, _MIGRATIONS, path)

    def create(self, user: str, role: str = "user") -> tuple[str, str]:
        """A new key for `user` (`role` user or admin): (key, key_id). The key is not kept;
        show it once."""
        if not user.strip():
            raise ValueError("a key needs a user name")
        check_role(role)
        key = PREFIX + secrets.token_urlsafe(32)
        key_id = key[: len(PREFIX) + 6]
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys (key_hash, key_id, user, created, role) "
                "VALUES (?, ?, ?, ?, ?)",
                (digest(key), key_id, user, time.time(), role),
            )
        return key, key_id

    def owner(self, key: str) -> KeyOwner | None:
        """Whom a key belongs to, or None for an unknown or revoked key."""
        with self._lock:
            row = self._db.execute(
                "SELECT user, role FROM api_keys WHERE key_hash = ?", (digest(key),)
            ).fetchone()
        return KeyOwner(str(row[0]), str(row[1])) if row else None

    def list(self) -> list[tuple[str, str, str, float]]:
        """(key_id, user, role, created) for every key; never the key itself."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, user, role, created FROM api_keys ORDER BY created"
            ).fetchall()
        return [(str(a), str(b), str(c), float(d)) for a, b, c, d in rows]

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

    def create(self, user: str, role: str = "user") -> tuple[str, str]:
        if not user.strip():
            raise ValueError("a key needs a user name")
        check_role(role)
        key = PREFIX + secrets.token_urlsafe(32)
        key_id = key[: len(PREFIX) + 6]
        record = json.dumps({"id": key_id, "user": user, "role": role, "created": time.time()})
        try:
            pipe = self._link.client.pipeline()
            pipe.hset(self._by_hash, digest(key), record)
            pipe.hset(self._by_id, key_id, digest(key))
            pipe.execute()
        except errors() as exc:
            raise self._down(exc) from None
        return key, key_id

    def owner(self, key: str) -> KeyOwner | None:
        try:
            record = self._link.client.hget(self._by_hash, digest(key))
        except errors() as exc:
            raise self._down(exc) from None
        self._link.ok()
        if not isinstance(record, str):
            return None
        data = json.loads(record)
        return KeyOwner(str(data["user"]), str(data.get("role", "user")))

    def list(self) -> list[tuple[str, str, str, float]]:
        try:
            records = self._link.client.hgetall(self._by_hash)
        except errors() as exc:
            raise self._down(exc) from None
        rows = [json.loads(r) for r in records.values()]
        return sorted(
            ((r["id"], r["user"], r.get("role", "user"), float(r["created"])) for r in rows),
            key=lambda r: r[3],
        )

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
