"""The ledger on PostgreSQL (`[ledger] url = "postgresql://..."`, or $ROUTER_DATABASE_URL), for
several replicas writing one audit trail.

The schema and its numbered migrations are the SQLite ledger's (router.ledger), in
PostgreSQL's dialect; a replica applies the missing ones under an advisory lock, so however
many replicas start together, each migration runs once.

Writes leave the request's path and are never lost: `record` appends the row to a queue on
local disk (a SQLite file beside where the SQLite ledger would be, committed before `record`
returns) and a background thread moves batches into PostgreSQL, deleting them from the queue
only after PostgreSQL committed them. A replica that cannot reach PostgreSQL keeps serving and
keeps queueing; the rows go in when it comes back, or when the replica starts again. A row
carries its answer's unique id (`response_id`): a batch sent twice (a crash between
PostgreSQL's commit and the queue's delete) is inserted once.

Reads (`router stats`, `audit`, `quality`...) and feedback go to PostgreSQL; rows still in a
replica's queue show up once drained (milliseconds while PostgreSQL is up). Feedback and
reads first drain this replica's own queue, so an answer can be rated right away.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from router.errors import LedgerUnavailableError, UnavailableError
from router.ledger import Entry, Verdict, rollups, summary_of, totals_of
from router.ledger.rollups import where_equal
from router.ledger.sqlite import GroupCommit, migrate, open_db
from router.reachability import Reachability

log = logging.getLogger("router.ledger")

_COLUMNS = [f.name for f in fields(Entry)]
_QUOTED = ", ".join(f'"{c}"' for c in _COLUMNS)
BATCH = 500
# Rows queued before these columns existed.
_NEW = {
    "pending": False, "api": "chat", "saved_by": "", "cache_read_tokens": 0,
    "cache_write_tokens": 0, "session": "", "refusal": "", "prompt_cached_tokens": 0,
    "answer": None,
}  # fmt: skip

# The SQLite ledger's migrations, one for one, in PostgreSQL's dialect ("user" is reserved).
_MIGRATIONS = [
    """
    CREATE TABLE requests (
        id BIGSERIAL PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        "user" TEXT,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        baseline_usd DOUBLE PRECISION NOT NULL,
        tokens_saved BIGINT NOT NULL,
        usd_saved DOUBLE PRECISION NOT NULL,
        cache_hit BOOLEAN NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        stream BOOLEAN NOT NULL,
        prompt TEXT
    );
    CREATE INDEX requests_ts ON requests (ts);
    CREATE INDEX requests_user_ts ON requests ("user", ts);
    """,
    """
    ALTER TABLE requests ADD COLUMN category TEXT NOT NULL DEFAULT 'other';
    ALTER TABLE requests ADD COLUMN flags TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE requests ADD COLUMN estimator TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE requests ADD COLUMN response_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN rating TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN feedback TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX requests_response_id ON requests (response_id) WHERE response_id <> '';
    """,
    """
    ALTER TABLE requests ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN judge TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN shadow_model TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN votes TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN shadow_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE requests ADD COLUMN pending BOOLEAN NOT NULL DEFAULT false;
    """,
    """
    ALTER TABLE requests ADD COLUMN api TEXT NOT NULL DEFAULT 'chat';
    """,
    """
    ALTER TABLE requests ADD COLUMN saved_by TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE requests ADD COLUMN cache_read_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN session TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN refusal TEXT NOT NULL DEFAULT '';
    CREATE INDEX requests_session ON requests (session) WHERE session <> '';
    """,
    """
    ALTER TABLE requests ADD COLUMN prompt_cached_tokens BIGINT NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE requests ADD COLUMN answer TEXT;
    """,
]
_QUEUE = [
    """
    CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, row TEXT NOT NULL);
    """,
]


class PostgresLedger:
    """router.ledger.Ledger on PostgreSQL, with a durable local queue (see the module)."""

    def __init__(self, url: str, queue_path: Path, *, timeout: float = 5.0) -> None:
        self.url = url
        self._timeout = timeout
        self._queue_path = queue_path
        self._queue = open_db(queue_path)
        migrate(self._queue, _QUEUE, queue_path)
        self._queue_lock = threading.Lock()
        self._queue_writes = GroupCommit(self._queue, self._queue_lock)
        self._db_lock = threading.Lock()
        # One drain at a time: two that read the same batch could both delete it, and the
        # second would delete a row queued since under a reused id, unsent.
        self._drain_lock = threading.Lock()
        self._conn: Any = None
        self.reach = Reachability("the ledger database", url)
        self.queue_reach = Reachability("the ledger's queue", str(queue_path))
        self._wake = threading.Event()
        self._stop = False
        try:
            self._connection()  # migrations run now; a database that is down is not fatal
        except UnavailableError as exc:
            log.error("%s", exc)
        self._thread = threading.Thread(target=self._drain_forever, name="ledger", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- PostgreSQL

    def _connection(self) -> Any:
        """The open connection (migrated), or UnavailableError."""
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(self._timeout)))
            self._migrate(conn)
        except psycopg.Error as exc:
            raise self._down(exc) from None
        self._conn = conn
        self.reach.ok()
        return conn

    @staticmethod
    def _migrate(conn: Any) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('router-ledger-migrations'))")
            conn.execute("CREATE TABLE IF NOT EXISTS router_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM router_schema").fetchone()
            version = row[0] if row else 0
            if row is None:
                conn.execute("INSERT INTO router_schema VALUES (0)")
            if version > len(_MIGRATIONS):
                raise UnavailableError(
                    f"the ledger database is at schema {version}, newer than this router "
                    f"({len(_MIGRATIONS)}): upgrade the router"
                )
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute("UPDATE router_schema SET version = %s", (number,))

    def _run(self, sql: str, args: Any = (), *, rows: bool = True) -> Any:
        """One statement in its own transaction: its rows, or with rows=False its row count."""

        def statement(conn: Any) -> Any:
            cursor = conn.execute(sql, args)
            return cursor.fetchall() if rows else cursor.rowcount

        return self._transaction(statement)

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """`work(connection)` in one transaction; UnavailableError when PostgreSQL is away
        (the connection is dropped and made again next time)."""
        import psycopg

        with self._db_lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    result = work(conn)
            except psycopg.OperationalError as exc:
                conn.close()
                raise self._down(exc) from None
        self.reach.ok()
        return result

    def _down(self, exc: BaseException) -> UnavailableError:
        self.reach.failed(exc)
        return UnavailableError(
            f"the ledger database ({self.reach.safe_url}) cannot be reached: "
            f"{self.reach.last_error}",
            retry_after=5,
        ).publicly("the ledger database cannot be reached now")

    @property
    def up(self) -> bool:
        return self.reach.up

    # ---------------------------------------------------------------- the queue

    def record(self, entry: Entry) -> None:
        self._queue_row(asdict(entry))

    async def arecord(self, entry: Entry) -> None:
        self.record(entry)  # the queue's commit, on the loop: not batched by turn (yet)

    def begin(self, entry: Entry) -> None:
        self._queue_row(asdict(entry))

    def finish(self, entry: Entry) -> None:
        self._queue_row(asdict(entry))  # the drain's upsert replaces the pending row

    def abandon(self, response_id: str) -> None:
        self._queue_row({"abandon": response_id})

    def _queue_row(self, row: dict[str, Any]) -> None:
        """Commit `row` to the queue on local disk (LedgerUnavailableError when the disk will
        not take it: then nothing paid may be answered) and wake the drain."""
        text = json.dumps(row, ensure_ascii=False)
        try:  # concurrent rows, one commit (router.ledger.sqlite.GroupCommit)
            self._queue_writes.run(
                lambda db: db.execute("INSERT INTO pending (row) VALUES (?)", (text,))
            )
        except sqlite3.Error as exc:
            self.queue_reach.failed(exc)
            raise LedgerUnavailableError(
                "the ledger's queue cannot be written now (the server's log says why); paid "
                "calls are refused until it can"
            ) from None
        self.queue_reach.ok()
        self._wake.set()

    def queued(self) -> int:
        with self._queue_lock:
            return int(self._queue.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    def drain(self) -> int:
        """Move every queued row into PostgreSQL now; the number moved. UnavailableError when
        PostgreSQL is away (the rows stay queued)."""
        with self._drain_lock:
            return self._drain()

    def _drain(self) -> int:
        moved = 0
        while True:
            with self._queue_lock:
                batch = self._queue.execute(
                    "SELECT id, row FROM pending ORDER BY id LIMIT ?", (BATCH,)
                ).fetchall()
            if not batch:
                return moved
            self._transaction(
                functools.partial(self._apply, rows=[json.loads(t) for _, t in batch])
            )
            with self._queue_lock, self._queue:
                self._queue.executemany(
                    "DELETE FROM pending WHERE id = ?", [(i,) for i, _ in batch]
                )
            moved += len(batch)

    @staticmethod
    def _apply(conn: Any, *, rows: list[dict[str, Any]]) -> None:
        """Queued rows into PostgreSQL, in order, in the caller's transaction. A row replaces
        the pending row of its answer (and only a pending one: a batch sent twice inserts
        nothing twice); an `abandon` removes the pending row of a call that failed."""
        placeholders = ", ".join("%s" for _ in _COLUMNS)
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in _COLUMNS)
        upsert = (
            f"INSERT INTO requests ({_QUOTED}) VALUES ({placeholders}) "
            f"ON CONFLICT (response_id) WHERE response_id <> '' DO UPDATE SET {updates} "
            "WHERE requests.pending"
        )
        with conn.cursor() as cursor:
            values: list[list[Any]] = []
            for row in rows:
                if "abandon" not in row:
                    values.append([row.get(c, _NEW.get(c)) for c in _COLUMNS])
                    continue
                if values:
                    cursor.executemany(upsert, values)
                    values = []
                cursor.execute(
                    "DELETE FROM requests WHERE response_id = %s AND pending", (row["abandon"],)
                )
            if values:
                cursor.executemany(upsert, values)

    def _drain_forever(self) -> None:
        pause = 0.5
        while not self._stop:
            self._wake.wait(pause if not self.up else 1.0)
            self._wake.clear()
            try:
                self.drain()
                pause = 0.5
            except UnavailableError:
                pause = min(pause * 2, 5.0)  # PostgreSQL is away: try again, less often
                time.sleep(pause)
            except sqlite3.Error as exc:  # the queue's disk (full): the rows wait, re-sent
                self.queue_reach.failed(exc)  # later at no harm (the inserts are idempotent)
                time.sleep(1)
            except Exception:  # a bug must not stop the drain for good
                log.exception("draining the ledger queue failed")
                time.sleep(1)

    # ---------------------------------------------------------------- reads and updates

    def _synced(self) -> None:
        """This replica's queue drained first, so what it just answered is there."""
        self.drain()

    def entries(self, since: float | None = None) -> list[Entry]:
        self._synced()
        rows = self._run(
            f"SELECT {_QUOTED} FROM requests WHERE ts >= %s ORDER BY id", (since or 0.0,)
        )
        return [Entry(**dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    def recent(
        self, limit: int, user: str | None = None, session: str | None = None
    ) -> list[Entry]:
        self._synced()
        where, args = where_equal({"user": user, "session": session}, "%s")
        rows = self._run(
            f"SELECT {_QUOTED} FROM requests {where} ORDER BY id DESC LIMIT %s", (*args, limit)
        )
        return [Entry(**dict(zip(_COLUMNS, r, strict=True))) for r in reversed(rows)]

    def rate(self, response_id: str, rating: str, comment: str, user: str | None) -> bool:
        self._synced()
        where, args = "response_id = %s AND response_id <> ''", [response_id]
        if user is not None:
            where, args = where + ' AND "user" = %s', [*args, user]
        sql = f"UPDATE requests SET rating = %s, feedback = %s WHERE {where}"
        return int(self._run(sql, (rating, comment, *args), rows=False)) > 0

    def judged(self, response_id: str, verdict: Verdict) -> bool:
        self._synced()
        count = self._run(
            f"UPDATE requests SET {Verdict.SET.format(p='%s')} "
            "WHERE response_id = %s AND response_id <> ''",
            (*verdict.values(), response_id),
            rows=False,
        )
        return int(count) > 0

    def shadow_spend(self, since: float) -> float:
        self._synced()
        rows = self._run(
            "SELECT COALESCE(SUM(shadow_usd), 0) FROM requests WHERE ts >= %s", (since,)
        )
        return float(rows[0][0])

    def rollup(
        self,
        since: float,
        keys: Sequence[str] = (),
        *,
        sums: Sequence[str] = tuple(rollups.SUMS),
        user: str | None = None,
        ceilings: Sequence[float] = (),
    ) -> list[dict[str, Any]]:
        self._synced()
        sql, args = rollups.select(
            rollups.POSTGRES, since, keys, sums=sums, user=user, ceilings=ceilings
        )
        return rollups.rows(keys, sums, ceilings, self._run(sql, args))

    def days(
        self,
        since: float,
        end: float,
        account: str,
        *,
        user: str | None = None,
        teams: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, dict[str, int]]:
        self._synced()
        sql, args = rollups.select_days(
            rollups.POSTGRES, since, end, account, user=user, teams=teams
        )
        return rollups.day_rows(self._run(sql, args))

    def summary(
        self, since: float | None = None, by: str | None = None, *, user: str | None = None
    ) -> list[dict[str, Any]]:
        return summary_of(self, since, by, user)

    def totals(self, since: float | None = None, *, user: str | None = None) -> dict[str, Any]:
        return totals_of(self, since, user)

    def health(self) -> dict[str, Any]:
        """The database's state, and the queue's: `up` only when both take rows."""
        state = {"database": self.reach.safe_url, "queued": self.queued(), **self.reach.state()}
        queue = self.queue_reach.state()
        up = state["up"] and queue["up"]
        return {**state, "up": up, "queue": queue, "write_failures": queue["errors"]}

    def close(self, timeout: float = 5.0) -> None:
        """Drain what can be drained within `timeout`; the rest waits on disk for next time."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        try:
            self.drain()
        except UnavailableError:
            log.warning(
                "%d ledger rows wait in %s for the database", self.queued(), self._queue_path
            )
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
        with self._queue_lock:
            self._queue.close()

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
