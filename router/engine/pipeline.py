"""The pipeline: validate → score → decide → cache → call (with fallback) → account → record.

`Router` is the library API. Each stage is a call into its own module; the engine only wires
them together and keeps no state of its own beyond the lazily created backends.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, TypeVar

from router.backends import Backend
from router.backends import hangup as hangups
from router.backends.factory import create_backend
from router.backends.hangup import Hangup
from router.chunks import new_id, replay
from router.complexity import Estimator, estimator_name, load_estimator
from router.complexity.followups import conversation_score
from router.config import Config, load_config
from router.engine import policy
from router.engine.agents import Agents
from router.engine.attempts import Attempts
from router.engine.availability import Availability
from router.engine.bookkeeping import Books
from router.engine.cache import (
    CachePolicy,
    Lookup,
    ResponseCache,
    Sizing,
    cache_key,
    routing_fingerprint,
    sampled,
)
from router.engine.embedding import Embedding, Embeddings, check_dimensions, check_texts
from router.engine.shadow import Shadow
from router.engine.stores import (
    alerts_for,
    budget_store,
    link_for,
    open_ledger,
    rate_limits,
    rate_rules,
    repeat_detector,
    shared_cache,
)
from router.engine.stream_end import StreamEnd
from router.errors import RateLimitedError, UnknownModelError
from router.governance import limits, waste
from router.governance.budgets import BudgetStore
from router.governance.categories import classify
from router.governance.limits import Rules, Window
from router.ledger import Ledger, rate_answer
from router.ledger.pricing import account, baseline_price, price_table
from router.types import (
    ROUTING_MODES,
    ChatRequest,
    Completion,
    CompletionStream,
    Decision,
    Message,
    Routing,
)

T = TypeVar("T")


class Router:
    """Routes OpenAI-style chat requests between local GGUF models and cloud models.

    >>> router = Router()                      # the shipped default models.toml
    >>> done = router.complete([{"role": "user", "content": "Hello!"}], max_tokens=32)
    >>> done.text, done.routing.tier, done.routing.usd_saved
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        estimator: Estimator | None = None,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        backends: Mapping[str, Backend] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        loading: Callable[[str], AbstractContextManager[object]] | None = None,
        budgets: BudgetStore | None = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.estimator = estimator or load_estimator(self.config.estimator_path())
        self._prices = price_table(self.config)
        self._baseline = baseline_price(self.config)
        # [shared] redis_url: cache, budgets and repeats shared with the other replicas.
        self.link = link_for(self.config)
        if cache is None and self.config.cache.enabled:
            cache = shared_cache(self.config, self.link)
        self._cache = CachePolicy(
            cache, self.config.cache.sampled, per_user=self.config.cache.scope == "user"
        )
        self._ledger = ledger or open_ledger(self.config)
        self._budgets = budgets or budget_store(self.config, self.link)
        self._repeats = repeat_detector(self.config, self.link)
        self._limits = rate_limits(self.config, self.link)  # [[limits]]' windows
        self._rules = rate_rules(self.config, self.link)  # and the rules, as set at run time
        self._sized = Sizing()  # score and category by cache key
        self._backends: dict[str, Backend] = dict(backends or {})
        self._owned: list[str] = []  # the backends created here, closed by close()
        self._backends_lock = threading.Lock()
        self._sleep = sleep
        self._loading = loading  # wraps a local model's load (the CLI shows a spinner)
        self._availability = Availability(self.config, self._backends)
        self.shadow = Shadow(
            self.config, self._backend, self.model_views, self._ledger, self._prices
        )
        self._fingerprint = routing_fingerprint(
            self.config, self._availability.local_paths, estimator_name(self.estimator)
        )
        self._agents = Agents(self.config, self._prices)
        self._books = Books(
            self.config, self._ledger, self._repeats, self._prices, estimator_name(self.estimator)
        )
        self.alerts = alerts_for(self.config, self.link)  # [alerts]
        self._books.alerts = self.alerts
        self._attempts = Attempts(
            self.config, self._budgets, self._books, self._prices, self.alerts
        )
        self._embedding = Embedding(
            self.config, self._attempts, self._books, self._prices, self._backend
        )
        self._stream_end = StreamEnd(
            self._account, self._attempts, self._books, self._cache, self.shadow
        )

    # ------------------------------------------------------------------ public API

    def complete(
        self,
        messages: list[Message],
        model: str = "auto",
        *,
        user: str | None = None,
        cache: bool = True,
        category: str | None = None,
        **params: Any,
    ) -> Completion:
        """Answer `messages`; `params` are OpenAI chat parameters (max_tokens, temperature...).

        `user` is recorded and budgeted; `cache=False` neither reads nor writes the cache;
        `category` overrides the task classifier."""
        return self.complete_request(ChatRequest(messages, model, params, user, cache, category))

    def stream(
        self,
        messages: list[Message],
        model: str = "auto",
        *,
        user: str | None = None,
        cache: bool = True,
        category: str | None = None,
        **params: Any,
    ) -> CompletionStream:
        """Like `complete`, streamed: returns once the chosen model has started answering."""
        return self.stream_request(ChatRequest(messages, model, params, user, cache, category))

    def decide(
        self,
        request: ChatRequest,
        *,
        repeat_key: str | None = None,
        guard: bool = True,
        repeated: bool | None = None,
        key: str | None = None,
    ) -> Decision:
        """The routing decision for `request`, without calling any model.

        `repeat_key` (the request's cache key) checks it against the answers already given, for
        retry-storm detection (the pipeline does; a dry run such as `router explain` does not);
        `repeated`: that check's answer, already known (read with the cache: CachePolicy.lookup).
        `guard=False` flags low-value requests without acting on them (a cache hit is free);
        `key`: the request's cache key, under which its score and category are remembered."""
        policy.check_request_fits(request)
        resolved = self.config.resolve(request.model)  # [aliases]
        if resolved != request.model:
            request = request.with_model(resolved)
        views = self.model_views()
        request, scenario = self._agents.route(request, views)  # [agents]
        model = self.config.models.get(request.model)
        if model is not None and not model.enabled:
            known = [*ROUTING_MODES, *self.config.enabled()]
            raise UnknownModelError(request.model, known, disabled=True)
        sized = self._sized.get(key) if key else None
        if sized is None:
            sized = (self.score(request), classify(request))
            if key:
                self._sized.put(key, sized)
        score, category = sized[0], request.category or sized[1]
        flags = []
        if waste.trivial_document(request, category):
            flags.append("trivial-document")
        # Asking again for a sampled answer is asking for another answer, not a retry storm.
        if repeated is None:
            repeated = (
                repeat_key is not None
                and not sampled(request.params)
                and self._repeats.repeated(request.user, repeat_key)
            )
        if repeated:
            flags.append("repeat")
        decision = policy.decide(
            request, score, views, self.config.router.default_max_tokens, category
        )
        reason = scenario + decision.reason
        decision = replace(decision, category=category, flags=tuple(flags), reason=reason)
        decision = self._agents.keep(request, decision)
        return waste.guard(self.config, request, decision) if guard else decision

    def score(self, request: ChatRequest) -> float:
        """The request's complexity: its latest ask, or an earlier one it follows up on
        (router.complexity.followups)."""
        return conversation_score(self.estimator, request)

    def look_up(self, request: ChatRequest) -> Lookup:
        """What the cache has for `request`, and whether it repeats earlier answers; nothing
        recorded. `complete_request(request, looked=...)` goes on from there."""
        started = time.perf_counter()
        key = self._cache_key(request)
        hit, repeated = self._cache.lookup(request, key, self._repeats)
        return Lookup(key, hit, repeated, started)

    async def alook_up(self, request: ChatRequest) -> Lookup | None:
        """`look_up` on the server's event loop, where it waits on no network: a cache on this
        machine, or Redis through its async client. None: look it up in a worker thread.
        A hit then needs neither a thread nor a model (router.server.service)."""
        started = time.perf_counter()
        key = self._cache_key(request)
        if self._cache.local and self.link is None:  # a file; the repeat counts in process
            hit, repeated = self._cache.lookup(request, key, self._repeats)
        elif self._cache.reads_async(request):
            hit, repeated = await self._cache.alookup(request, key, self._repeats)
        else:
            return None
        return Lookup(key, hit, repeated, started)

    def _cache_key(self, request: ChatRequest) -> str:
        params = self._params(request)
        return cache_key(request, params, self._fingerprint, per_user=self._cache.per_user)

    async def acomplete_hit(
        self, request: ChatRequest, looked: Lookup, *, together: bool = True, stream: bool = False
    ) -> Completion:
        """A hit `alook_up` found, answered on the server's event loop (`stream`: the client
        asked for a stream, which the server renders from the whole answer). `together`
        (other requests are under way): its row is committed with those of the other hits of
        the loop's turn (Books.arecord_hit); alone, at once (waiting for the turn's end cost
        a lone client a twentieth of its hits)."""
        if not together:
            return self._hit(request, looked, stream=stream)
        done = self._replay(request, looked)
        await self._books.arecord_hit(
            request, looked.key, done.routing, looked.started, stream=stream, answer=done.message
        )
        return done

    def _hit(self, request: ChatRequest, looked: Lookup, *, stream: bool) -> Completion:
        """A cache hit answered, its row written at once."""
        done = self._replay(request, looked)
        self._books.record(
            request, looked.key, done.routing, looked.started, stream=stream, answer=done.message
        )
        return done

    def _replay(self, request: ChatRequest, looked: Lookup) -> Completion:
        """The cached answer `looked` found, as a new answer (a hit is never guarded)."""
        assert looked.hit is not None
        decision = self.decide(request, guard=False, repeated=looked.repeated, key=looked.key)
        response, routing = self._cache.replay(looked.hit, decision)
        routing.response_id = response["id"]
        self._account(routing, response.get("usage") or {})
        return Completion(response, routing)

    def admit(self, request: ChatRequest, own: Sequence[Window] = ()) -> list[Window]:
        """Count `request` in the rate limits ([[limits]]) of its user and their teams, and in
        `own` (an API key's), or write its refusal's ledger row and raise RateLimitedError.
        The windows it counts in: give them to `used` with its answer (the server does; a
        library call is not limited unless it calls this)."""
        rules = self._rules.current()
        if not rules and not own:
            return []
        with self._books.refusals(request, time.perf_counter()):
            return limits.check(self._limits, self.config, request.user, request.model, own, rules)

    async def aadmit(self, request: ChatRequest, own: Sequence[Window] = ()) -> list[Window]:
        """`admit` on the server's event loop: counted without a thread (in process, or with
        the loop's Redis client); a refusal's ledger row is written off the loop."""
        found = limits.counted(self.config, self._rules.current(), request.user, request.model, own)
        try:
            await self._limits.aadmit(found)  # none: at once
        except RateLimitedError as exc:
            await asyncio.to_thread(self._books.refused, request, exc, time.perf_counter())
            raise
        return found

    def limited(self) -> bool:
        """Whether any rate limit is in force (read at most once a second)."""
        return bool(self._rules.current())

    @property
    def rate_rules(self) -> Rules:
        """models.toml's [[limits]] and those set at run time (`router limits set`)."""
        return self._rules

    def used(self, counted: list[Window], routing: Routing | None) -> None:
        """Add an answer's tokens (what models worked on: none for a cache hit) to the windows
        `admit` counted its request in."""
        if counted and routing is not None and not routing.cache_hit:
            self._limits.used(counted, routing.prompt_tokens + routing.completion_tokens)

    def complete_request(
        self, request: ChatRequest, hangup: Hangup | None = None, *, looked: Lookup | None = None
    ) -> Completion:
        """Answer `request`. `hangup` (the server's): fired when the client disconnects, it
        stops the generation, and the row says the answer was cut. `looked`: its `look_up`,
        when the caller made it (a hit then needs no thread and no model)."""
        looked = looked or self.look_up(request)
        if looked.hit is not None:
            return self._hit(request, looked, stream=False)
        started, key = looked.started, looked.key
        params = self._params(request)

        def call(name: str, params: dict[str, Any]) -> dict[str, Any]:
            return self._backend(name).complete(request, params)

        with self._books.refusals(request, started), hangups.watching(hangup):
            decision = self.decide(request, repeated=looked.repeated, key=key)
            response, routing, reservation = self._attempts.first_answer(
                request, decision, params, call, new_id(), stream=False, views=self.model_views()
            )
        # The router's own id for every answer: unique (providers and test servers repeat
        # theirs) and the key the client gives back with feedback.
        response = {**response, "id": routing.response_id}
        if response.pop("stopped", None) == "repetition":
            routing.loop_stopped()
        usage = response.get("usage")
        if hangup is not None and hangup.fired:
            routing.reason += (
                "; answer cut: client disconnected" + (" (tokens estimated)" * hangup.estimated)
                if hangup.cut
                else "; client disconnected before the answer was sent"
            )
            usage = usage or {"prompt_tokens": policy.estimate_prompt_tokens(request)}
        self._account(routing, usage or {})
        self._attempts.settle(reservation, routing)
        done = Completion(response, routing)
        self._books.record(request, key, routing, started, stream=False, answer=done.message)
        if (hangup is None or not hangup.fired) and routing.saved_by != "looped":
            # Calls are never unrecorded; a cut answer is no answer to give again.
            self._cache.set(request, key, response, routing)
            self.shadow.offer(request, routing, done.text)  # judged later, if sampled
        return done

    def stream_request(
        self, request: ChatRequest, hangup: Hangup | None = None, *, looked: Lookup | None = None
    ) -> CompletionStream:
        """Like `complete_request`, streamed: returns once the chosen model has started.
        `looked`: its `look_up`, when the caller made it (the server, on its loop)."""
        looked = looked or self.look_up(request)
        if looked.hit is not None:
            done = self._hit(request, looked, stream=True)
            return CompletionStream(iter(replay(done.response)), done.routing)
        started, key = looked.started, looked.key
        params = self._params(request)

        def call(
            name: str, params: dict[str, Any]
        ) -> tuple[dict[str, Any] | None, Iterator[dict[str, Any]]]:
            chunks = self._backend(name).stream(request, params)
            return next(chunks, None), chunks  # the first chunk: failures surface here

        with self._books.refusals(request, started), hangups.watching(hangup):
            decision = self.decide(request, repeated=looked.repeated, key=key)
            (first, chunks), routing, reservation = self._attempts.first_answer(
                request, decision, params, call, new_id(), stream=True, views=self.model_views()
            )
        body = self._stream_end.stream(
            request, key, chunks, first, routing, started, reservation, hangup
        )
        return CompletionStream(body, routing)

    def embed(
        self,
        texts: str | list[str],
        model: str = "auto",
        *,
        user: str | None = None,
        client_retries: bool = False,
        hangup: Hangup | None = None,
        dimensions: int | None = None,
        truncate: bool = False,
        key_budget: tuple[str, float] | None = None,
    ) -> Embeddings:
        """One vector a text from an embedding model (router.engine.embedding): `auto` picks the
        first usable one, local first. `dimensions`: the size wanted (a cloud model's provider
        shortens its vectors; a local model gives only its own size). `truncate`: a text
        longer than a local model reads is cut to what it reads, not refused."""
        return self._embedding.embed(
            check_texts(texts), model, self.model_views(), user=user,
            client_retries=client_retries, hangup=hangup, dimensions=check_dimensions(dimensions),
            truncate=truncate, key_budget=key_budget,
        )  # fmt: skip

    def feedback(
        self, response_id: str, rating: str, comment: str = "", *, user: str | None = None
    ) -> None:
        """Record a person's verdict on an answer, by its `id`: `rating` "good" or "bad".
        With `user`, only that user's own answers can be rated; NotFoundError otherwise, or
        when the ledger has no such answer."""
        rate_answer(self._ledger, response_id, rating, comment, user)

    def model_views(self) -> dict[str, policy.ModelView]:
        """What the policy sees of each enabled model, usability checked now."""
        return self._availability.views(self.config)

    def local_runtime(self, name: str) -> dict[str, Any]:
        """How local model `name` runs: its worker's state, pid, memory, extra buffers, failures
        (empty for a model that is not a GGUF run by this router, e.g. a test double)."""
        backend = self._backend(name)  # creating it starts nothing
        health = getattr(backend, "health", None)
        return health() if callable(health) else {}

    def close(self) -> None:
        """Stop the local workers and close the cache, the ledger and the budget store."""
        self.shadow.close()
        with self._backends_lock:
            owned = [self._backends[name] for name in self._owned]
        try:
            for backend in owned:  # backends passed in belong to the caller
                close = getattr(backend, "close", None)
                if close is not None:
                    close()
        finally:
            self._cache.close()
            self._ledger.close()
            self._budgets.close()
            self._rules.close()
            if self.alerts is not None:
                self.alerts.close()
            if self.link is not None:
                self.link.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cache_health(self) -> dict[str, Any]:
        """The response cache's state: `up` (its last read or write worked), its failures."""
        return self._cache.health()

    def shared_health(self) -> dict[str, Any]:
        """[shared] Redis's state, and settlements waiting for it ({} without Redis)."""
        if self.link is None:
            return {}
        pending = getattr(self._budgets, "pending_settlements", None)
        return {**self.link.health(), "pending_settlements": pending() if pending else 0}

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def budgets(self) -> BudgetStore:
        return self._budgets

    # ------------------------------------------------------------------ stages

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params = dict(request.params)
        params.setdefault("max_tokens", self.config.router.default_max_tokens)
        return params

    def _backend(self, name: str) -> Backend:
        with self._backends_lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = create_backend(self.config, name, self._loading, self._sleep)
                if (pool := getattr(backend, "pool", None)) is not None and self.alerts:
                    pool.on_eject = functools.partial(self.alerts.endpoint_ejected, name)
                self._backends[name] = backend
                self._owned.append(name)
            return backend

    def _account(self, routing: Routing, usage: Mapping[str, Any]) -> None:
        account(routing, usage, self._prices[routing.model], self._baseline)
