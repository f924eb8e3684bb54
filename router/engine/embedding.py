"""Embeddings: one vector a text, from an embedding model (`embeddings = true` in models.toml).

No complexity score picks the model: `auto` is the first usable embedding model, local ones
first (they cost nothing); `local` and `cloud` keep to their tier; a name picks that model (an
alias may give it). Otherwise an embedding request goes the way a chat request does, through
router.engine.attempts: a paid call written ahead to the ledger and reserved on the user's budgets,
a failure falling back to the next model, a row with `api = "embeddings"`, the tokens read and
their cost. Savings are measured against `[router] embedding_baseline` when it is set.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.backends import Embedder
from router.backends import hangup as hangups
from router.backends.hangup import Hangup
from router.chunks import new_id
from router.config import FREE, Config, Price
from router.engine.attempts import Attempts
from router.engine.bookkeeping import Books
from router.engine.policy import ModelView
from router.errors import (
    BackendError,
    ClientGoneError,
    NoRouteError,
    RequestError,
    UnavailableError,
    UnknownModelError,
)
from router.ledger.pricing import account, lookup
from router.types import ROUTING_MODES, ChatRequest, Decision, Routing

MAX_TEXTS = 2048  # inputs in one request (OpenAI's limit)
MAX_DIMENSIONS = 65_536  # the largest vector size a request may ask for


@dataclass
class Embeddings:
    vectors: list[list[float]]
    routing: Routing


def check_texts(texts: object) -> list[str]:
    """The inputs as a list of non-empty strings, or RequestError naming `input`."""
    if isinstance(texts, str):
        texts = [texts]
    if (
        not isinstance(texts, list)
        or not 0 < len(texts) <= MAX_TEXTS
        or not all(isinstance(t, str) and t for t in texts)
    ):
        raise RequestError(
            f"'input' must be a non-empty string or a list of 1 to {MAX_TEXTS} of them",
            param="input",
        )
    for i, text in enumerate(texts):  # control characters only: no token to embed
        if not any(ch.isprintable() and not ch.isspace() for ch in text):
            raise RequestError(
                f"'input[{i}]' has no text to embed (only blank or control characters)",
                param="input",
            )
    return list(texts)


def check_dimensions(dimensions: object) -> int | None:
    """The vectors' size asked for, if any, or RequestError naming `dimensions`."""
    if dimensions is not None and (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 0 < dimensions <= MAX_DIMENSIONS
    ):
        raise RequestError(
            f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}", param="dimensions"
        )
    return dimensions


def candidates(config: Config, views: Mapping[str, ModelView], model: str) -> tuple[str, ...]:
    """The embedding models to try for `model`, in order; RequestError when none can be."""
    embedders = [n for n, m in config.enabled().items() if m.embeddings]
    target = config.resolve(model)
    if target in ROUTING_MODES:
        pool = [n for n in embedders if target == "auto" or config.models[n].tier == target]
        pool.sort(key=lambda n: config.models[n].tier != "local")  # free ones first
    elif target in config.models and config.models[target].enabled:
        if not config.models[target].embeddings:
            raise NoRouteError(
                f"model {target!r} is not an embedding model (embedding models: "
                f"{', '.join(embedders) or 'none'})",
                param="model",
            )
        pool = [target]
    else:
        raise UnknownModelError(model, [*ROUTING_MODES, *embedders])
    if not pool:
        raise NoRouteError(
            "no embedding model can serve this request: set embeddings = true on a model in "
            "models.toml (a GGUF runs in llama.cpp's embedding mode; a cloud one through "
            "LiteLLM, e.g. openai/text-embedding-3-small)",
            param="model",
        )
    usable = [n for n in pool if views[n].unusable is None]
    if not usable:
        why = "; ".join(f"{n}: {views[n].unusable}" for n in pool)
        shown = "; ".join(f"{n}: {views[n].unusable_public or 'not usable now'}" for n in pool)
        raise UnavailableError(f"no embedding model is usable now ({why})").publicly(
            f"no embedding model is usable now ({shown})"
        )
    return tuple(usable)


class Embedding:
    """The embedding pipeline of one router (its attempts, books and prices)."""

    def __init__(
        self,
        config: Config,
        attempts: Attempts,
        books: Books,
        prices: dict[str, Price],
        backend: Callable[[str], object],
    ) -> None:
        self._config = config
        self._attempts = attempts
        self._books = books
        self._prices = prices
        self._backend = backend
        wanted = config.router.embedding_baseline
        self._baseline = (lookup(wanted) or FREE) if wanted else None

    def embed(
        self,
        texts: list[str],
        model: str,
        views: Mapping[str, ModelView],
        *,
        user: str | None = None,
        client_retries: bool = False,
        hangup: Hangup | None = None,
        dimensions: int | None = None,
        truncate: bool = False,
        key_budget: tuple[str, float] | None = None,
    ) -> Embeddings:
        started = time.perf_counter()
        names = candidates(self._config, views, model)
        joined = "\n".join(texts)
        request = ChatRequest(
            [{"role": "user", "content": joined}],
            model,
            {"max_tokens": 1},  # nothing is generated: the reservation is the input's alone
            user=user,
            cache=False,
            client_retries=client_retries,
            api="embeddings",
            key_budget=key_budget,
        )
        decision = Decision(0.0, names, f"embeddings; {names[0]}")

        def call(name: str, params: object) -> tuple[list[list[float]], int]:
            backend = self._backend(name)
            if not isinstance(backend, Embedder):
                raise BackendError(f"{name}: cannot embed")
            return backend.embed(texts, dimensions, truncate)

        key = "embed:" + hashlib.sha256(joined.encode()).hexdigest()
        try:
            with self._books.refusals(request, started), hangups.watching(hangup):
                (vectors, tokens), routing, reservation = self._attempts.first_answer(
                    request, decision, {"max_tokens": 1}, call, new_id(), stream=False,
                    views=views,
                )  # fmt: skip
        except (ClientGoneError, BackendError, UnavailableError) as exc:
            self._unanswered(request, key, decision, exc, started)
            raise
        price = self._prices[routing.model]
        baseline = (
            self._baseline
            if self._baseline is not None
            else (price if routing.tier == "cloud" else FREE)
        )
        account(routing, {"prompt_tokens": tokens}, price, baseline)
        self._attempts.settle(reservation, routing)
        self._books.record(request, key, routing, started, stream=False)
        return Embeddings(vectors, routing)

    def _unanswered(
        self, request: ChatRequest, key: str, decision: Decision, exc: Exception, started: float
    ) -> None:
        """The row of a request that got no vectors: the client hung up (the tokens the model
        had read by then), or every model failed. Nothing is charged or saved."""
        model = getattr(exc, "model", None) or decision.candidates[0]
        gone = isinstance(exc, ClientGoneError)
        routing = Routing(
            tier=self._config.models[model].tier,
            model=model,
            score=decision.score,
            reason=f"{decision.reason}; {'cancelled' if gone else 'failed'}: {exc}",
            prompt_tokens=int(getattr(exc, "tokens", 0) or 0),
            response_id=new_id(),
            saved_by="routed" if self._config.models[model].tier == "local" else "cloud",
        )
        self._books.record(request, key, routing, started, stream=False)
