"""SQLite for the embedded stores (the ledger, budgets, API keys): one way to open a database
and one way to migrate it.

Each store lists its schema as numbered steps; `migrate` runs the ones a file has not seen yet
(PRAGMA user_version counts them), each in its own transaction, so a crash mid-migration leaves
the previous version intact. A file written by a newer router is refused rather than guessed at.
Stores are context managers (`with SQLiteLedger(path) as ledger:`); `close()` is idempotent.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.errors import ConfigError


def open_db(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """A connection shared by threads (the stores lock around it), in WAL mode. With
    `autocommit`, transactions are the caller's (`BEGIN IMMEDIATE` ... `COMMIT`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            str(path),
            check_same_thread=False,
            timeout=30,
            isolation_level=None if autocommit else "DEFERRED",
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except (sqlite3.Error, OSError) as exc:  # a read-only or full disk, a bad path
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot open {path} for writing ({why}): its directory must be writable and "
            "have free space; fix that, or point the setting that names it elsewhere"
        ) from None
    return db


def migrate(db: sqlite3.Connection, steps: Sequence[str], path: Path) -> int:
    """Bring the database to version len(steps); return that version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(steps):
        raise ConfigError(
            f"{path} is at schema version {version}, written by a newer router (this one knows "
            f"{len(steps)}): upgrade the router, or point it at another file"
        )
    for number, script in enumerate(steps[version:], start=version + 1):
        try:
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise ConfigError(
                f"cannot bring {path} to schema version {number} ({exc}); is its directory "
                "writable, with free space?"
            ) from None
    return len(steps)


class Store:
    """What the embedded stores share: `with Store(...) as store:` closes it at the end."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
