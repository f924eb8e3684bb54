"""Budget reservations on Redis, atomic across every replica.

The rules are the embedded store's (router.governance.budgets): reserve the call's worst case
on every budget of the user and their teams at once, settle to the real usage, release on
failure, cut max_tokens when the caller left it to the default. Here the check and the
reservation are one optimistic Redis transaction: WATCH the user's budget keys, read the
usage, decide in Python (the same code as SQLite's), MULTI/EXEC the reservation on every
budget; a replica that changed one of those keys in between makes EXEC fail, and the
reservation is decided again on the new figures. So two replicas can never both take the
last of a budget.

Per (scope, period) two hashes: `settled` (tokens, usd) and `held` (reservation id ->
"tokens usd expires_at"). A reservation stops counting at expires_at (`[shared]
reservation_ttl_seconds`): a replica killed mid-call leaks nothing past that. Settling adds the
real usage even when the reservation has expired: money spent is never forgotten. Keys expire
40 days after their period's last write.

While Redis is down, a user with a budget gets `on_redis_down` (BudgetStoreDownError: local
only, or refused); settlements that cannot be written wait in memory and are written on the
next call that reaches Redis.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from router.config import Budget, Config
from router.errors import BudgetStoreDownError, UnavailableError
from router.governance.budgets import BudgetStore, Reservation, Usage, kinds, period
from router.shared import Link, errors

KEEP_SECONDS = 40 * 86400
LIMITS_SECONDS = 1.0
ATTEMPTS = 400  # optimistic rounds before giving up (each costs one loopback round trip)


class RedisBudgetStore(BudgetStore):
    def __init__(self, link: Link, config: Config) -> None:  # no SQLite file: see the module
        self._link = link
        self._config = config
        self._ttl = config.shared.reservation_ttl_seconds
        self._on_down = config.shared.on_redis_down
        self._lock = threading.Lock()
        self._known: dict[str, Budget] = {}  # the last `router budget set` limits read
        self._read_at = -LIMITS_SECONDS
        self._pending: list[tuple[tuple[tuple[str, str], ...], str, int, float]] = []

    # ------------------------------------------------------------ which budgets apply

    def budgets(self) -> dict[str, Budget]:
        """models.toml's budgets, overridden by `router budget set` (read from Redis at most
        once a second: a change reaches every replica within LIMITS_SECONDS)."""
        found = {b.scope: b for b in self._config.budgets}
        if time.monotonic() - self._read_at < LIMITS_SECONDS:
            with self._lock:
                return {**found, **self._known}
        try:
            rows = self._link.client.hgetall(self._link.key("budget_limits"))
        except errors() as exc:
            self._link.failed(exc)
            return {**found, **self._known}  # the limits last seen: never none
        self._link.ok()
        known = {str(scope): Budget.model_validate_json(text) for scope, text in rows.items()}
        with self._lock:
            self._known, self._read_at = known, time.monotonic()
        return {**found, **known}

    def set(self, budget: Budget) -> None:
        self._read_at = -LIMITS_SECONDS
        self._write(
            lambda c: c.hset(
                self._link.key("budget_limits"),
                budget.scope,
                budget.model_dump_json(exclude_none=True),
            )
        )

    def remove(self, scope: str) -> bool:
        self._read_at = -LIMITS_SECONDS
        return bool(self._write(lambda c: c.hdel(self._link.key("budget_limits"), scope)))

    def _write(self, call: Callable[[Any], Any]) -> Any:
        """A command's call (budget set, rm, show): Redis must answer, or UnavailableError says
        where it was looked for."""
        try:
            result = call(self._link.client)
        except errors() as exc:
            self._link.failed(exc)
            raise UnavailableError(
                f"cannot reach Redis at {self._link.safe_url} ([shared] redis_url): {exc}"
            ).publicly("the budget store cannot be reached now") from None
        self._link.ok()
        return result

    # ------------------------------------------------------------ reserve / settle / release

    def _keys(self, scope: str, key: str) -> tuple[str, str]:
        return self._link.key("budget", scope, key, "held"), self._link.key(
            "budget", scope, key, "settled"
        )

    def _hold(
        self,
        budgets: list[Budget],
        rows: tuple[tuple[str, str], ...],
        rid: str,
        now: float,
        decide: Callable[[Usage], tuple[int, int, float]],
        session: str | None = None,
    ) -> int:
        """Here: WATCH the rows' keys, read, decide, MULTI/EXEC the holds; a replica that
        changed a watched key in between makes EXEC fail, and it is decided again."""
        import redis

        watched = [k for scope, key in rows for k in self._keys(scope, key)]
        try:
            self._flush()
            for _ in range(ATTEMPTS):
                with self._link.client.pipeline() as pipe:
                    try:
                        pipe.watch(*watched)  # type: ignore[no-untyped-call]
                        usage, expired = self._usage(budgets, now, session)
                        cut, tokens, usd = decide(usage)
                        pipe.multi()
                        for scope, key in rows:
                            held, _ = self._keys(scope, key)
                            pipe.hset(held, rid, f"{tokens} {usd!r} {now + self._ttl!r}")
                            pipe.expire(held, KEEP_SECONDS)
                        for held, old in expired:
                            pipe.hdel(held, old)
                        pipe.execute()
                    except redis.WatchError:
                        time.sleep(random.uniform(0, 0.002))
                        continue
                self._link.ok()
                return cut
        except errors() as exc:
            self._link.failed(exc)
            raise BudgetStoreDownError(
                f"the budget store (Redis at {self._link.safe_url}) cannot be reached: {exc}",
                policy=self._on_down,
            ).publicly("the budget store cannot be reached now") from None
        busy = "the budget store is too busy to reserve; retry"
        raise UnavailableError(busy, retry_after=1).publicly(busy)

    def _usage(
        self, budgets: list[Budget], now: float, session: str | None = None
    ) -> tuple[Usage, list[tuple[str, str]]]:
        """Per scope and period kind: (tokens, usd) used (settled + live reservations) and
        settled; and the expired reservations to drop. One round trip (a pipeline: reads from
        another connection do not disturb the reserving connection's WATCH)."""
        keys = [
            (b.scope, kind, *self._keys(b.scope, period(kind, now, session)[0]))
            for b in budgets
            for kind in kinds(session)
        ]
        reader = self._link.client.pipeline(transaction=False)
        for _, _, held_key, settled_key in keys:
            reader.hgetall(settled_key)
            reader.hgetall(held_key)
        values = reader.execute()
        usage: Usage = {}
        expired: list[tuple[str, str]] = []
        for i, (scope, kind, held_key, _) in enumerate(keys):
            settled, held = values[2 * i], values[2 * i + 1]
            s_tokens, s_usd = float(settled.get("tokens", 0)), float(settled.get("usd", 0))
            h_tokens = h_usd = 0.0
            for rid, value in held.items():
                t, u, until = (float(x) for x in value.split())
                if until < now:
                    expired.append((held_key, rid))
                    continue
                h_tokens, h_usd = h_tokens + t, h_usd + u
            usage.setdefault(scope, {})[kind] = (
                s_tokens + h_tokens,
                s_usd + h_usd,
                s_tokens,
                s_usd,
            )
        return usage, expired

    def settle(self, reservation: Reservation | None, tokens: int, usd: float) -> None:
        if reservation is None:
            return
        with self._lock:
            self._pending.append((reservation.rows, reservation.id, tokens, usd))
        try:
            self._flush()
        except errors() as exc:  # written with the next call that reaches Redis
            self._link.failed(exc)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        try:
            while pending:
                rows, rid, tokens, usd = pending[0]
                pipe = self._link.client.pipeline()  # MULTI/EXEC: all rows or none
                for scope, key in rows:
                    held, settled = self._keys(scope, key)
                    pipe.hdel(held, rid)
                    pipe.hincrbyfloat(settled, "tokens", tokens)
                    pipe.hincrbyfloat(settled, "usd", usd)
                    pipe.expire(settled, KEEP_SECONDS)
                pipe.execute()
                pending.pop(0)
        finally:
            if pending:
                with self._lock:
                    self._pending[:0] = pending

    def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        try:
            pipe = self._link.client.pipeline()
            for scope, key in reservation.rows:
                pipe.hdel(self._keys(scope, key)[0], reservation.id)
            pipe.execute()
        except errors() as exc:  # it expires on its own
            self._link.failed(exc)

    def usage(self, scope: str, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        budget = Budget.model_validate({**_scope_fields(scope), "daily_tokens": 0})
        usage, _ = self._write(lambda c: self._usage([budget], now))
        out: dict[str, float] = {}
        for kind, name in (("day", "daily"), ("month", "monthly")):
            tokens, usd, _, _ = usage[scope][kind]
            out[f"{name}_tokens"], out[f"{name}_usd"] = tokens, usd
        return out

    def pending_settlements(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        try:
            self._flush()
        except errors():
            pass


def _scope_fields(scope: str) -> dict[str, str]:
    kind, _, name = scope.partition(":")
    return {kind: name}
