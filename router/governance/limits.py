"""Rate limits ([[limits]] in models.toml): requests and tokens a minute, per user or team.

A budget caps a day or a month; a rate limit stops one runaway script from spending it in a
minute, or from holding the local model while everyone else waits. Each rule counts over the
last 60 seconds, sliding (no fixed minute boundary to burst across):

- `rpm`: requests admitted. Exact: a request is counted as it is admitted, under a lock (or
  in one Redis script), so 100 concurrent requests against rpm = 10 get 10 answers.
- `tpm`: the tokens models worked on (prompt and completion; a cache hit counts none), added
  as each answer ends. A request is admitted while the window holds fewer than `tpm`, so the
  answers under way when it is reached may go past it (a request's size is unknown before).

A rule names a `user`, a `team` (its members share one window) or neither (each user has a
window of their own, the anonymous requests of a server without keys one together);
`model` narrows it to the requests asking for that mode or model. A user's own rule
replaces the each-user rule for the same `model`; team rules apply on top.

`MemoryLimits` counts in this process (the embedded default: `router serve` is one process);
router.shared.limits counts on Redis, in total across replicas. A refusal is a
RateLimitedError: a 429 `rate_limited` with Retry-After, and a ledger row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router.config import Config, RateLimit
from router.config.sections import WINDOW_SECONDS
from router.errors import RateLimitedError, RequestError, RouterError
from router.ledger.sqlite import Store, migrate, open_db
from router.types import ROUTING_MODES

log = logging.getLogger("router.limits")

MAX_WINDOWS = 100_000  # windows kept in process; idle ones go first past it


@dataclass(frozen=True)
class Window:
    """One counter: `key` names what it counts (a user's or team's requests, for a model or
    all), `rpm` and `tpm` its limits (None: not limited), `scope` its words."""

    key: str
    scope: str
    rpm: int | None
    tpm: int | None


def windows(
    config: Config, user: str | None, model: str, rules: Sequence[RateLimit] | None = None
) -> list[Window]:
    """The windows a request by `user` asking for `model` (after [aliases]) counts in, under
    `rules` (default: models.toml's)."""
    rules = [r for r in (config.limits if rules is None else rules)
             if r.model is None or r.model == model]  # fmt: skip
    own = {r.model for r in rules if r.user is not None and r.user == user}
    found: dict[str, Window] = {}
    for rule in rules:
        if rule.team is not None:
            team = config.teams.get(rule.team)
            if user is None or team is None or user not in team.users:
                continue
            key, scope = f"team:{rule.team}", f"team:{rule.team}"
        elif rule.user is not None:
            if rule.user != user:
                continue
            key, scope = f"user:{user}", f"user:{user}"
        elif rule.model in own:
            continue  # the user's own rule replaces the each-user one
        else:
            key, scope = f"user:{user or ''}", f"user:{user}" if user else "anonymous"
        if rule.model is not None:
            key, scope = f"{key}|model:{rule.model}", f"{scope} model:{rule.model}"
        was = found.get(key)
        found[key] = Window(
            key,
            scope,
            _least(was.rpm if was else None, rule.rpm),
            _least(was.tpm if was else None, rule.tpm),
        )
    return list(found.values())


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class Limits(Protocol):
    """What the pipeline needs of a rate-limit store (in process here, or Redis)."""

    def admit(self, counted: list[Window]) -> None:
        """Count one request in every window, or none and raise RateLimitedError."""

    async def aadmit(self, counted: list[Window]) -> None:
        """`admit` on the server's event loop, without a thread (it never blocks the loop)."""

    def used(self, counted: list[Window], tokens: int) -> None:
        """Add an answer's tokens to the windows with a tpm."""


class MemoryLimits:
    """Sliding windows in this process: the admitted requests' times, and the answers'
    (time, tokens), each pruned to the last WINDOW_SECONDS as it is read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._sums: dict[str, int] = {}

    def admit(self, counted: list[Window], now: float | None = None) -> None:
        if not counted:
            return
        now = time.time() if now is None else now
        since = now - WINDOW_SECONDS
        with self._lock:
            for w in counted:
                if w.rpm is not None:
                    hits = self._hits.get(w.key) or deque()
                    while hits and hits[0] <= since:
                        hits.popleft()
                    if len(hits) >= w.rpm:  # the oldest that must leave before one more fits
                        wait = hits[len(hits) - w.rpm] + WINDOW_SECONDS - now
                        raise RateLimitedError(w.scope, "rpm", w.rpm, len(hits), wait)
                if w.tpm is not None:
                    spent = self._prune_tokens(w.key, since)
                    if spent >= w.tpm:
                        wait = self._tokens_wait(w.key, spent, w.tpm, now)
                        raise RateLimitedError(w.scope, "tpm", w.tpm, spent, wait)
            if len(self._hits) + len(self._tokens) > MAX_WINDOWS:
                self._sweep(since)
            for w in counted:
                if w.rpm is not None:
                    self._hits.setdefault(w.key, deque()).append(now)

    async def aadmit(self, counted: list[Window]) -> None:
        self.admit(counted)  # a lock and a few deque operations: microseconds

    def used(self, counted: list[Window], tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        with self._lock:
            for w in counted:
                if w.tpm is not None:
                    self._tokens.setdefault(w.key, deque()).append((now, tokens))
                    self._sums[w.key] = self._sums.get(w.key, 0) + tokens

    def _prune_tokens(self, key: str, since: float) -> int:
        answers = self._tokens.get(key)
        if not answers:
            return 0
        while answers and answers[0][0] <= since:
            self._sums[key] -= answers.popleft()[1]
        return self._sums[key]

    def _tokens_wait(self, key: str, spent: int, tpm: int, now: float) -> float:
        """Seconds until the window holds fewer than `tpm` tokens."""
        for at, tokens in self._tokens[key]:
            spent -= tokens
            if spent < tpm:
                return at + WINDOW_SECONDS - now
        return WINDOW_SECONDS

    def _sweep(self, since: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= since]:
            del self._hits[key]
        for key in [k for k, a in self._tokens.items() if not a or a[-1][0] <= since]:
            del self._tokens[key]
            del self._sums[key]


def check(
    limits: Limits,
    config: Config,
    user: str | None,
    model: str,
    own: Sequence[Window] = (),
    rules: Sequence[RateLimit] | None = None,
) -> list[Window]:
    """Admit a request by `user` for `model` on every limit of `rules` (default: models.toml's)
    that applies and on `own` (an API key's window), or raise RateLimitedError; the windows,
    for `used` once its answer's tokens are known."""
    found = counted(config, config.limits if rules is None else rules, user, model, own)
    limits.admit(found)
    return found


def counted(
    config: Config,
    rules: Sequence[RateLimit],
    user: str | None,
    model: str,
    own: Sequence[Window] = (),
) -> list[Window]:
    """The windows a request by `user` for `model` (before [aliases]) counts in, under
    `rules`, and `own` (an API key's)."""
    found = windows(config, user, config.resolve(model), rules) if rules else []
    return found + list(own)


# ---------------------------------------------------------------- limits set at run time

REREAD_SECONDS = 1.0  # how stale `router limits set` may be on a running server
LIMIT_FIELDS = ("user", "team", "model", "rpm", "tpm")


def rule_key(rule: RateLimit) -> str:
    """What a rule limits: its scope and model (a rule set for the same replaces it)."""
    return f"{rule.scope}|{rule.model or '*'}"


def parse_limit(fields: dict[str, Any], config: Config) -> RateLimit:
    """A rule from `router limits set`'s options or the admin API's body, checked as
    models.toml's [[limits]] are (RequestError naming what to fix)."""
    from pydantic import ValidationError

    from router.config.sections import check_scopes

    unknown = sorted(set(fields) - set(LIMIT_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0][:40]!r}: give {', '.join(LIMIT_FIELDS)}",
            param=unknown[0][:40],
        )
    try:
        rule = RateLimit.model_validate({k: v for k, v in fields.items() if v is not None})
        check_scopes([], [rule], [*config.teams], [*ROUTING_MODES, *config.models])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequestError(
            "; ".join(
                (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            ),
            param=".".join(str(p) for p in first["loc"]) or None,
        ) from None
    except ValueError as exc:
        raise RequestError(str(exc).replace("limits[0].", "")) from None
    return rule


class Rules:
    """models.toml's [[limits]], each replaced (by scope and model) by one `router limits set`
    or the admin API stored; read again at most once a second (REREAD_SECONDS): a server
    sees a change within a second, and a request costs no read."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._reading = threading.Lock()
        self._current: list[RateLimit] = list(config.limits)
        self._read_at = -REREAD_SECONDS

    def stored(self) -> dict[str, RateLimit]:
        raise NotImplementedError

    def set(self, rule: RateLimit) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Rules:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def current(self) -> list[RateLimit]:
        now = time.monotonic()
        if now - self._read_at < REREAD_SECONDS:
            return self._current
        with self._reading:
            if now - self._read_at >= REREAD_SECONDS:
                try:
                    stored = self.stored()
                except RouterError as exc:  # the shared store is down: the last rules read
                    log.warning("rate limits set at run time cannot be read: %s", exc)
                    stored = None
                if stored is not None:
                    merged = {rule_key(r): r for r in self._config.limits}
                    merged.update(stored)
                    self._current = list(merged.values())
                self._read_at = now
        return self._current

    def rows(self) -> list[dict[str, Any]]:
        """Every rule in force and where it comes from (`router limits show --json`)."""
        stored = self.stored()
        merged = {rule_key(r): (r, "models.toml") for r in self._config.limits}
        merged.update({k: (r, "set") for k, r in stored.items()})
        return [
            {"key": k, "scope": r.scope, **r.model_dump(exclude_none=True), "source": source}
            for k, (r, source) in sorted(merged.items())
        ]


class RuleStore(Rules, Store):
    """The rules set at run time in SQLite beside the ledger (`limits.sqlite3`)."""

    def __init__(self, path: Path, config: Config) -> None:
        Rules.__init__(self, config)
        self.path = path
        self._lock = threading.Lock()
        self._db = open_db(path)
        migrate(self._db, _RULE_MIGRATIONS, path)

    def close(self) -> None:
        Store.close(self)

    def stored(self) -> dict[str, RateLimit]:
        with self._lock:
            rows = self._db.execute("SELECT rule_key, rule FROM rate_limits").fetchall()
        return {str(k): RateLimit.model_validate_json(v) for k, v in rows}

    def set(self, rule: RateLimit) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO rate_limits VALUES (?, ?)",
                (rule_key(rule), rule.model_dump_json(exclude_none=True)),
            )
        self._read_at = -REREAD_SECONDS  # this process sees it at once

    def remove(self, key: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM rate_limits WHERE rule_key = ?", (key,))
        self._read_at = -REREAD_SECONDS
        return cur.rowcount > 0


_RULE_MIGRATIONS = [
    "CREATE TABLE IF NOT EXISTS rate_limits (rule_key TEXT PRIMARY KEY, rule TEXT NOT NULL);"
]
