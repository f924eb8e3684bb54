"""API keys for the server: shown once at creation, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a plain hash (no salt, no slow KDF) is enough: there is
nothing to brute-force. The store is SQLite beside the ledger, or Redis with [shared].

A key may be scoped: an expiry (past it, 401 `key_expired`), the modes and models it may ask
for (403 `model_not_allowed` for others, after [aliases]), and its own `rpm` (a rate-limit
window of its own, router.governance.limits). `rotate` gives a new key of the same scope and
lets the old one work for a grace period. Each key's last use is kept, written at most once a
minute per key and process (a write per request would cost the hot path).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from router.config import Config
from router.errors import RequestError, UnavailableError
from router.ledger import duration
from router.ledger.sqlite import Store, migrate, open_db
from router.shared import Link, errors
from router.types import ROUTING_MODES

PREFIX = "rk-"
ROLES = ("user", "admin")


@dataclass(frozen=True)
class KeyOwner:
    """Whom a key belongs to, and what it may see: a `user` key only that user's own figures
    and answers; an `admin` key everyone's, /metrics and /health's details. And its scope:
    `models` it may ask for (empty: any), its own `rpm`, when it `expires` (Unix time)."""

    name: str
    role: str = "user"
    key_id: str = field(default="", compare=False)
    models: tuple[str, ...] = field(default=(), compare=False)
    rpm: int | None = field(default=None, compare=False)
    expires: float | None = field(default=None, compare=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def expiry(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires or 0))


@dataclass(frozen=True)
class KeyInfo:
    """A key as `router keys list` shows it (never the key itself)."""

    key_id: str
    user: str
    role: str
    created: float
    expires: float | None = None
    models: tuple[str, ...] = ()
    rpm: int | None = None
    last_used: float | None = None

    def owner(self) -> KeyOwner:
        return KeyOwner(self.user, self.role, self.key_id, self.models, self.rpm, self.expires)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.key_id, "user": self.user, "role": self.role, "created": self.created,
            "expires": self.expires, "models": list(self.models), "rpm": self.rpm,
            "last_used": self.last_used,
        }  # fmt: skip

    @classmethod
    def of(cls, data: dict[str, Any]) -> KeyInfo:
        return cls(
            str(data["id"]), str(data["user"]), str(data.get("role", "user")),
            float(data["created"]), _number(data.get("expires")),
            tuple(data.get("models") or ()), data.get("rpm"), _number(data.get("last_used")),
        )  # fmt: skip


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


MAX_MODELS = 64
MAX_RPM = 10_000_000
TOUCH_SECONDS = 60.0  # a key's last use is written at most this often per process


def check_scope(user: str, role: str, models: Sequence[str], rpm: int | None) -> None:
    """ValueError naming what to fix in a key's owner, role or scope."""
    if not user.strip() or len(user) > 200:
        raise ValueError("a key needs a user name (at most 200 characters)")
    check_role(role)
    if len(models) > MAX_MODELS or any(not m or len(m) > 200 for m in models):
        raise ValueError(f"models: at most {MAX_MODELS} names of 1 to 200 characters")
    if rpm is not None and not 1 <= rpm <= MAX_RPM:
        raise ValueError(f"rpm: 1 to {MAX_RPM:,}")


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
    """
    ALTER TABLE api_keys ADD COLUMN expires REAL;
    ALTER TABLE api_keys ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN last_used REAL;
    """,
]
COLUMNS = "key_id, user, role, created, expires, models, rpm, last_used"


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
    ) -> tuple[str, str]: ...

    def owner(self, key: str) -> KeyOwner | None: ...

    def list(self) -> list[KeyInfo]: ...

    def revoke(self, key_id: str) -> bool: ...

    def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, str] | None: ...

    def change(self, key_id: str, **scope: Any) -> KeyInfo | None: ...

    def touch(self, owner: KeyOwner) -> None: ...


SCOPE = ("expires", "models", "rpm")  # what `change` may set


def changed(old: KeyInfo, scope: dict[str, Any]) -> KeyInfo:
    """`old` with `scope`'s fields (SCOPE) set, checked (ValueError naming what to fix)."""
    unknown = sorted(set(scope) - set(SCOPE))
    if unknown:
        raise ValueError(f"{unknown[0]}: a key's scope is {', '.join(SCOPE)}")
    fields: dict[str, Any] = {k: tuple(v) if k == "models" else v for k, v in scope.items()}
    new = dataclasses.replace(old, **fields)
    check_scope(new.user, new.role, new.models, new.rpm)
    return new


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
    ) -> tuple[str, str]:
        raise NotImplementedError

    def _write_scope(self, key_id: str, info: KeyInfo) -> bool:
        raise NotImplementedError

    def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, str] | None:
        """A new key with the old one's owner and scope; the old one works `grace_seconds`
        more (never longer than it would have). None: no such key."""
        old = next((k for k in self.list() if k.key_id == key_id), None)
        if old is None:
            return None
        made = self.create(old.user, old.role, expires=old.expires, models=old.models, rpm=old.rpm)
        ends = time.time() + grace_seconds
        self._write_scope(key_id, dataclasses.replace(old, expires=min(ends, old.expires or ends)))
        return made

    def change(self, key_id: str, **scope: Any) -> KeyInfo | None:
        """Set a key's expiry, models or rpm (ValueError naming what to fix; None: no such
        key)."""
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

    def create(
        self,
        user: str,
        role: str = "user",
        *,
        expires: float | None = None,
        models: Sequence[str] = (),
        rpm: int | None = None,
    ) -> tuple[str, str]:
        """A new key for `user` (`role` user or admin), scoped: (key, key_id). The key is not
        kept; show it once."""
        check_scope(user, role, models, rpm)
        key, key_id = new_key()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys (key_hash, key_id, user, created, role, expires, models, "
                "rpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest(key), key_id, user, time.time(), role, expires, json.dumps(list(models)),
                 rpm),
            )  # fmt: skip
        return key, key_id

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
        key_id, user, role, created, expires, models, rpm, last_used = row
        return KeyInfo(
            str(key_id), str(user), str(role), float(created), _number(expires),
            tuple(json.loads(models or "[]")), rpm, _number(last_used),
        )  # fmt: skip

    def revoke(self, key_id: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0

    def _write_scope(self, key_id: str, info: KeyInfo) -> bool:
        with self._lock, self._db:
            cur = self._db.execute(
                "UPDATE api_keys SET expires = ?, models = ?, rpm = ? WHERE key_id = ?",
                (info.expires, json.dumps(list(info.models)), info.rpm, key_id),
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

    def create(
        self,
        user: str,
        role: str = "user",
        *,
        expires: float | None = None,
        models: Sequence[str] = (),
        rpm: int | None = None,
    ) -> tuple[str, str]:
        check_scope(user, role, models, rpm)
        key, key_id = new_key()
        info = KeyInfo(key_id, user, role, time.time(), expires, tuple(models), rpm)
        try:
            pipe = self._link.client.pipeline()
            pipe.hset(self._by_hash, digest(key), json.dumps(info.record()))
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
        self._update(key_id, expires=info.expires, models=list(info.models), rpm=info.rpm)
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


def scope_of(data: dict[str, Any], config: Config, *, create: bool) -> dict[str, Any]:
    """A key's scope from the admin API's body or `router keys`' options, checked (RequestError
    naming the field): `expires` a duration from now ("30d"; null: never), `models` modes and
    models of the file ([] or null: any), `rpm` 1 to 10,000,000 (null: none). With `create`,
    `user` and `role` too."""
    allowed = (*(("user", "role") if create else ()), *SCOPE)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0][:40]!r}: give {', '.join(allowed)}", param=unknown[0][:40]
        )
    out: dict[str, Any] = {}
    for name in ("user", "role"):
        if name in data and not isinstance(data[name], str):
            raise RequestError(f"{name}: a string", param=name)
        if name in data:
            out[name] = data[name]
    if create and "user" not in out:
        raise RequestError("user: who the key belongs to", param="user")
    if "expires" in data:
        value = data["expires"]
        if value is not None and not isinstance(value, str):
            raise RequestError(
                'expires: a duration such as "30d" or "12h", or null', param="expires"
            )
        out["expires"] = None if value is None else time.time() + duration(value, "expires")
    if "models" in data:
        out["models"] = scoped_models(data["models"] or [], config)
    if "rpm" in data:
        rpm = data["rpm"]
        if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int)):
            raise RequestError("rpm: a whole number of requests a minute, or null", param="rpm")
        out["rpm"] = rpm
    try:
        check_scope(out.get("user", "x"), out.get("role", "user"), out.get("models", ()),
                    out.get("rpm"))  # fmt: skip
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return out


def scoped_models(names: Any, config: Config, name: str = "models") -> tuple[str, ...]:
    """The modes and models a key may ask for, each a mode or a model of the file."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError(
            f'{name}: a list of modes and models, such as ["auto", "local"]', param=name
        )
    known = [*ROUTING_MODES, *config.models]
    unknown = [n for n in names if n not in known]
    if unknown or len(names) > MAX_MODELS:
        shown = unknown[0][:80] if unknown else f"{len(names)} names"
        raise RequestError(
            f"{name} {shown!r}: give at most {MAX_MODELS} modes or models of this file (known: "
            f"{', '.join(known)})",
            param=name,
        )
    return tuple(dict.fromkeys(names))


def key_store(config: Config) -> KeyStore | RedisKeyStore:
    """Redis when [shared] redis_url is set (every replica and command sees the same keys),
    else the SQLite file."""
    url = config.shared.resolved_redis_url()
    if url is None:
        return KeyStore(config.keys_path())
    return RedisKeyStore(Link(url, config.shared.key_prefix, config.shared.timeout_seconds))
