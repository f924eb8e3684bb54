"""What every API the server speaks has in common: a parsed call, and how its answers, stream
events and errors are written.

Each API (OpenAI chat, Anthropic Messages, OpenAI Responses, Ollama, legacy completions) has a
module here that turns its request body into a `Call` (the router's `ChatRequest`, plus what
the answer must echo) and implements `Renderer`: the answer as the API's JSON, a `Writer` for
its stream, and its error body. The engine never learns which API a request came through,
except as `ChatRequest.api`, for the ledger. No HTTP framework here: bytes and dicts only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.backends.native import HEADERS
from router.types import ChatRequest, Completion, Routing, body
from router.wire.http import HTTPError


@dataclass(frozen=True)
class Asked:
    """What the HTTP layer knows of a request besides its body."""

    user: str | None = None  # the API key's owner (wins over a user named in the body)
    session: str | None = None  # the session the headers name (router.wire.identity)
    device: str | None = None  # the user an agent's headers name, when nothing else does
    cache: bool = True  # False: `Cache-Control: no-cache` or `no-store`
    category: str | None = None  # the x-router-category header
    client_retries: bool = False  # the client's SDK retries itself (x-stainless-retry-count)
    routing: bool = False  # x-router-routing: the answer carries its whole routing (the CLI)
    # Headers of the API's own that a model speaking it may be sent (FORWARDABLE), as the
    # client sent them: the API's module checks them (router.wire.messages.native_headers).
    forward: tuple[tuple[str, str], ...] = ()
    # The modes and models the API key may ask for (empty: any); the server checks a chat
    # request's, an embedding job its own (router.wire.embeddings).
    models: tuple[str, ...] = ()
    # The API key's own daily dollars, (key id, usd), a budget on top of its user's.
    key_budget: tuple[str, float] | None = None


@dataclass(frozen=True)
class Call:
    """A parsed request: what to ask the engine, and what the answer must echo."""

    request: ChatRequest
    stream: bool
    model: str  # the name the client sent (answers carry it back)
    options: Mapping[str, Any] = field(default_factory=dict)  # the API's own switches
    ready: dict[str, Any] | None = None  # an answer that needs no model (Ollama's load call)


class Writer(Protocol):
    """One stream's events, in order: `start`, `chunk` for each chat chunk, `end` (the routing
    is final then), or `fail` when the model failed after the stream had started; `ping`
    keeps a long wait alive (b"" when the API has no such thing)."""

    def start(self) -> bytes: ...

    def chunk(self, chunk: Mapping[str, Any]) -> bytes: ...

    def end(self, routing: Routing) -> bytes: ...

    def fail(self, err: HTTPError) -> bytes: ...

    def ping(self) -> bytes: ...


class Renderer(Protocol):
    api: str  # the ledger's and the metrics' name for it (router.types.APIS)
    media_type: str  # of its streams

    def answer(self, call: Call, done: Completion) -> dict[str, Any]: ...

    def writer(self, call: Call, routing: Routing) -> Writer: ...

    def error(self, err: HTTPError) -> dict[str, Any]: ...


# Characters that Python's str.splitlines() (and so httpx's iter_lines(), which the `ollama`
# client reads NDJSON with) takes for line ends but JSON leaves unescaped: a model's U+2028 in
# an answer would cut its line in two. JSON's own escapes keep each event on one line.
_ONE_LINE = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def one_line_json(payload: Mapping[str, Any]) -> bytes:
    """`payload` as JSON on one line for any line splitter (non-ASCII kept as UTF-8)."""
    return json.dumps(payload, ensure_ascii=False).translate(_ONE_LINE).encode()


# The client's headers that may reach a provider, and only as checked values: Anthropic's
# version and beta flags. The rest (authorization, x-api-key, host...) never leave the router.
FORWARDABLE = HEADERS
ROUTING_HEADER = "x-router-routing"  # asked for by `router chat` through a server
ROUTING_EVENT = b": x-router-routing "  # a stream's routing: an SSE comment clients skip


def routing_json(routing: Routing) -> str:
    """The routing as a client may read it (router.types.Routing.public_dict), as one line of
    ASCII JSON (a header's value, an SSE comment's text)."""
    return json.dumps(routing.public_dict(), ensure_ascii=True, separators=(",", ":"))


def sse(payload: Mapping[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (with its `event:` line when named)."""
    data = one_line_json(payload)
    return (f"event: {event}\n".encode() if event else b"") + b"data: " + data + b"\n\n"


def ndjson(payload: Mapping[str, Any]) -> bytes:
    return one_line_json(payload) + b"\n"


def parse_object(raw: bytes, what: str) -> dict[str, Any]:
    """A body as a JSON object (bounded: router.types.body), or a 400 saying what to send."""
    try:
        data = body.parse(raw)
    except body.BodyError as exc:
        raise HTTPError(400, str(exc), param=exc.param) from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"the body must be a JSON object: {what}")
    return data


def unknown(data: Mapping[str, Any], known: Iterable[str]) -> tuple[str, ...]:
    """The top-level fields of `data` this translation does not know, by name (at most 16,
    each cut to 40 characters): agents add fields release by release, and refusing them
    would break the agent, so they are dropped and the ledger says which."""
    names = sorted(set(data) - set(known))
    return tuple(n[:40] for n in names[:16])


def bad(param: str, expected: str) -> HTTPError:
    return HTTPError(400, f"'{param}' must be {expected}", param=param)


def text_of(content: Any) -> str:
    """The text of a content given as a string or as a list of {"type": "...text", "text"}
    blocks (other blocks ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def finish_of(done: Completion) -> tuple[str, list[dict[str, Any]]]:
    """The first choice's finish reason and tool calls."""
    choice = done.response["choices"][0]
    calls = choice.get("message", {}).get("tool_calls") or []
    return str(choice.get("finish_reason") or "stop"), list(calls)


def usage_of(done: Completion) -> tuple[int, int]:
    usage = done.response.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
