"""API keys for the server: shown once at creation, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a plain hash (no salt, no slow KDF) is enough: there is
nothing to brute-force. The store is SQLite beside the ledger, or Redis with [shared].

A key may be scoped (router.server.key_scope): an expiry (past it, 401 `key_expired`), the
modes and models it may ask for (403 `model_not_allowed` for others, after [aliases]), its own
`rpm` and `tpm` (a rate-limit window of its own, router.governance.limits) and its own
`daily_usd` (a budget of its own, router.governance.budgets.KeyBudget). `rotate` gives a new
key of the same scope and lets the old one work for a grace period. Each key's last use is
kept, written at most once a minute per key and process (a write per request would cost the
hot path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from router.config import Config
from router.errors import UnavailableError
from router.ledger.sqlite import Store, migrate, open_db
from router.server.key_scope import ROLES as ROLES
from router.server.key_scope import KeyInfo as KeyInfo
from router.server.key_scope import KeyOwner as KeyOwner
from router.server.key_scope import changed, check_scope, number
from router.shared import Link, errors

PREFIX = "rk-"
TOUCH_SECONDS = 60.0  # a key's last use is written at most this often per process


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
    """
    ALTER TABLE api_keys ADD COLUMN expires REAL;
    ALTER TABLE api_keys ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN last_used REAL;
    """,
    """
    ALTER TABLE api_keys ADD COLUMN daily_usd REAL;
    ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
    """,
]
COLUMNS = "key_id, user, role, created, expires, models, rpm, last_used, daily_usd, tpm"


class Keys(Protocol):
    """What the server and `router keys` need of a key store (SQLite here, or Redis)."""

    def create(
        self,
        user: str,
        role: str = "user",
        *,
        expires: float | None = None,
        models: Sequence[str] = (),
        rpm: int | None = None,
        daily_usd: float | None = None,
        tpm: int | None = None,
    ) -> tuple[str, str]: ...

    def owner(self, key: str) -> KeyOwner | None: ...

    def list(self) -> list[KeyInfo]: ...

    def revoke(self, key_id: str) -> bool: ...

    def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, str] | None: ...

    def change(self, key_id: str, **scope: Any) -> KeyInfo | None: ...

    def touch(self, owner: KeyOwner) -> None: ...


def new_key() -> tuple[str, str]:
    key = PREFIX + secrets.token_urlsafe(32)
    return key, key[: len(PREFIX) + 6]


class _Touches:
    """When each key's last use was last written by this process."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def due(self, key_id: str, now: float) -> bool:
        if now - self._at.get(key_id, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return False
        if len(self._at) > 100_000:
            self._at.clear()
        self._at[key_id] = now
        return True


class _Scoped:
    """`rotate` and `change`, the same on either store; each writes a scope its own way."""

    def list(self) -> list[KeyInfo]:
        raise NotImplementedError

    def create(
        self,
        user: str,
        role: str = "user",
        *,
        expires: float | None = None,
        models: Sequence[str] = (),
        rpm: int | None = None,
        daily_usd: float | None = None,
        tpm: int | None = None,
    ) -> tuple[str, str]:
        """A new key for `user` (`role` user or admin), scoped (ValueError naming what to
        fix): (key, key_id). Only its hash is kept; show the key once."""
        check_scope(user, role, models, rpm, daily_usd, tpm)
        key, key_id = new_key()
        info = KeyInfo(
            key_id, user, role, time.time(), expires, tuple(models), rpm, daily_usd=daily_usd,
            tpm=tpm,
        )  # fmt: skip
        self._insert(digest(key), info)
        return key, key_id

    def _insert(self, hashed: str, info: KeyInfo) -> None:
        raise NotImplementedError

    def _write_scope(self, key_id: str, info: KeyInfo) -> bool:
        raise NotImplementedError

    def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, str] | None:
        """A new key with the old one's owner and scope; the old one works `grace_seconds`
        more (never longer than it would have). None: no such key."""
        old = next((k for k in self.list() if k.key_id == key_id), None)
        if old is None:
            return None
        made = self.create(
            old.user, old.role, expires=old.expires, models=old.models, rpm=old.rpm,
            daily_usd=old.daily_usd, tpm=old.tpm,
        )  # fmt: skip
        ends = time.time() + grace_seconds
        self._write_scope(key_id, dataclasses.replace(old, expires=min(ends, old.expires or ends)))
        return made

    def change(self, key_id: str, **scope: Any) -> KeyInfo | None:
        """Set a key's scope (SCOPE: expiry, models, rpm, tpm, daily_usd; ValueError naming
        what to fix; None: no such key)."""
        old = next((k for k in self.list() if k.key_id == key_id), None)
        if old is None:
            return None
        new = changed(old, scope)
        return new if self._write_scope(key_id, new) else None


class KeyStore(_Scoped, Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path)
        migrate(self._db, _MIGRATIONS, path)
        self._touches = _Touches()

    def _insert(self, hashed: str, info: KeyInfo) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys (key_hash, key_id, user, created, role, expires, models, "
                "rpm, daily_usd, tpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hashed, info.key_id, info.user, info.created, info.role, info.expires,
                 json.dumps(list(info.models)), info.rpm, info.daily_usd, info.tpm),
            )  # fmt: skip

    def owner(self, key: str) -> KeyOwner | None:
        """Whom a key belongs to and its scope (an expired key too: the server says so), or
        None for an unknown or revoked key."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?", (digest(key),)
            ).fetchone()
        return self._info(row).owner() if row else None

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first; never the key itself."""
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY created").fetchall()
        return [self._info(r) for r in rows]

    @staticmethod
    def _info(row: Sequence[Any]) -> KeyInfo:
        key_id, user, role, created, expires, models, rpm, last_used, daily_usd, tpm = row
        return KeyInfo(
            str(key_id), str(user), str(role), float(created), number(expires),
            tuple(json.loads(models or "[]")), rpm, number(last_used), number(daily_usd), tpm,
        )  # fmt: skip

    def revoke(self, key_id: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0

    def _write_scope(self, key_id: str, info: KeyInfo) -> bool:
        with self._lock, self._db:
            cur = self._db.execute(
                "UPDATE api_keys SET expires = ?, models = ?, rpm = ?, daily_usd = ?, tpm = ? "
                "WHERE key_id = ?",
                (
                    info.expires,
                    json.dumps(list(info.models)),
                    info.rpm,
                    info.daily_usd,
                    info.tpm,
                    key_id,
                ),
            )
        return cur.rowcount > 0

    def touch(self, owner: KeyOwner) -> None:
        """Record the key's use now (at most once a minute per key and process)."""
        now = time.time()
        if owner.key_id and self._touches.due(owner.key_id, now):
            with self._lock, contextlib.suppress(sqlite3.Error), self._db:  # a full disk: later
                self._db.execute(
                    "UPDATE api_keys SET last_used = ? WHERE key_id = ?", (now, owner.key_id)
                )


class RedisKeyStore(_Scoped):
    """KeyStore's methods on Redis: the same scheme (only SHA-256 hashes are kept, the key is
    shown once) in two hashes, hash -> record (KeyInfo's) and id -> hash. A revoked key stops
    working on every replica at once; while Redis is down keys cannot be checked (503)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._by_hash = link.key("keys", "by_hash")
        self._by_id = link.key("keys", "by_id")
        self._touches = _Touches()

    def _insert(self, hashed: str, info: KeyInfo) -> None:
        try:
            pipe = self._link.client.pipeline()
            pipe.hset(self._by_hash, hashed, json.dumps(info.record()))
            pipe.hset(self._by_id, info.key_id, hashed)
            pipe.execute()
        except errors() as exc:
            raise self._down(exc) from None

    def owner(self, key: str) -> KeyOwner | None:
        try:
            record = self._link.client.hget(self._by_hash, digest(key))
        except errors() as exc:
            raise self._down(exc) from None
        self._link.ok()
        if not isinstance(record, str):
            return None
        return KeyInfo.of(json.loads(record)).owner()

    def list(self) -> list[KeyInfo]:
        try:
            records = self._link.client.hgetall(self._by_hash)
        except errors() as exc:
            raise self._down(exc) from None
        return sorted(
            (KeyInfo.of(json.loads(r)) for r in records.values()), key=lambda k: k.created
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

    def _write_scope(self, key_id: str, info: KeyInfo) -> bool:
        self._update(
            key_id, expires=info.expires, models=list(info.models), rpm=info.rpm,
            daily_usd=info.daily_usd, tpm=info.tpm,
        )  # fmt: skip
        return True

    def touch(self, owner: KeyOwner) -> None:
        if owner.key_id and self._touches.due(owner.key_id, time.time()):
            self._update(owner.key_id, last_used=time.time())

    def _update(self, key_id: str, **changes: Any) -> None:
        """Change fields of a key's record in one WATCH transaction: a key revoked meanwhile
        stays revoked (its record is not written back)."""

        def change(pipe: Any) -> None:
            hashed = pipe.hget(self._by_id, key_id)
            record = pipe.hget(self._by_hash, hashed) if isinstance(hashed, str) else None
            pipe.multi()
            if isinstance(hashed, str) and isinstance(record, str):
                pipe.hset(self._by_hash, hashed, json.dumps({**json.loads(record), **changes}))

        try:
            self._link.client.transaction(change, self._by_id, self._by_hash)
        except errors() as exc:
            raise self._down(exc) from None

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
