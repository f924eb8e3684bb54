"""Requests, routing decisions and results: the nouns every other module speaks.

With them, what checks a request on construction: `body` (bounded JSON, text checks) and
`schema` (the OpenAI chat request's messages and parameters as pydantic models).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

from router.errors import RequestError
from router.types.body import BodyError, check_text
from router.types.schema import ChatParams, validate_messages, validate_params

Tier = Literal["local", "cloud"]
# What a request's `model` may name besides a models.toml model: route by complexity, or force
# a tier.
ROUTING_MODES = ("auto", "local", "cloud")
Message = dict[str, Any]

# OpenAI chat parameters the router passes to a backend (router.types.schema.ChatParams). Anything
# else is rejected so that a typo ("max_token") fails loudly instead of being silently ignored.
SAMPLING_PARAMS = frozenset(ChatParams.model_fields)


# The APIs a request may come through (the ledger's `api` column).
APIS = ("chat", "messages", "responses", "ollama", "completions", "embeddings")

# Task categories (router.governance.categories classifies requests into them).
CATEGORIES = (
    "chit-chat",
    "question-answering",
    "writing",
    "rewrite",
    "summarise",
    "translate",
    "code",
    "math/reasoning",
    "other",
)


def check_category(value: object) -> str:
    """A caller-supplied category, validated against CATEGORIES."""
    if not isinstance(value, str) or value not in CATEGORIES:
        shown = value[:60] if isinstance(value, str) else value
        raise RequestError(
            f"category {shown!r} is not one of: {', '.join(CATEGORIES)}", param="category"
        )
    return value


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message: a plain string or the text parts of a content list."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
    return "\n".join(p for p in parts if isinstance(p, str))


SAMPLE_CHARS = 32_000


def sample(text: str, limit: int = SAMPLE_CHARS) -> str:
    """At most `limit` characters of `text` for analysis: all of it, or its first and last
    halves. Scoring and classifying a request then costs the same for 30 KB and for 4 MB;
    length signals use the full length, which is free to know."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n" + text[-half:]


def _check_text(name: str, value: Any) -> None:
    try:
        check_text(value, name)
    except BodyError as exc:
        raise RequestError(str(exc), param=exc.param) from None


@dataclass(frozen=True)
class Native:
    """What of a request may reach a model that speaks its API as it came
    (router.backends.native): its API's documented request fields, as its wire module's
    allow-list keeps them (router.wire.messages.NATIVE), and the documented headers that go
    with them, checked. Nothing else of the body or the headers reaches the provider call."""

    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    # Top-level fields of the body that were not kept (the ledger's reason names them).
    dropped: tuple[str, ...] = ()


MAX_SESSION = 128  # characters of a session id


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, validated on construction.

    `model` is a routing mode (`auto`, `local`, `cloud`) or a model name from models.toml.
    `params` holds OpenAI sampling parameters (see SAMPLING_PARAMS).
    """

    messages: list[Message]
    model: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
    cache: bool = True
    category: str | None = None  # overrides the classifier (CATEGORIES)
    # The client retries failed calls itself (an OpenAI or Anthropic SDK: x-stainless-retry-
    # count): the router does not retry on top (router.backends.retry.at_most).
    client_retries: bool = False
    # The API the request came through (router.wire), and what of it the translation into a
    # chat request could not carry (the ledger's reason names them).
    api: str = "chat"
    dropped: tuple[str, ...] = ()
    # `max_tokens` is a ceiling, not a need: each model gets at most what it can hold (an
    # Anthropic client must send max_tokens, and agents send their model's largest).
    max_tokens_cap: bool = False
    # The request's own body, for a model that speaks its API (router.backends.native):
    # Anthropic's `thinking`, `cache_control`... then reach it as they were sent.
    native: Native | None = None
    # The conversation or agent session the request belongs to (router.wire.identity):
    # recorded in the ledger, budgeted per session, and the unit of sticky routing.
    session: str | None = None
    # An API key's own budget, (key id, daily usd): reserved on beside its user's and teams'
    # (router.governance.budgets.KeyBudget); None for a key without one, or no key.
    key_budget: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", validate_messages(self.messages))
        object.__setattr__(self, "params", validate_params(self.params))
        if not isinstance(self.model, str) or not self.model:
            raise RequestError("'model' must be a non-empty string", param="model")
        if self.user is not None and not isinstance(self.user, str):
            raise RequestError("'user' must be a string", param="user")
        if self.session is not None and not (
            isinstance(self.session, str) and 0 < len(self.session) <= MAX_SESSION
        ):
            raise RequestError(
                f"the session id must be a string of 1 to {MAX_SESSION} characters",
                param="session",
            )
        for name in ("messages", "params", "model", "user", "category", "session"):
            _check_text("" if name == "params" else name, getattr(self, name))
        if self.category is not None:
            check_category(self.category)
        if self.api not in APIS:
            raise ValueError(f"api {self.api!r}: one of {', '.join(APIS)}")

    @cached_property
    def text(self) -> str:
        """All message text, in order, one message per line (computed once)."""
        return "\n".join(message_text(m) for m in self.messages)

    @cached_property
    def last_user_text(self) -> str:
        """The text of the last user message: the task being asked now ("" without one)."""
        users = [m for m in self.messages if m["role"] == "user"]
        return message_text(users[-1]) if users else ""

    def with_messages(self, messages: list[Message]) -> ChatRequest:
        """This request with a selection of its own messages, which were checked already
        (validating a long conversation again would cost as much as the first time)."""
        clone = object.__new__(ChatRequest)
        for f in fields(self):
            object.__setattr__(clone, f.name, getattr(self, f.name))
        object.__setattr__(clone, "messages", messages)
        return clone

    def with_model(self, model: str) -> ChatRequest:
        """This request for another model or mode (an alias resolved): nothing re-checked."""
        clone = self.with_messages(self.messages)
        object.__setattr__(clone, "model", model)
        return clone

    @property
    def needs_tools(self) -> bool:
        return bool(self.params.get("tools"))

    @property
    def needs_vision(self) -> bool:
        """Whether a message carries an image (a model must declare supports_vision)."""
        return any(
            isinstance(m.get("content"), list)
            and any(p.get("type") == "image_url" for p in m["content"])
            for m in self.messages
        )

    @property
    def needs_json(self) -> bool:
        fmt = self.params.get("response_format")
        return isinstance(fmt, Mapping) and fmt.get("type") in {"json_object", "json_schema"}


@dataclass(frozen=True)
class Decision:
    """What the policy chose, before any model is called.

    `candidates` are model names in the order to try: the first is the choice, the rest are
    fallbacks. `reason` says why in plain words.
    """

    score: float
    candidates: tuple[str, ...]
    reason: str
    category: str = "other"
    flags: tuple[str, ...] = ()  # low-value flags (router.governance.waste)
    forced: bool = False  # a tier or a model asked for by name: the score chose nothing


# Why an answer cost what it did (Routing.saved_by): every answer is one of these.
SAVED_BY = ("routed", "fallback", "cache", "cloud", "looped")


@dataclass
class Routing:
    """What actually happened to a request: where it went, what it cost, what it saved."""

    tier: Tier
    model: str
    score: float
    reason: str
    cache_hit: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt tokens, those a provider read from and wrote to its prompt cache.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # Of a local model's prompt tokens, those it did not read again: its KV cache held them
    # (the worker's saved conversations, or a local server's prompt cache).
    prompt_cached_tokens: int = 0
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    tokens_saved: int = 0
    usd_saved: float = 0.0
    latency_ms: float = 0.0
    attempts: list[str] = field(default_factory=list)
    category: str = "other"
    flags: list[str] = field(default_factory=list)
    response_id: str = ""  # the answer's `id`, the key for feedback (Router.feedback)
    # Why it cost what it did (SAVED_BY): "routed" (a local answer the score
    # sent there), "fallback" (a local answer for a request the score sent to the cloud: the
    # cloud failed or could not be used, a budget or guardrail kept it local), "cache" (a
    # cache hit), "cloud" (a paid answer) or "looped" (a local answer stopped for repeating
    # itself: no answer worth its tokens, so it saved nothing).
    saved_by: str = ""

    def loop_stopped(self) -> None:
        """The local model's answer was cut for repeating itself (backends.llama_process)."""
        self.saved_by = "looped"
        self.reason += "; answer stopped: it repeated itself (not counted as a saving)"

    # What the operator's words in `reason` and `attempts` (a provider's error text, a
    # worker's pid) read as for a client: each private text and its public one.
    shown: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def note(self, private: str, public: str) -> None:
        """Add `private` to the reason, read as `public` by clients."""
        self.reason += private
        if public != private:
            self.shown[private] = public

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the operator (the library, the CLI in-process, the ledger)."""
        out = asdict(self)
        del out["shown"]
        return out

    def public_dict(self) -> dict[str, Any]:
        """What a client may read (x-router-routing, a stream's routing comment): the same,
        with each private text in the reason and the attempts in its public words."""
        out = self.to_dict()
        reason = self.reason
        for private, public in self.shown.items():
            reason = reason.replace(private, public)
        out["reason"] = reason
        out["attempts"] = [self.shown.get(a, a) for a in self.attempts]
        return out


@dataclass
class Completion:
    """An OpenAI-shaped `chat.completion` object plus the routing that produced it."""

    response: dict[str, Any]
    routing: Routing

    @property
    def message(self) -> dict[str, Any]:
        """The answer's assistant message (its text, or its tool calls)."""
        return self.response["choices"][0]["message"]  # type: ignore[no-any-return]

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


class CompletionStream:
    """Iterates OpenAI-shaped `chat.completion.chunk` objects.

    `routing` names the tier and model as soon as the first chunk arrives; its token counts,
    costs and savings are final once the iteration ends.
    """

    def __init__(self, chunks: Iterator[dict[str, Any]], routing: Routing) -> None:
        self._chunks = chunks
        self.routing = routing

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._chunks

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the generation early (a local model frees itself for the next caller)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def text(self) -> str:
        """Consume the rest of the stream and return its text."""
        parts: list[str] = []
        for chunk in self:
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    parts.append(piece)
        return "".join(parts)
