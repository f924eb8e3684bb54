"""Budgets that cannot be overrun, even by concurrent requests.

Before a cloud call the engine reserves what the call is expected to use (a pessimistic
prompt estimate + the completion the user's recent answers on that model took, their 95th
percentile, at least EXPECTED_FLOOR, or `[router] reserve_completion_tokens`; never more than
max_tokens), priced at the chosen model, against every budget that applies to the user and
their teams, in one SQLite `BEGIN IMMEDIATE` transaction: the check and the reservation are
atomic across threads and processes sharing the file. After the call the reservation is settled
to the real usage; on failure it is released. So a budget is overrun by at most what the calls
already in flight use beyond their reservations. A `strict` budget reserves the worst case
(max_tokens) instead and is never overrun; when the caller did not set max_tokens and it has
less left than the default needs, max_tokens is lowered to what is left instead of refusing the
call. A refusal says whether the budget is spent (final until the reset) or only held by
requests still running (retry in seconds).

Token budgets count what a call is billed as tokens: fresh input, prompt-cache writes and output
in full, prompt-cache reads as their price's share of the input price (Price.budget_tokens).

`BudgetStore` is the seam (reserve/settle/release/usage); SQLite is the embedded default and a
shared database can take its place.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.config import Budget, Config, Price
from router.errors import BudgetExceededError, RequestError
from router.ledger.sqlite import Store, migrate, open_db

LIMITS = (
    ("daily_tokens", "day", "tokens"),
    ("monthly_tokens", "month", "tokens"),
    ("daily_usd", "day", "usd"),
    ("monthly_usd", "month", "usd"),
    ("session_tokens", "session", "tokens"),
    ("session_usd", "session", "usd"),
)
NEVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)  # a session's budget never resets


def kinds(session: str | None) -> tuple[str, ...]:
    """The period kinds a request is counted in: the day, the month, and its session."""
    return ("day", "month", "session") if session else ("day", "month")


def period(kind: str, now: float, session: str | None = None) -> tuple[str, dt.datetime]:
    """The period's key and when it resets (UTC); a session's, never."""
    if kind == "session":
        return f"session:{session}", NEVER
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if kind == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"day:{start.date().isoformat()}", start + dt.timedelta(days=1)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    reset = (start + dt.timedelta(days=32)).replace(day=1)
    return f"month:{start:%Y-%m}", reset


MIN_COMPLETION_TOKENS = 64  # the least max_tokens a budget nearly spent may lower a call to
EXPECTED_FLOOR = 256  # the least completion a non-strict reservation expects
EXPECTED_PERCENTILE = 0.95


def expected_completion(recent: list[int], floor: int = EXPECTED_FLOOR) -> int:
    """The completion to reserve for, from the user's recent completions on the model: their
    95th percentile, never under `floor` (a user with no history gets the floor)."""
    if not recent:
        return floor
    ordered = sorted(recent)
    return max(floor, ordered[min(len(ordered) - 1, int(EXPECTED_PERCENTILE * len(ordered)))])


@dataclass(frozen=True)
class Reservation:
    id: str
    budgets: tuple[str, ...]
    cut: int = 0  # tokens left out of the request (see BudgetStore.reserve)
    rows: tuple[tuple[str, str], ...] = ()  # (scope, period) reserved on (the Redis store)
    extra: tuple[Budget, ...] = ()  # the budgets it held beyond the stored ones (a key's)


def shortened(params: dict[str, Any], reservation: Reservation | None) -> dict[str, Any]:
    """A call's parameters with max_tokens lowered by what its reservation had to cut."""
    if reservation is None or not reservation.cut:
        return params
    return {**params, "max_tokens": int(params["max_tokens"]) - reservation.cut}


# Per scope, per period kind: (tokens, usd) used in all and (tokens, usd) of settled calls.
Usage = dict[str, dict[str, tuple[float, float, float, float]]]


@dataclass(frozen=True)
class _Limit:
    budget: Budget
    field: str  # "daily_tokens", ...
    kind: str  # "day" or "month"
    unit: str  # "tokens" or "usd"
    limit: float
    used: float  # reserved and settled
    settled: float
    want: float  # what the request asks for, in this unit


def _limits(budgets: list[Budget], usage: Usage, tokens: int, usd: float) -> Iterator[_Limit]:
    """Every limit the budgets set, with what is used and what the request wants."""
    for budget in budgets:
        for field, kind, unit in LIMITS:
            limit = getattr(budget, field)
            if limit is None or kind not in usage[budget.scope]:  # no session: no session limit
                continue
            used_tokens, used_usd, settled_tokens, settled_usd = usage[budget.scope][kind]
            if unit == "tokens":
                yield _Limit(budget, field, kind, unit, limit, used_tokens, settled_tokens, tokens)
            else:
                yield _Limit(budget, field, kind, unit, limit, used_usd, settled_usd, usd)


_MIGRATIONS = [
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
    """,
]


class BudgetStore(Store):
    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self._config = config
        self._lock = threading.Lock()
        self._db = open_db(path, autocommit=True)  # reserve() runs its own BEGIN IMMEDIATE
        migrate(self._db, _MIGRATIONS, path)

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

    def remove(self, scope: str) -> bool:
        """Drop the `router budget set` limits of `scope`; False when it had none."""
        with self._lock:
            cur = self._db.execute("DELETE FROM budget_limits WHERE scope = ?", (scope,))
        return cur.rowcount > 0

    def applicable(self, user: str | None) -> list[Budget]:
        if user is None:
            return []
        all_budgets = self.budgets()
        return [all_budgets[s] for s in scopes_of(self._config, user) if s in all_budgets]

    # ------------------------------------------------------------ reserve / settle / release

    def reserve(
        self,
        user: str | None,
        tokens: int,
        usd: float,
        now: float | None = None,
        *,
        flexible_tokens: int = 0,
        usd_per_token: float = 0.0,
        session: str | None = None,
        extra: Sequence[Budget] = (),
    ) -> Reservation | None:
        """Reserve `tokens` and `usd` on every budget of `user`, or raise BudgetExceededError
        naming the first budget that cannot take it (nothing is reserved then).

        `flexible_tokens` of the tokens (each worth `usd_per_token`) may be left out when the
        budgets cannot take them all: the reservation then says how many were cut, and the
        caller must lower the call's max_tokens by as much, so the budget still holds.
        `extra`: budgets beyond the user's and their teams' (an API key's, KeyBudget)."""
        budgets = [*self.applicable(user), *extra]
        if not budgets:
            return None
        now = time.time() if now is None else now
        # One row per (scope, period) that has a limit.
        counted = kinds(session)
        rows = tuple(
            sorted(
                {
                    (b.scope, period(kind, now, session)[0])
                    for b in budgets
                    for field, kind, _ in LIMITS
                    if getattr(b, field) is not None and kind in counted
                }
            )
        )
        if not rows:  # only session limits, and a request of no session: nothing to hold
            return None

        def decide(usage: Usage) -> tuple[int, int, float]:
            """(tokens cut, tokens and usd to hold) on these figures, or the refusal."""
            cut = self._cut(budgets, usage, tokens, usd, usd_per_token)
            if cut > flexible_tokens:
                raise self._refusal(budgets, usage, tokens, usd, now)
            return cut, tokens - cut, max(0.0, usd - cut * usd_per_token)

        rid = uuid.uuid4().hex
        cut = self._hold(budgets, rows, rid, now, decide, session)
        return Reservation(rid, tuple(b.scope for b in budgets), cut, rows, tuple(extra))

    def _hold(
        self,
        budgets: list[Budget],
        rows: tuple[tuple[str, str], ...],
        rid: str,
        now: float,
        decide: Callable[[Usage], tuple[int, int, float]],
        session: str | None = None,
    ) -> int:
        """Read the usage, `decide`, and hold the result on every row, atomically; the tokens
        cut. Here: one SQLite BEGIN IMMEDIATE transaction (atomic across threads and
        processes sharing the file)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                usage = {b.scope: self._used(b.scope, now, session) for b in budgets}
                cut, tokens, usd = decide(usage)
                self._db.executemany(
                    "INSERT INTO budget_usage VALUES (?, ?, ?, ?, ?, 0, ?)",
                    [(rid, scope, key, tokens, usd, now) for scope, key in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return cut

    def _used(
        self, scope: str, now: float, session: str | None = None
    ) -> dict[str, tuple[float, float, float, float]]:
        """Per period kind: (tokens, usd) used in all, and (tokens, usd) of settled calls."""
        out = {}
        for kind in kinds(session):
            key, _ = period(kind, now, session)
            out[kind] = self._db.execute(
                "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0), "
                "COALESCE(SUM(tokens * settled), 0), COALESCE(SUM(usd * settled), 0) "
                "FROM budget_usage WHERE scope = ? AND period = ?",
                (scope, key),
            ).fetchone()
        return out

    @staticmethod
    def _cut(
        budgets: list[Budget], usage: Usage, tokens: int, usd: float, usd_per_token: float
    ) -> int:
        """The fewest tokens to leave out so that every limit holds (may exceed `tokens`)."""
        cut = 0.0
        for limit in _limits(budgets, usage, tokens, usd):
            over = limit.used + limit.want - limit.limit
            if over <= 0:
                continue
            if limit.unit == "tokens":
                cut = max(cut, over)
            else:
                cut = max(cut, over / usd_per_token if usd_per_token > 0 else float("inf"))
        return int(min(cut + 0.999999, 2**62))  # whole tokens, rounded up

    @staticmethod
    def _refusal(
        budgets: list[Budget], usage: Usage, tokens: int, usd: float, now: float
    ) -> BudgetExceededError:
        """The error for the first limit that cannot take the request; `in_flight` when only
        calls still running (their reservations) stand in the way."""
        for limit in _limits(budgets, usage, tokens, usd):
            if limit.used + limit.want > limit.limit:
                _, reset = period(limit.kind, now)
                return BudgetExceededError(
                    limit.budget,
                    limit.field,
                    limit.limit,
                    limit.used,
                    limit.want,
                    reset,
                    in_flight=limit.settled + limit.want <= limit.limit,
                )
        raise AssertionError("no limit is exceeded")  # pragma: no cover

    def reserve_call(
        self,
        user: str,
        prompt: int,
        completion: int,
        price: Price,
        *,
        shorten: bool,
        expected: Callable[[], int] | None = None,
        session: str | None = None,
        extra: Sequence[Budget] = (),
    ) -> Reservation | None:
        """Reserve a call of `prompt` + up to `completion` tokens at `price` (on `extra` too).

        With `expected` (what an answer of this user on this model is expected to take) and
        no `strict` budget, the reservation is `prompt` + that, not the ceiling: an agent
        sends max_tokens of 32,000 for answers of a few hundred. The call settles to its real
        usage, so a budget may be overrun by at most what the calls in flight use beyond
        their reservations (each at most its max_tokens less its expectation).

        Strict (or without `expected`), the whole ceiling is reserved. Either way, with
        `shorten` (the caller left max_tokens to the default) a budget nearly spent cuts the
        completion, down to MIN_COMPLETION_TOKENS or half of it, instead of refusing the call."""
        budgets = [*self.applicable(user), *extra]
        if not budgets:
            return None
        strict = expected is None or any(b.strict for b in budgets)
        want = completion if strict or expected is None else max(1, min(completion, expected()))
        floor = min(MIN_COMPLETION_TOKENS, want // 2)
        return self.reserve(
            user,
            prompt + want,
            price.cost(prompt, want),
            flexible_tokens=want - floor if shorten else 0,
            usd_per_token=price.output_per_mtok / 1e6,
            session=session,
            extra=extra,
        )

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


class KeyBudget(Budget):
    """An API key's own budget (`router keys create --daily-usd 5`): its scope is the key's,
    `key:<id>`, held on top of whatever the user's budgets allow. A rotated key's budget
    starts the day anew (rotating is an admin's act)."""

    key_id: str

    @property
    def scope(self) -> str:
        return f"key:{self.key_id}"


def key_budgets(user: str | None, key_budget: tuple[str, float] | None) -> list[Budget]:
    """The budgets a request's API key carries (ChatRequest.key_budget): none, or its own."""
    if user is None or key_budget is None:
        return []
    return [KeyBudget(user=user, key_id=key_budget[0], daily_usd=key_budget[1])]


def scopes_of(config: Config, user: str) -> list[str]:
    """The budget scopes that apply to `user`: their own, then their teams'."""
    return [f"user:{user}"] + [f"team:{t}" for t in config.teams_of(user)]


def budget_rows(store: BudgetStore, scopes: list[str] | None = None) -> list[dict[str, Any]]:
    """Each budget's limits and this day's and month's use (`router budget show --json`);
    with `scopes`, only those budgets."""
    rows = []
    for scope, budget in sorted(store.budgets().items()):
        if scopes is not None and scope not in scopes:
            continue
        used = store.usage(scope)
        limits = {n: getattr(budget, n) for n, _, _ in LIMITS if getattr(budget, n) is not None}
        rows.append(
            {
                "scope": scope,
                "on_exceed": budget.on_exceed,
                "strict": budget.strict,
                "limits": limits,
                "used": {k: used[k] for k in limits if k in used},  # a session's: its own
            }
        )
    return rows


BUDGET_FIELDS = (
    "user", "team", "daily_tokens", "monthly_tokens", "daily_usd", "monthly_usd",
    "session_tokens", "session_usd", "strict", "on_exceed",
)  # fmt: skip


def parse_budget(fields: dict[str, Any], config: Config) -> Budget:
    """A budget from `router budget set`'s options or the admin API's body, checked as
    models.toml's are (RequestError naming what to fix): a known team, at least one limit."""
    from pydantic import ValidationError

    unknown = sorted(set(fields) - set(BUDGET_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0][:40]!r}: give {', '.join(BUDGET_FIELDS)}",
            param=unknown[0][:40],
        )
    team = fields.get("team")
    if isinstance(team, str) and team not in config.teams:
        known = ", ".join(config.teams) or "none"
        raise RequestError(
            f"team {team[:80]!r} is not in models.toml (known: {known})", param="team"
        )
    try:
        return Budget.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(
            "; ".join(
                (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            ),
            param=where,
        ) from None
