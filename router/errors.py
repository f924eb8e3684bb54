"""Every error the router raises on purpose, each saying what to do next.

RouterError
 ├── ConfigError            models.toml is missing, unreadable or invalid (names file and key)
 ├── RequestError           the request is wrong as written (HTTP 400): change the request
 │    ├── UnknownModelError the model is not auto/local/cloud nor in models.toml (HTTP 404)
 │    ├── NotFoundError     no such answer in the ledger, for feedback (HTTP 404)
 │    ├── TooLargeError     more work than one request may ask for (HTTP 413)
 │    └── NoRouteError      no configured model could serve it (too long, needs tools, ...)
 ├── UnavailableError       models that could serve it are unusable now or failed (HTTP 503)
 │    ├── BusyError         the local model's queue is full: retry after `retry_after` seconds
 │    ├── LedgerUnavailableError  the ledger cannot be written: no paid call is made
 │    └── CloudRefusedError a cloud model refused the call (a wrong key, no such model;
 │                          HTTP 502): not answered locally instead
 ├── BudgetExceededError    a user's or team's budget cannot take the request (HTTP 429)
 ├── RateLimitedError       a [[limits]] rpm or tpm is reached: retry after `retry_after` s (429)
 ├── ClientGoneError        the client hung up before an answer was under way
 └── BackendError           a model was called and failed
      ├── ModelLoadError    a local GGUF file could not be found, downloaded or loaded
      └── CloudError        a cloud call failed (status, retryable, retry_after)
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, TypeVar

from router.units import money

IN_FLIGHT_RETRY_SECONDS = 2.0
E = TypeVar("E", bound="RouterError")


class RouterError(Exception):
    """Base of every error the router raises on purpose.

    `str(error)` is the whole story, for the operator (the CLI, the server's log). `public` is
    what a client of the server may read: the router's own words, never a provider's message,
    a URL, a host name, a file path or a pid. An error about the request itself is public as
    it is; the others say what kind of failure it was, and the log keeps the rest."""

    _public: str | None = None
    # Set on a refusal the ledger records as a row of its own (zero tokens, this error as its
    # reason): "budget" or "guardrail"; "" for every other error.
    refusal: str = ""

    @property
    def public(self) -> str:
        return self._public if self._public is not None else self._default_public()

    def _default_public(self) -> str:
        return "the router failed on this request (the server's log has the details)"

    def publicly(self: E, text: str) -> E:
        """This error, with `text` as what clients read."""
        self._public = text
        return self


class ConfigError(RouterError):
    """models.toml is missing, unreadable or fails validation."""


class RequestError(RouterError):
    """The request cannot be served as written; the message says what to change."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def _default_public(self) -> str:
        return str(self)  # about the request: the client's own input


class UnknownModelError(RequestError):
    """The requested model is neither a routing mode nor a configured model."""

    def __init__(self, name: str, known: list[str], *, disabled: bool = False) -> None:
        message = (
            f"model {name!r} is disabled in models.toml: set enabled = true under "
            f"[models.{name}] to use it (enabled: {', '.join(known)})"
            if disabled
            else f"model {name!r} not found in models.toml (known: {', '.join(known)})"
        )
        super().__init__(message, param="model")
        self.name = name


class TooLargeError(RequestError):
    """The request asks for more work than the router takes in one request (HTTP 413)."""


class NotFoundError(RequestError):
    """What the request refers to (an answer's id, for feedback) is not in the ledger."""


class NoRouteError(RequestError):
    """No configured model can serve the request as written (context, tools, JSON output).
    `models_down`: a model that could have served it cannot be used at all (its key is not
    set, its file is missing): a setting to fix, not a wait (the CLI's exit 3)."""

    models_down = False


class UnavailableError(RouterError):
    """Models that could serve the request are unusable right now or every one failed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def _default_public(self) -> str:
        return "no model can answer now (the server's log has the details)"


class BudgetStoreDownError(UnavailableError):
    """The shared budget store cannot be reached; `policy` ([shared] on_redis_down) says what
    a budgeted user gets: "local-only" (answered locally) or "refuse"."""

    def __init__(self, message: str, *, policy: str) -> None:
        super().__init__(message, retry_after=5)
        self.policy = policy


class BusyError(UnavailableError):
    """A local model has as many requests queued as it accepts."""

    def _default_public(self) -> str:
        return str(self)  # how many wait, and when to retry


class LedgerUnavailableError(UnavailableError):
    """The ledger cannot be written (a full or read-only disk, a lost database): a paid call is
    not made, since it could not be recorded. Free answers go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=5)

    def _default_public(self) -> str:
        return str(self)  # written for clients: no path, no cause


class CloudRefusedError(UnavailableError):
    """A cloud model refused the call as configured or as written (401, 403, 404, 400...).

    In `auto` mode only a transient failure (a timeout, a refused connection, 429, 5xx) is
    answered by a local model instead: a wrong key or model name would otherwise go unnoticed
    while a weaker model quietly answered every hard request."""

    def __init__(self, failures: list[str], refused: list[Any], shown: list[str]) -> None:
        config = any(getattr(e, "configuration", False) for e in refused)
        hint = (
            "check the model's api_key_env and litellm_model in models.toml"
            if config
            else "the provider refused the request as written"
        )
        tail = "; it was not answered locally instead, since this is not a transient failure"
        super().__init__(f"the cloud refused the call: {'; '.join(failures)} ({hint}){tail}")
        self.status = next((e.status for e in refused if getattr(e, "status", None)), None)
        # `shown`: each failure as clients may read it (no provider message).
        public_hint = (
            "the router's configuration for it needs fixing"
            if config
            else "the provider refused the request as written"
        )
        self.publicly(f"the cloud refused the call: {'; '.join(shown)} ({public_hint}){tail}")


class BudgetExceededError(RouterError):
    """A budget (models.toml [[budgets]] or `router budget set`) cannot take this request."""

    refusal = "budget"

    def __init__(
        self,
        budget: Any,
        limit_name: str,
        limit: float,
        used: float,
        wanted: float,
        resets: dt.datetime,
        *,
        in_flight: bool = False,
    ) -> None:
        self.budget = budget
        self.limit_name = limit_name
        self.resets = resets
        self.in_flight = in_flight

        def amount(value: float) -> str:
            return f"{value:,.0f} tokens" if limit_name.endswith("tokens") else money(value)

        if in_flight:
            super().__init__(
                f"budget {budget.scope} {limit_name} = {amount(limit)} is held by requests "
                f"still running ({amount(used)} reserved or used, this request needs up to "
                f"{amount(wanted)}); retry in a few seconds, or set a lower max_tokens"
            )
            return
        resetting = (
            "it holds for the whole session: start a new one"
            if limit_name.startswith("session")
            else f"it resets at {resets.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        if used >= limit:
            super().__init__(
                f"budget {budget.scope} {limit_name} = {amount(limit)} is spent: "
                f"{amount(used)} used; {resetting}"
            )
            return
        super().__init__(
            f"budget {budget.scope} {limit_name} = {amount(limit)} would be exceeded: "
            f"{amount(used)} used, this request needs up to {amount(wanted)} (a lower "
            f"max_tokens may fit); {resetting}"
        )

    def _default_public(self) -> str:
        return str(self)  # the user's own budget

    @property
    def policy(self) -> str:
        return str(self.budget.on_exceed)

    def seconds_to_reset(self) -> float:
        return max(0.0, (self.resets - dt.datetime.now(dt.timezone.utc)).total_seconds())

    def retry_after(self) -> float:
        """When to try again: a few seconds when running requests hold the budget (their
        reservations settle to their real, usually smaller, usage as they end), else the reset."""
        return IN_FLIGHT_RETRY_SECONDS if self.in_flight else self.seconds_to_reset()


class RateLimitedError(RouterError):
    """A rate limit ([[limits]] rpm or tpm, router.governance.limits) is reached for now."""

    refusal = "rate_limited"

    def __init__(self, scope: str, kind: str, limit: int, used: int, retry_after: float) -> None:
        self.scope, self.kind, self.limit = scope, kind, limit
        self.retry_after = max(0.0, retry_after)
        what = {"rpm": "requests in the last minute", "tpm": "tokens in the last minute"}
        super().__init__(
            f"rate limit {scope} {kind} = {limit:,} reached: {used:,} "
            f"{what.get(kind, 'requests in flight')}; retry in "
            f"{max(1, math.ceil(self.retry_after))} s"
        )

    def _default_public(self) -> str:
        return str(self)  # the user's own limit


class ClientGoneError(RouterError):
    """The client hung up before its answer was under way: nothing more is done for it.
    `model` and `tokens`: the model that was stopped and what it had read (an embedding)."""

    model: str | None = None
    tokens: int = 0


class BackendError(RouterError):
    """A model backend failed to produce an answer.

    `retryable`: the same call may succeed if repeated (429, 5xx, timeouts); `retry_after`:
    seconds until the backend expects to work again, when it knows (Retry-After, a restart).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        public: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 1
        self._public = public

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (after {self.attempts} attempts)" if self.attempts > 1 else text

    @property
    def public(self) -> str:
        text = self._public or "a model failed on this request (the server's log has the details)"
        return f"{text} (after {self.attempts} attempts)" if self.attempts > 1 else text


class ModelLoadError(BackendError):
    """A local model file could not be located, downloaded or loaded."""


class CloudError(BackendError):
    """A cloud call failed; `status` is the HTTP status when there was one.

    `configuration`: the provider refused the call as configured (a wrong key, no access, no
    such model). Such a failure is surfaced, never answered by a local model instead."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        configuration: bool = False,
        public: str | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after, public=public)
        self.status = status
        self.configuration = configuration


class ServedError(RouterError):
    """An error a running `router serve` answered `router chat` with (router.cli.remote): its
    words, and the exit status the server says the same error has in process."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def exit_code(exc: RouterError) -> int:
    """The CLI's exit status for `exc` (router.cli.app), in process or through a server (whose
    error answers carry it as x-router-exit-code): 5 a budget is spent; 3 no model available,
    every model failed, a model that could answer cannot be used (its key, its file), or a
    rate limit is reached; 2
    configuration, request and usage errors."""
    if isinstance(exc, ServedError):
        return exc.exit_status
    if isinstance(exc, BudgetExceededError):
        return 5
    if isinstance(exc, (UnavailableError, BackendError, RateLimitedError)):
        return 3
    if isinstance(exc, NoRouteError) and exc.models_down:
        return 3
    return 2
