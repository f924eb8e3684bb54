"""models.toml's sections other than models, teams and budgets: what each key means and
which values it takes. `router.config` assembles them into `Config`."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.types import ROUTING_MODES
from router.units import Tokens

_ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[^/\s:\[\]]+)(:[0-9]{1,5})?/?$")


class _Strict(BaseModel):
    # strict: a TOML string is not a number ("512"), a number not a bool: the file says what
    # it means, or fails with the key. (A whole number where a float goes is fine: 1 is 1.0.)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Price(_Strict):
    """USD per million tokens: input, output, and a provider's prompt-cache reads and writes
    (unset: the input price). `tiers`: the prices above a prompt size (LiteLLM's
    `*_above_200k_tokens`), each a Price with `above_tokens` set."""

    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]
    cache_read_per_mtok: Annotated[float, Field(ge=0)] | None = None
    cache_write_per_mtok: Annotated[float, Field(ge=0)] | None = None
    cache_write_1h_per_mtok: Annotated[float, Field(ge=0)] | None = None
    above_tokens: Annotated[int, Field(ge=0)] | None = None
    tiers: tuple[Price, ...] = ()

    def at(self, prompt_tokens: int) -> Price:
        """The price a prompt of this size pays: the highest tier it is above."""
        if not self.tiers:
            return self
        for tier in sorted(self.tiers, key=lambda t: -(t.above_tokens or 0)):
            if prompt_tokens > (tier.above_tokens or 0):
                return tier
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Prompt and completion tokens with no provider cache in play."""
        return self.cost_of(Tokens(prompt_tokens, completion_tokens))

    def cost_of(self, tokens: Tokens) -> float:
        """What a provider charges for `tokens`, as LiteLLM's cost_per_token prices them."""
        p = self.at(tokens.prompt)
        read = p.input_per_mtok if p.cache_read_per_mtok is None else p.cache_read_per_mtok
        write = p.input_per_mtok if p.cache_write_per_mtok is None else p.cache_write_per_mtok
        write_1h = write if p.cache_write_1h_per_mtok is None else p.cache_write_1h_per_mtok
        return (
            tokens.fresh * p.input_per_mtok
            + tokens.cache_read * read
            + (tokens.cache_write - tokens.cache_write_1h) * write
            + tokens.cache_write_1h * write_1h
            + tokens.completion * p.output_per_mtok
        ) / 1e6

    def budget_tokens(self, tokens: Tokens) -> float:
        """The tokens a token budget counts: fresh input, cache writes and output in full,
        cache reads as their price's share of the input price (a tenth at Anthropic's)."""
        p = self.at(tokens.prompt)
        share = 1.0
        if p.cache_read_per_mtok is not None and p.input_per_mtok > 0:
            share = min(1.0, p.cache_read_per_mtok / p.input_per_mtok)
        return tokens.fresh + tokens.cache_write + tokens.completion + tokens.cache_read * share


class RouterSettings(_Strict):
    baseline: str = "gpt-4o-mini"
    baseline_price: Price | None = None
    default_max_tokens: Annotated[int, Field(ge=1)] = 512
    store_prompts: bool = False
    # The completion a budget reserves for a cloud call (at most its max_tokens); unset: the
    # 95th percentile of the user's recent completions on the model, at least 256.
    reserve_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    # A learned estimator file (`router learn` writes one); unset: the shipped estimator.
    estimator: str | None = None
    # The embedding model (LiteLLM's id) embeddings' savings are measured against; unset: a
    # local embedding saves tokens, not dollars, and a cloud one saves nothing.
    embedding_baseline: str | None = None


class CacheSettings(_Strict):
    enabled: bool = True
    dir: str | None = None
    ttl_seconds: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    size_limit_mb: Annotated[int, Field(ge=1)] = 512
    # Requests asking for randomness (temperature or top_p above 0, no seed): "skip" answers
    # them fresh every time; "reuse" serves them from the cache like any other.
    sampled: Literal["skip", "reuse"] = "skip"
    # Who shares cached answers: "shared" (everyone: a hit tells a user that someone asked the
    # same before) or "user" (each user their own). Unset: shared on loopback, per user when
    # `router serve` requires API keys (Config.for_serving).
    scope: Literal["shared", "user"] | None = None


class LedgerSettings(_Strict):
    path: str | None = None
    # PostgreSQL for several replicas ("postgresql://user:pass@host/db"), or $ROUTER_DATABASE_URL;
    # rows wait in a queue file beside `path` while the database is away.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("write postgresql://user:password@host:port/database")
        return url

    def resolved_url(self) -> str | None:
        return os.environ.get("ROUTER_DATABASE_URL") or self.url


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_body_kb: Annotated[int, Field(ge=1)] = 4096
    keys_path: str | None = None
    # Web pages (origins such as "http://localhost:3000") allowed to call the router from a
    # browser; "*" allows any. Requests from other origins are refused (router.server.origins).
    allowed_origins: list[str] = []
    # Connections (router.server.connections): a request's headers must arrive within
    # header_timeout_seconds, its body within body_timeout_seconds (408); at most
    # max_connections at once (503 past that); the access log can be turned off.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1024
    access_log: bool = True

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port] with no path, "
                    'e.g. "http://localhost:3000", or "*" for any'
                )
        return origins


class RetrySettings(_Strict):
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_seconds: Annotated[float, Field(ge=0)] = 0.5
    max_backoff_seconds: Annotated[float, Field(ge=0)] = 20.0
    # The most time spent on one request's attempts before the next model is tried at once
    # (retries, backoff and cloud calls in progress included).
    deadline_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # How long a request waits for running requests to settle their budget reservations (to
    # what they used, mostly far below their worst case) before a 429 budget_in_use.
    budget_wait_seconds: Annotated[float, Field(ge=0, le=600)] = 10.0


class GuardrailSettings(_Strict):
    # What happens to low-value requests (summarising an empty document, retry storms...):
    # allow = route as usual, local = never send them to the cloud, block = refuse (400).
    low_value: Literal["allow", "local", "block"] = "local"
    repeat_window_seconds: Annotated[float, Field(ge=0)] = 60.0
    repeat_threshold: Annotated[int, Field(ge=2)] = 3  # this many identical requests = a storm


class SharedSettings(_Strict):
    """State shared by several router replicas: the response cache, budget reservations, the
    repeat detector and API keys on Redis (`redis_url`, or $ROUTER_REDIS_URL). Unset: each
    process keeps them in its own files, as a single router does."""

    redis_url: str | None = None
    key_prefix: str = "router:"
    # When Redis cannot be reached, what a user with a budget gets: "local-only" answers
    # locally, "refuse" refuses cloud calls (503). Never unlimited. The cache is skipped.
    on_redis_down: Literal["local-only", "refuse"] = "local-only"
    # A replica that dies holding reservations: they stop counting after this long.
    reservation_ttl_seconds: Annotated[float, Field(gt=0, le=86400)] = 900.0
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("write redis://host:port/db, rediss://... (TLS) or unix:///path")
        return url

    def resolved_redis_url(self) -> str | None:
        return os.environ.get("ROUTER_REDIS_URL") or self.redis_url


class QualitySettings(_Strict):
    """Shadow judging: for a sampled share of answered requests, after the client has its
    answer, get the other tier's answer too and ask `judge` whether the local one was
    acceptable. Off by default: it spends cloud money (the router's own, never a user's
    budget), at most `max_usd_per_day` (UTC days)."""

    shadow_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    judge: str | None = None
    max_usd_per_day: Annotated[float, Field(ge=0)] = 1.0
    max_tokens: Annotated[int, Field(ge=1, le=8192)] = 512  # the other tier's answer


class Budget(_Strict):
    """A cap on cloud usage (tokens sent to paid providers, dollars paid) for a user or a team.

    Local answers and cache hits cost nothing and never count. Periods are UTC days and months.
    """

    user: str | None = None
    team: str | None = None
    daily_tokens: Annotated[int, Field(ge=0)] | None = None
    monthly_tokens: Annotated[int, Field(ge=0)] | None = None
    daily_usd: Annotated[float, Field(ge=0)] | None = None
    monthly_usd: Annotated[float, Field(ge=0)] | None = None
    # Per session of the user (or of each member of the team): what one agent session or
    # conversation may use in all (router.wire.identity names sessions).
    session_tokens: Annotated[int, Field(ge=0)] | None = None
    session_usd: Annotated[float, Field(ge=0)] | None = None
    on_exceed: Literal["block", "local-only"] = "block"
    # Reserve each call's worst case (max_tokens), never overrun; else what it is expected to
    # use, overrun by at most the excess of the calls in flight (router.governance.budgets).
    strict: bool = False

    @model_validator(mode="after")
    def _scope(self) -> Budget:
        if (self.user is None) == (self.team is None):
            raise ValueError("a budget names exactly one of 'user' or 'team'")
        limits = (self.daily_tokens, self.monthly_tokens, self.daily_usd, self.monthly_usd)
        if all(v is None for v in (*limits, self.session_tokens, self.session_usd)):
            raise ValueError(
                "a budget needs at least one limit: daily_tokens, monthly_tokens, daily_usd, "
                "monthly_usd, session_tokens or session_usd"
            )
        return self

    @property
    def scope(self) -> str:
        return f"user:{self.user}" if self.user is not None else f"team:{self.team}"


class AgentSettings(_Strict):
    """[agents]: coding agents' requests by scenario, each to a mode or model of this file
    (unset: routed as any request), and sticky sessions (router.engine.agents)."""

    background: str | None = None  # tool-less side requests: titles, topic checks, summaries
    tools: str | None = None  # turns that carry tools
    thinking: str | None = None  # requests asking for extended thinking
    long_context: str | None = None  # prompts over long_context_tokens
    long_context_tokens: Annotated[int, Field(ge=1)] = 60_000
    sticky: bool = True  # a session never moves down to a cheaper model mid-session
    sticky_seconds: Annotated[int, Field(ge=1, le=30 * 86400)] = 3600

    def routes(self) -> dict[str, str]:
        names = ("background", "tools", "thinking", "long_context")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


WINDOW_SECONDS = 60  # rpm and tpm are counted over the last minute, sliding


class RateLimit(_Strict):
    """[[limits]]: requests (`rpm`) and tokens (`tpm`) a minute, over a sliding window, for one
    user (`user`), one team together (`team`), or, naming neither, each user on their own;
    `model`: only requests asking for that mode or model (after [aliases]). A user's own
    limit replaces the each-user one for the same `model` (router.governance.limits)."""

    user: str | None = None
    team: str | None = None
    model: str | None = None
    rpm: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    tpm: Annotated[int, Field(ge=1, le=10_000_000_000)] | None = None

    @model_validator(mode="after")
    def _scope(self) -> RateLimit:
        if self.user is not None and self.team is not None:
            raise ValueError("a limit names 'user' or 'team', not both (neither: each user)")
        if self.rpm is None and self.tpm is None:
            raise ValueError("a limit needs rpm (requests a minute) or tpm (tokens a minute)")
        return self

    @property
    def scope(self) -> str:
        if self.team is not None:
            return f"team:{self.team}"
        return f"user:{self.user}" if self.user is not None else "each user"


def check_scopes(
    budgets: list[Budget], limits: list[RateLimit], teams: list[str], names: list[str]
) -> None:
    """Every team a budget or limit names is defined; every model a limit names is a mode or
    a model of the file (`names`)."""
    named = [(f"budgets[{i}]", b.team) for i, b in enumerate(budgets)]
    named += [(f"limits[{i}]", r.team) for i, r in enumerate(limits)]
    for where, team in named:
        if team is not None and team not in teams:
            raise ValueError(
                f"{where}.team {team!r} is not defined; add [teams.{team}] users = [...] "
                f"(known teams: {', '.join(teams) or 'none'})"
            )
    for i, rule in enumerate(limits):
        if rule.model is not None and rule.model not in names:
            raise ValueError(
                f"limits[{i}].model {rule.model!r}: give auto, local, cloud or a model of this "
                f"file (models: {', '.join(n for n in names if n not in ROUTING_MODES)})"
            )


class AlertSettings(_Strict):
    """[alerts]: events sent as they happen (router.governance.alerts), each once a window,
    to a log line and, with `webhook`, an HTTP POST: JSON ({event, key, text, data, at}) or
    Slack's incoming-webhook shape ({"text": ...})."""

    webhook: str | None = None
    format: Literal["json", "slack"] = "json"
    alert_at: Annotated[float, Field(gt=0, lt=1)] = 0.8  # a budget's share that alerts
    usd_per_hour: Annotated[float, Field(gt=0)] | None = None  # a burn rate that alerts
    cloud_failures: Annotated[int, Field(ge=1, le=1000)] = 5  # failed calls in a row
    window_seconds: Annotated[int, Field(ge=1, le=7 * 86400)] = 3600  # one alert a window
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    # The audit's usage and spike rules, run again when a paid row lands at most this often
    # (0: never; `router audit` still flags).
    audit_seconds: Annotated[int, Field(ge=0, le=86400)] = 60

    @field_validator("webhook")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise ValueError("give the webhook's http:// or https:// URL")
        return url
