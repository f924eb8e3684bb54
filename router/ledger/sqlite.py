"""SQLite for the embedded stores (the ledger, budgets, API keys): one way to open a database
and one way to migrate it.

Each store lists its schema as numbered steps; `migrate` runs the ones a file has not seen yet
(PRAGMA user_version counts them), each in its own transaction, so a crash mid-migration leaves
the previous version intact. A file written by a newer router is refused rather than guessed at.
Stores are context managers (`with SQLiteLedger(path) as ledger:`); `close()` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from router.errors import ConfigError

T = TypeVar("T")


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
    path: Path
    _reader: sqlite3.Connection | None = None
    _reader_lock: threading.Lock
    _opening = threading.Lock()  # (class-wide: opens each store's reader once)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for long reads (sums over the whole file: the audit, the
        dashboard): in WAL mode it neither waits for the writers nor holds them up, as reads
        on the writers' connection under their lock would (scripts/bench_alert_audit.py)."""
        with Store._opening:
            if self._reader is None:
                self._reader_lock = threading.Lock()
                reader = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
                reader.execute("PRAGMA query_only = 1")
                self._reader = reader
        with self._reader_lock:
            yield self._reader

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with Store._opening:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupCommit:
    """Writes from concurrent threads committed in one transaction (group commit, as
    PostgreSQL's commit_delay and InnoDB's binlog group commit do): each caller queues its
    work; whoever holds the store's lock next commits everything queued, and each caller
    returns only once its own work is committed, or raises its own error. Under load N
    requests cost one commit instead of N; alone, a write costs what it did.

    Callers on an event loop (`arun`: the server's cache hits) queue their work for the end of
    the loop's turn: the requests it served in that turn share one commit."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock
        self._queued: list[_Job] = []
        self._queue_lock = threading.Lock()
        self._turns: dict[asyncio.AbstractEventLoop, list[tuple[_Job, asyncio.Future[None]]]] = {}

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        job = _Job(work)
        self._run([job])
        return job.outcome()  # type: ignore[no-any-return]

    async def arun(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`run` from an event loop: committed with the other work queued in this turn of
        the loop, once it ends (in the loop's thread, which waits for the commit as `run`
        would have); returns once its own work is committed."""
        loop = asyncio.get_running_loop()
        job, done = _Job(work), loop.create_future()
        turn = self._turns.setdefault(loop, [])
        turn.append((job, done))
        if len(turn) == 1:
            loop.call_soon(self._end_of_turn, loop)
        await done
        return job.outcome()  # type: ignore[no-any-return]

    def _end_of_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        turn = self._turns.pop(loop, [])
        try:
            self._run([job for job, _ in turn])
        except BaseException as exc:  # the lock itself failed: every waiter hears of it
            for _, done in turn:
                if not done.done():
                    done.set_exception(exc)
            raise
        for _, done in turn:
            if not done.done():  # (a waiter cancelled meanwhile: its row is in all the same)
                done.set_result(None)

    def _run(self, jobs: list[_Job]) -> None:
        with self._queue_lock:
            self._queued.extend(jobs)
        with self._lock:
            if not all(job.done for job in jobs):  # nobody committed them meanwhile: commit all
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            try:
                with self._db:
                    for job in batch:
                        job.result = job.work(self._db)
                return
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].error = exc
                    return
            for job in batch:  # one bad write must not fail the others: each on its own
                try:
                    with self._db:
                        job.result = job.work(self._db)
                except Exception as exc:
                    job.error = exc
        finally:
            for job in batch:
                job.done = True


class _Job:
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: Exception | None = None
        self.done = False

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
