"""The books: the savings ledger, one row per request (answered or refused), and what its
figures are made of.

`Ledger` is the seam (record/entries/totals/close); `SQLiteLedger` is the embedded default
(WAL, numbered migrations in PRAGMA user_version); router.shared.postgres.PostgresLedger puts
the same schema on PostgreSQL for several replicas. In this package too: `rollups` (the
ledger's sums in SQL, for SQLite and PostgreSQL), `pricing` (what an answer costs and saves,
LiteLLM's prices), `sqlite` (the embedded stores' SQLite: connections, migrations, group
commits).
"""

from __future__ import annotations

import operator
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from router.chunks import canonical_id
from router.errors import LedgerUnavailableError, NotFoundError, RequestError
from router.ledger import rollups
from router.ledger.rollups import GROUPS as GROUPS  # re-exported: what `stats --by` groups by
from router.ledger.rollups import summary_of as summary_of
from router.ledger.rollups import totals_of as totals_of
from router.ledger.rollups import where_equal
from router.ledger.sqlite import GroupCommit, Store, migrate, open_db
from router.reachability import Reachability
from router.types import Routing

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    """Shadow judging's outcome on one answer (see Entry's fields of the same names)."""

    verdict: str
    judge: str
    shadow_model: str
    votes: str
    usd: float

    SET = (
        "verdict = {p}, judge = {p}, shadow_model = {p}, votes = {p}, shadow_usd = shadow_usd + {p}"
    )

    def values(self) -> tuple[str, str, str, str, float]:
        """The values for SET's placeholders, in order."""
        return (self.verdict, self.judge, self.shadow_model, self.votes, self.usd)


@dataclass(frozen=True)
class Entry:
    ts: float
    user: str | None
    tier: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    baseline_usd: float
    tokens_saved: int
    usd_saved: float
    cache_hit: bool
    latency_ms: float
    score: float
    reason: str
    stream: bool = False
    prompt: str | None = None  # only when router.store_prompts = true
    category: str = "other"
    flags: str = ""  # comma-separated low-value flags ("trivial-document", "repeat")
    estimator: str = ""  # the estimator that gave the score ("structure-v1"); "" before v1
    response_id: str = ""  # the answer's id, as the client got it
    rating: str = ""  # feedback: "good", "bad" or "" (none)
    feedback: str = ""  # the feedback's comment
    # Shadow judging ([quality]): the other tier's model, the judge, its verdict on the local
    # answer ("acceptable", "unacceptable", or "" when not judged), each order's vote, and what
    # the shadow calls cost (the router's own spend: never in cost_usd, never on a budget).
    verdict: str = ""
    judge: str = ""
    shadow_model: str = ""
    votes: str = ""
    shadow_usd: float = 0.0
    # Written ahead of a paid call with the call's worst case (router.engine.bookkeeping); the final
    # row replaces it. One that stays pending is a call the router did not see finish.
    pending: bool = False
    api: str = "chat"  # the API the request came through (router.types.APIS)
    saved_by: str = ""  # routed, fallback, cache or cloud (Routing.saved_by); "" before it
    cache_read_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    session: str = ""  # the client's conversation or agent session (router.identity)
    # Why the request was refused, with no model called ("budget", "guardrail", "rate"): a
    # row of zero tokens whose reason is the refusal; "" for every answered request.
    refusal: str = ""
    prompt_cached_tokens: int = 0  # of a local model's prompt: reused from its KV cache
    # The answer's assistant message as JSON (its text, or its tool calls), beside `prompt`:
    # only when router.store_prompts = true (`router export` makes training records of both).
    answer: str | None = None

    @classmethod
    def from_routing(cls, routing: Routing, **rest: Any) -> Entry:
        """The row for an answered request: what `routing` says happened, plus `rest` (user,
        stream, estimator, prompt), stamped now."""
        shared = _FROM_ROUTING.get(cls)
        if shared is None:  # the fields both have, found once: asdict's deep copy was slow
            routed = {f.name for f in fields(Routing)}
            shared = _FROM_ROUTING[cls] = [f.name for f in fields(cls) if f.name in routed]
        data = {name: getattr(routing, name) for name in shared}
        data["flags"] = ",".join(routing.flags)
        return cls(ts=time.time(), **data, **rest)


_FROM_ROUTING: dict[type, list[str]] = {}


class Sums(Protocol):
    """What the figures read of a ledger (router.ledger.rollups): sums in SQL, never rows."""

    def rollup(
        self,
        since: float,
        keys: Sequence[str] = (),
        *,
        sums: Sequence[str] = tuple(rollups.SUMS),
        user: str | None = None,
        ceilings: Sequence[float] = (),
    ) -> list[dict[str, Any]]: ...

    def days(
        self,
        since: float,
        end: float,
        account: str,
        *,
        user: str | None = None,
        teams: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, dict[str, int]]: ...

    def summary(
        self, since: float | None = None, by: str | None = None, *, user: str | None = None
    ) -> list[dict[str, Any]]: ...

    def totals(self, since: float | None = None, *, user: str | None = None) -> dict[str, Any]: ...


class Ledger(Sums, Protocol):
    def record(self, entry: Entry) -> None:
        """Write a row; LedgerUnavailableError when it cannot be written."""

    async def arecord(self, entry: Entry) -> None:
        """`record` from the server's event loop (a cache hit)."""

    def begin(self, entry: Entry) -> None:
        """Write a pending row ahead of a paid call (`entry.pending`)."""

    def finish(self, entry: Entry) -> None:
        """Write the final row of an answer, in place of its pending row if there is one."""

    def abandon(self, response_id: str) -> None:
        """Remove the pending row of a call that failed (nothing was answered)."""

    def health(self) -> dict[str, Any]:
        """`up` (the last write went in), `write_failures` and the details."""

    def entries(self, since: float | None = None) -> list[Entry]: ...

    def recent(
        self, limit: int, user: str | None = None, session: str | None = None
    ) -> list[Entry]: ...

    def rate(self, response_id: str, rating: str, comment: str, user: str | None) -> bool: ...

    def judged(self, response_id: str, verdict: Verdict) -> bool: ...

    def shadow_spend(self, since: float) -> float: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


_MIGRATIONS = [
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        user TEXT,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        baseline_usd REAL NOT NULL,
        tokens_saved INTEGER NOT NULL,
        usd_saved REAL NOT NULL,
        cache_hit INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        score REAL NOT NULL,
        reason TEXT NOT NULL,
        stream INTEGER NOT NULL,
        prompt TEXT
    );
    CREATE INDEX requests_ts ON requests (ts);
    CREATE INDEX requests_user_ts ON requests (user, ts);
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
    CREATE INDEX requests_response_id ON requests (response_id);
    """,
    """
    ALTER TABLE requests ADD COLUMN verdict TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN judge TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN shadow_model TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN votes TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN shadow_usd REAL NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE requests ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE requests ADD COLUMN api TEXT NOT NULL DEFAULT 'chat';
    """,
    """
    ALTER TABLE requests ADD COLUMN saved_by TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE requests ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE requests ADD COLUMN session TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN refusal TEXT NOT NULL DEFAULT '';
    CREATE INDEX requests_session ON requests (session) WHERE session != '';
    """,
    """
    ALTER TABLE requests ADD COLUMN prompt_cached_tokens INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE requests ADD COLUMN answer TEXT;
    """,
]

_COLUMNS = [f.name for f in fields(Entry)]
_VALUES = operator.attrgetter(*_COLUMNS)  # an entry's values in _COLUMNS' order, as a tuple


def _entry(row: dict[str, Any]) -> Entry:
    # SQLite has no boolean type: the flags come back as 0/1.
    flags = {name: bool(row[name]) for name in ("cache_hit", "stream", "pending")}
    return Entry(**{**row, **flags})


_INSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_REPLACE = (
    f"UPDATE requests SET {', '.join(f'{c} = ?' for c in _COLUMNS)} "
    "WHERE response_id = ? AND response_id != '' AND pending = 1"
)


class SQLiteLedger(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path)
        migrate(self._db, _MIGRATIONS, path)
        self._writes = GroupCommit(self._db, self._lock)  # concurrent rows, one commit
        self.reach = Reachability("the ledger", str(path))

    def record(self, entry: Entry) -> None:
        values = _VALUES(entry)
        self._write(lambda db: db.execute(_INSERT, values))

    async def arecord(self, entry: Entry) -> None:
        """`record` from the event loop: the rows of the hits it serves in one turn share one
        commit (GroupCommit.arun; a commit a row was an eighth of a hit's time)."""
        values = _VALUES(entry)
        with self._writing():
            await self._writes.arun(lambda db: db.execute(_INSERT, values))

    def begin(self, entry: Entry) -> None:
        self.record(entry)

    def finish(self, entry: Entry) -> None:
        values = _VALUES(entry)

        def replace_or_insert(db: sqlite3.Connection) -> None:
            if db.execute(_REPLACE, [*values, entry.response_id]).rowcount == 0:
                db.execute(_INSERT, values)

        self._write(replace_or_insert)

    def abandon(self, response_id: str) -> None:
        sql = "DELETE FROM requests WHERE response_id = ? AND pending = 1"
        # Deleting (often nothing) says nothing of whether the disk takes rows again.
        self._write(lambda db: db.execute(sql, (response_id,)), proves=False)

    def health(self) -> dict[str, Any]:
        """Whether the last write went in (`up`), and the failures since the start."""
        return {"path": str(self.path), **self.reach.state(), "write_failures": self.reach.errors}

    def _write(self, work: Callable[[sqlite3.Connection], T], *, proves: bool = True) -> T:
        """`work` in one transaction; LedgerUnavailableError (the cause in the server's log
        and /health) when the disk will not take it. `proves`: success shows the ledger takes
        rows again."""
        with self._writing(proves=proves):
            done = self._writes.run(work)
        return done

    @contextmanager
    def _writing(self, *, proves: bool = True) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            self.reach.failed(exc)
            raise LedgerUnavailableError(
                "the ledger cannot be written now (the server's log says why); paid calls are "
                "refused until it can"
            ) from None
        if proves:
            self.reach.ok()

    def entries(self, since: float | None = None) -> list[Entry]:
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE ts >= ? ORDER BY id",
                (since or 0.0,),
            )
            rows = cursor.fetchall()
        return [_entry(dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    def rate(self, response_id: str, rating: str, comment: str, user: str | None) -> bool:
        """Record feedback on the answer `response_id` (a second rating replaces the first);
        with `user`, only on that user's own answers. False when there is no such answer."""
        where, args = "response_id = ? AND response_id != ''", [response_id]
        if user is not None:
            where, args = where + " AND user = ?", [*args, user]
        sql = f"UPDATE requests SET rating = ?, feedback = ? WHERE {where}"
        return self._write(lambda db: db.execute(sql, (rating, comment, *args)).rowcount > 0)

    def judged(self, response_id: str, verdict: Verdict) -> bool:
        """Record shadow judging's outcome on the answer `response_id`."""
        sql = (
            f"UPDATE requests SET {Verdict.SET.format(p='?')} "
            "WHERE response_id = ? AND response_id != ''"
        )
        return self._write(
            lambda db: db.execute(sql, (*verdict.values(), response_id)).rowcount > 0
        )

    def shadow_spend(self, since: float) -> float:
        """Dollars spent on shadow judging since `since` (the cap's measure)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(shadow_usd), 0) FROM requests WHERE ts >= ?", (since,)
            ).fetchone()
        return float(row[0])

    def recent(
        self, limit: int, user: str | None = None, session: str | None = None
    ) -> list[Entry]:
        """The last `limit` requests (of `user`, of `session`, if given), oldest first."""
        where, args = where_equal({"user": user, "session": session}, "?")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests {where} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_entry(dict(zip(_COLUMNS, r, strict=True))) for r in reversed(rows)]

    def rollup(
        self,
        since: float,
        keys: Sequence[str] = (),
        *,
        sums: Sequence[str] = tuple(rollups.SUMS),
        user: str | None = None,
        ceilings: Sequence[float] = (),
    ) -> list[dict[str, Any]]:
        """Sums per group of `keys` over the rows since `since` (router.ledger.rollups.select)."""
        with self.reading() as db:
            sql, args = rollups.select(
                rollups.SQLITE,
                since,
                keys,
                sums=sums,
                user=user,
                ceilings=ceilings,
                scan=self._scan(db, since),
            )
            found = db.execute(sql, args).fetchall()
        return rollups.rows(keys, sums, ceilings, found)

    def days(
        self,
        since: float,
        end: float,
        account: str,
        *,
        user: str | None = None,
        teams: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, dict[str, int]]:
        """Each account's tokens per day before `end` (router.ledger.rollups.select_days)."""
        with self.reading() as db:
            sql, args = rollups.select_days(
                rollups.SQLITE,
                since,
                end,
                account,
                user=user,
                teams=teams,
                scan=self._scan(db, since),
            )
            found = db.execute(sql, args).fetchall()
        return rollups.day_rows(found)

    @staticmethod
    def _scan(db: sqlite3.Connection, since: float) -> bool:
        """Whether a window starting at `since` covers a quarter or more of the ledger's
        span, where reading the table through beats looking every row up by the ts index."""
        oldest = db.execute("SELECT MIN(ts) FROM requests").fetchone()[0]
        now = time.time()
        return oldest is not None and now - since >= 0.25 * (now - oldest)

    def summary(
        self, since: float | None = None, by: str | None = None, *, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Sums per group (`by`: day, user, tier, model or category; None: one row)."""
        return summary_of(self, since, by, user)

    def totals(self, since: float | None = None, *, user: str | None = None) -> dict[str, Any]:
        """Sums over everything since `since`, with request counts by tier."""
        return totals_of(self, since, user)


_SINCE = re.compile(r"^(\d{1,9})\s*([mhdw])$")
MAX_WINDOW_DAYS = 400  # the longest window any read takes: a year and a bit


def parse_since(value: str, name: str = "--since") -> float:
    """A ledger window, '30m', '24h', '7d' or '2w', as the Unix time that long ago; at most
    MAX_WINDOW_DAYS. RequestError (naming `name`, the option or parameter) otherwise."""
    return time.time() - duration(value, name)


def duration(value: str, name: str) -> int:
    """'30m', '24h', '7d' or '2w' in seconds, at most MAX_WINDOW_DAYS; RequestError naming
    `name` otherwise."""
    match = _SINCE.match(value.strip().lower()) if len(value) <= 40 else None
    if not match:
        raise RequestError(
            f"{name} {value[:40]!r}: expected a number and m, h, d or w (e.g. 24h, 7d, 30d)",
            param=name.lstrip("-"),
        )
    seconds = int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    if seconds > MAX_WINDOW_DAYS * 86400:
        raise RequestError(
            f"{name} {value[:40]!r}: the longest window is {MAX_WINDOW_DAYS} days "
            f"({MAX_WINDOW_DAYS}d)",
            param=name.lstrip("-"),
        )
    return seconds


MAX_COMMENT = 2000


def rate_answer(
    ledger: Ledger, response_id: str, rating: str, comment: str, user: str | None
) -> None:
    """Feedback on an answer (`Router.feedback`), checked: RequestError for a bad rating or
    comment, NotFoundError when the ledger has no such answer (or not the user's)."""
    if rating not in ("good", "bad"):
        raise RequestError(f"rating {rating[:20]!r}: give 'good' or 'bad'", param="rating")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise RequestError(f"comment: at most {MAX_COMMENT} characters", param="comment")
    if not ledger.rate(canonical_id(response_id), rating, comment, user):
        raise NotFoundError(f"no answer with id {response_id[:80]!r} in the ledger", param="id")
