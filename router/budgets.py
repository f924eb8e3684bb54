"""Budgets that cannot be overrun, even by concurrent requests.

Before a cloud call the engine reserves the call's worst case (estimated prompt tokens +
max_tokens, priced at the chosen model) against every budget that applies to the user and
their teams, in one SQLite `BEGIN IMMEDIATE` transaction: the check and the reservation are
atomic across threads and processes sharing the file. After the call the reservation is settled
to the real usage (never more than reserved, since the prompt estimate is pessimistic and the
answer is capped by max_tokens); on failure it is released.

`BudgetStore` is the seam (reserve/settle/release/usage); SQLite is the embedded default and a
shared database can take its place.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from router.config import Budget, Config
from router.errors import BudgetExceededError

LIMITS = (
    ("daily_tokens", "day", "tokens"),
    ("monthly_tokens", "month", "tokens"),
    ("daily_usd", "day", "usd"),
    ("monthly_usd", "month", "usd"),
)


def period(kind: str, now: float) -> tuple[str, dt.datetime]:
    """The period's key and when it resets (UTC)."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if kind == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"day:{start.date().isoformat()}", start + dt.timedelta(days=1)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    reset = (start + dt.timedelta(days=32)).replace(day=1)
    return f"month:{start:%Y-%m}", reset


@dataclass(frozen=True)
class Reservation:
    id: str
    budgets: tuple[str, ...]


class BudgetStore:
    def __init__(self, path: Path, config: Config) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._config = config
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS budget_usage (
                reservation TEXT NOT NULL,
                scope TEXT NOT NULL,
                period TEXT NOT NULL,
                tokens INTEGER NOT NULL,
                usd REAL NOT NULL,
                settled INTEGER NOT NULL DEFAULT 0,
                ts REAL NOT NULL
            );
            CREATE INDEX IF NOT EXISTS budget_usage_scope ON budget_usage (scope, period);
            CREATE TABLE IF NOT EXISTS budget_limits (
                scope TEXT PRIMARY KEY,
                budget TEXT NOT NULL
            );
            """
        )

    # ------------------------------------------------------------ which budgets apply

    def budgets(self) -> dict[str, Budget]:
        """models.toml budgets, overridden per user or team by `router budget set`."""
        found = {b.scope: b for b in self._config.budgets}
        with self._lock:
            rows = self._db.execute("SELECT scope, budget FROM budget_limits").fetchall()
        for scope, text in rows:
            found[scope] = Budget.model_validate_json(text)
        return found

    def set(self, budget: Budget) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO budget_limits VALUES (?, ?)",
                (budget.scope, budget.model_dump_json(exclude_none=True)),
            )

    def applicable(self, user: str | None) -> list[Budget]:
        if user is None:
            return []
        all_budgets = self.budgets()
        scopes = [f"user:{user}"] + [f"team:{t}" for t in self._config.teams_of(user)]
        return [all_budgets[s] for s in scopes if s in all_budgets]

    # ------------------------------------------------------------ reserve / settle / release

    def reserve(
        self, user: str | None, tokens: int, usd: float, now: float | None = None
    ) -> Reservation | None:
        """Reserve `tokens` and `usd` on every budget of `user`, or raise BudgetExceededError
        naming the first budget that cannot take it (nothing is reserved then)."""
        budgets = self.applicable(user)
        if not budgets:
            return None
        now = time.time() if now is None else now
        rid = uuid.uuid4().hex
        rows: list[tuple[str, str, str, int, float, int, float]] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for budget in budgets:
                    for field, kind, unit in LIMITS:
                        limit = getattr(budget, field)
                        if limit is None:
                            continue
                        key, reset = period(kind, now)
                        used_tokens, used_usd = self._db.execute(
                            "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) "
                            "FROM budget_usage WHERE scope = ? AND period = ?",
                            (budget.scope, key),
                        ).fetchone()
                        used, want = (used_tokens, tokens) if unit == "tokens" else (used_usd, usd)
                        if used + want > limit:
                            raise BudgetExceededError(budget, field, limit, used, want, reset)
                        rows.append((rid, budget.scope, key, tokens, usd, 0, now))
                # One row per (scope, period): two limits on the same period share it.
                unique = {(r[1], r[2]): r for r in rows}
                self._db.executemany(
                    "INSERT INTO budget_usage VALUES (?, ?, ?, ?, ?, ?, ?)", list(unique.values())
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Reservation(rid, tuple(b.scope for b in budgets))

    def settle(self, reservation: Reservation | None, tokens: int, usd: float) -> None:
        if reservation is None:
            return
        with self._lock:
            self._db.execute(
                "UPDATE budget_usage SET tokens = ?, usd = ?, settled = 1 WHERE reservation = ?",
                (tokens, usd, reservation.id),
            )

    def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        with self._lock:
            self._db.execute("DELETE FROM budget_usage WHERE reservation = ?", (reservation.id,))

    def usage(self, scope: str, now: float | None = None) -> dict[str, float]:
        """Tokens and USD used (settled + reserved) in the current day and month."""
        now = time.time() if now is None else now
        out: dict[str, float] = {}
        with self._lock:
            for kind in ("day", "month"):
                key, _ = period(kind, now)
                tokens, usd = self._db.execute(
                    "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM budget_usage "
                    "WHERE scope = ? AND period = ?",
                    (scope, key),
                ).fetchone()
                out[f"{'daily' if kind == 'day' else 'monthly'}_tokens"] = tokens
                out[f"{'daily' if kind == 'day' else 'monthly'}_usd"] = usd
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
