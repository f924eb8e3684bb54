"""Score + constraints → Decision. Pure: no I/O, no clocks, no model calls.

Models are considered cheapest first. In `auto` mode the first usable model whose ceiling
(`max_score`) is at or above the score and which can serve the request (context length, tools,
JSON output) is chosen; every more capable usable model follows as a fallback, and local models
end the list so that a request is answered locally, and says so, when no cloud model is usable
or every one failed transiently (the engine never falls back to a local model after a cloud
model refused the call as configured). `cloud`, `local` and a model name never leave what they
name: when it cannot serve, the request is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from router.errors import NoRouteError, RequestError, UnavailableError, UnknownModelError
from router.types import ROUTING_MODES, ChatRequest, Decision, Tier

# A deliberately pessimistic chars-per-token ratio: over-estimating sends a borderline request
# to a bigger context rather than truncating it locally.
_CHARS_PER_TOKEN = 3.0
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class ModelView:
    """What the policy needs to know about one configured model."""

    name: str
    tier: Tier
    max_score: float
    n_ctx: int | None
    supports_tools: bool
    supports_json: bool
    supports_vision: bool = False
    unusable: str | None = None  # why it cannot be called now (no key, no file), else None
    retry_after: float | None = None  # when an unusable model expects to work again
    unusable_public: str | None = None  # the same in words a client may read (no path, pid)
    max_output: int | None = None  # the most tokens one answer may have (a cloud model's)
    embeddings: bool = False  # an embedding model: answers /v1/embeddings, never a chat
    categories: tuple[str, ...] | None = None  # what the score may send it (None: anything)

    def covers(self, score: float, category: str | None) -> bool:
        """Whether routing by score sends a request of `score` and `category` to it."""
        taken = self.categories is None or category is None or category in self.categories
        return taken and self.max_score >= score


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return int(len(request.text) / _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(request.messages)


def worst_prompt_tokens(request: ChatRequest) -> int:
    """An upper bound for budget reservations: half a token per UTF-8 byte covers English
    (about 4 bytes a token) and CJK text (about 3 bytes a character, 1-2 tokens each)."""
    return -(-len(request.text.encode()) // 2) + 8 * len(request.messages)


MIN_ROOM = 256  # a model must leave this much room for the answer of a max_tokens_cap request


def answer_room(model: ModelView, request: ChatRequest, max_tokens: int) -> int:
    """The max_tokens `model` gets: the request's, or, when that is a ceiling
    (`max_tokens_cap`), no more than the model holds: its output limit and, for a local model,
    its context less the prompt."""
    if not request.max_tokens_cap:
        return max_tokens
    room = max_tokens
    if model.max_output:
        room = min(room, model.max_output)
    elif model.n_ctx:  # no output limit known: no more than its context
        room = min(room, model.n_ctx)
    if model.tier == "local" and model.n_ctx:
        room = min(room, model.n_ctx - estimate_prompt_tokens(request))
    return max(1, room)


def blockers(
    model: ModelView, request: ChatRequest, needed_tokens: int, *, public: bool = False
) -> list[str]:
    """Why `model` cannot serve `request`; empty when it can. `public`: in words a client may
    read (RouterError.public)."""
    if request.max_tokens_cap:  # the ceiling is not a need: room for a short answer will do
        prompt = estimate_prompt_tokens(request)
        needed_tokens = prompt + min(needed_tokens - prompt, MIN_ROOM)
    found = []
    if model.embeddings:
        found.append("an embedding model (POST /v1/embeddings), not a chat model")
    if model.unusable:
        found.append(model.unusable_public or "not usable now" if public else model.unusable)
    if model.n_ctx is not None and needed_tokens > model.n_ctx:
        found.append(f"needs ~{needed_tokens} tokens of context, has {model.n_ctx}")
    if request.needs_tools and not model.supports_tools:
        found.append("does not support tools")
    if request.needs_json and not model.supports_json:
        found.append("does not support JSON output")
    if request.needs_vision and not model.supports_vision:
        found.append("cannot read images (supports_vision = false)")
    return found


def decide(
    request: ChatRequest,
    score: float,
    models: Mapping[str, ModelView],
    default_max_tokens: int,
    category: str | None = None,
) -> Decision:
    """Choose the models to try, in order, for `request` with complexity `score` (and task
    `category`, for models that take only some)."""
    needed = estimate_prompt_tokens(request) + int(
        request.params.get("max_tokens", default_max_tokens)
    )
    mode = request.model

    if mode not in ROUTING_MODES:
        model = models.get(mode)
        if model is None:
            raise UnknownModelError(mode, [*ROUTING_MODES, *models])
        problems = blockers(model, request, needed)
        if problems:
            public = blockers(model, request, needed, public=True)
            raise _no_route(
                f"model {mode!r} cannot serve this request: {'; '.join(problems)}",
                [model],
                request,
                needed,
                f"model {mode!r} cannot serve this request: {'; '.join(public)}",
            )
        return Decision(score, (mode,), f"model {mode!r} requested by name", forced=True)

    models = {n: m for n, m in models.items() if not m.embeddings}  # chat models only
    excluded: list[str] = []
    shown: list[str] = []  # the same, in public words
    fit: list[ModelView] = []
    for m in models.values():
        problems = blockers(m, request, needed)
        if problems:
            excluded.append(f"{m.name}: {'; '.join(problems)}")
            shown.append(f"{m.name}: {'; '.join(blockers(m, request, needed, public=True))}")
        else:
            fit.append(m)

    local = [m for m in fit if m.tier == "local"]
    cloud = [m for m in fit if m.tier == "cloud"]
    why_not = f" ({'; '.join(excluded)})" if excluded else ""
    why_not_shown = f" ({'; '.join(shown)})" if shown else ""

    if mode == "local":
        if not local:
            local_models = [m for m in models.values() if m.tier == "local"]
            raise _no_route(
                f"no local model can serve this request{why_not}",
                local_models,
                request,
                needed,
                f"no local model can serve this request{why_not_shown}",
            )
        chosen = _first_within(local, score, category)
        reason = f"local tier requested; {chosen.name}"
        return Decision(score, _order(chosen, local), reason, forced=True)

    if mode == "cloud":  # the cloud tier and nothing else, or a clear refusal
        if not cloud:
            cloud_models = [m for m in models.values() if m.tier == "cloud"]
            no_cloud = " (none is configured in models.toml)"
            tail = "; it is not answered locally (use -m auto or model 'auto' to allow that)"
            raise _no_route(
                "cloud tier requested but no cloud model can serve this request"
                + (why_not if cloud_models else no_cloud)
                + tail,
                cloud_models,
                request,
                needed,
                "cloud tier requested but no cloud model can serve this request"
                + (why_not_shown if cloud_models else no_cloud)
                + tail,
            )
        chosen = _first_within(cloud, score, category)
        reason = f"cloud tier requested; {chosen.name}"
        return Decision(score, _order(chosen, cloud), reason, forced=True)

    if not fit:
        raise _no_route(
            f"no configured model can serve this request{why_not}",
            list(models.values()),
            request,
            needed,
            f"no configured model can serve this request{why_not_shown}",
        )
    chosen = _first_within(fit, score, category)
    passed = [f"{category} is not among {m.name}'s categories" for m in fit
              if m.max_score >= score and not m.covers(score, category)]  # fmt: skip
    if chosen.covers(score, category):
        reason = f"score {score:.2f} ≤ {chosen.name} ceiling {chosen.max_score:.2f}"
    else:
        reason = f"score {score:.2f} above every ceiling; strongest usable is {chosen.name}"
    if passed and chosen.tier == "cloud":
        reason += f" ({'; '.join(passed)})"
    if chosen.tier == "local" and not chosen.covers(score, category) and not cloud:
        above = (
            f"{category} is not among {chosen.name}'s categories"
            if chosen.max_score >= score
            else f"score {score:.2f} above {chosen.name} ceiling {chosen.max_score:.2f}"
        )
        reason = f"{above} but no cloud model is usable{why_not}: answered locally"
    return Decision(score, _with_local_last(_order(chosen, fit), local), reason)


def _no_route(
    message: str, considered: list[ModelView], request: ChatRequest, needed: int, shown: str
) -> RequestError | UnavailableError:
    """503 when a model that is down for a while (a worker cooling down, ejected endpoints:
    `retry_after` says when to try again) could have served it, else 400: a model down for
    good (its key is not set, its file is missing) is not worth a retry, so a request only it
    could serve gets the same `no_model_can_serve` as one no model can serve. `shown` is the
    message in public words."""
    down = [
        m
        for m in considered
        if m.unusable and not blockers(replace(m, unusable=None), request, needed)
    ]
    if not any(m.retry_after is not None for m in down):
        refused = NoRouteError(message).publicly(shown)
        refused.models_down = bool(down)
        return refused
    waits = [m.retry_after for m in down if m.retry_after is not None]
    return UnavailableError(message, retry_after=min(waits) if waits else None).publicly(shown)


def _first_within(pool: list[ModelView], score: float, category: str | None) -> ModelView:
    """The cheapest model that covers the score (and category), else the strongest one."""
    for m in pool:
        if m.covers(score, category):
            return m
    return max(pool, key=lambda m: m.max_score)


def _order(chosen: ModelView, pool: list[ModelView]) -> tuple[str, ...]:
    """The chosen model, then every model after it in the pool (the stronger ones)."""
    start = pool.index(chosen)
    return tuple(m.name for m in [chosen, *pool[start + 1 :]])


def _with_local_last(order: tuple[str, ...], local: list[ModelView]) -> tuple[str, ...]:
    tail = [m.name for m in local if m.name not in order]
    return order + tuple(tail)


def check_request_fits(request: ChatRequest) -> None:
    """Reject requests no model could ever answer, before anything else runs."""
    if not request.text.strip() and not request.needs_tools:
        raise RequestError("the messages contain no text: nothing to answer", param="messages")
