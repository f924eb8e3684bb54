"""API keys for the server: shown once at creation, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a plain hash (no salt, no slow KDF) is enough: there is
nothing to brute-force. The store is SQLite beside the ledger; a shared database can take its
place behind the same four methods.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path

from router.sqlite import Store, migrate, open_db

PREFIX = "rk-"


def _hash(key: str) -> str:
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
                "INSERT INTO api_keys VALUES (?, ?, ?, ?)", (_hash(key), key_id, user, time.time())
            )
        return key, key_id

    def owner(self, key: str) -> str | None:
        """The user a key belongs to, or None for an unknown or revoked key."""
        with self._lock:
            row = self._db.execute(
                "SELECT user FROM api_keys WHERE key_hash = ?", (_hash(key),)
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
