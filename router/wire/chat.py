"""OpenAI's chat completions (`POST /v1/chat/completions`): the router's own shape, so the body
is checked (router.types.schema) and answered as it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.errors import RequestError
from router.types import ChatRequest, Completion, Routing, body, schema
from router.wire.api import ROUTING_EVENT, Asked, Call, routing_json, sse
from router.wire.http import HTTPError, http_error


def parse(raw: bytes, asked: Asked) -> Call:
    """A /v1/chat/completions body → a Call, or HTTPError(400) saying what to fix.

    Nothing else runs before this: a refused request touches no model, cache, budget or ledger.
    The API key's owner wins over the body's `user`; the x-router-category header over the
    body's `metadata.category`.
    """
    try:
        data = body.parse(raw)
    except body.BodyError as exc:
        raise HTTPError(400, str(exc), param=exc.param) from None
    try:
        checked = schema.validate_body(data)
        metadata = checked.metadata or {}
        request = ChatRequest(
            messages=checked.messages,
            model=checked.model,
            params=checked.params(),
            user=asked.user or checked.user,
            session=asked.session,
            key_budget=asked.key_budget,
            cache=asked.cache,
            category=asked.category or metadata.get("category"),
            client_retries=asked.client_retries,
        )
    except RequestError as exc:
        raise http_error(exc) from None
    include_usage = bool(checked.stream_options and checked.stream_options.include_usage)
    options = {"include_usage": include_usage, "routing": asked.routing}
    return Call(request, bool(checked.stream), checked.model, options)


class ChatApi:
    api = "chat"
    media_type = "text/event-stream"

    def answer(self, call: Call, done: Completion) -> dict[str, Any]:
        # (a provider's own answer, kept for clients of its API, is not chat's)
        return {k: v for k, v in done.response.items() if k != "native"}

    def writer(self, call: Call, routing: Routing) -> ChatWriter:
        options = call.options
        return ChatWriter(bool(options.get("include_usage")), bool(options.get("routing")))

    def error(self, err: HTTPError) -> dict[str, Any]:
        return err.body()


class ChatWriter:
    """Chunks as they come (the usage chunk only when asked for, as OpenAI does), then
    `data: [DONE]`; a failure mid-stream is an OpenAI error event before it. With `routing`
    (the x-router-routing header), the final routing comes before [DONE] as an SSE comment,
    which other clients skip."""

    def __init__(self, include_usage: bool, routing: bool = False) -> None:
        self._include_usage = include_usage
        self._routing = routing

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        if not chunk.get("choices") and not self._include_usage:
            return b""
        return sse(chunk)

    def end(self, routing: Routing) -> bytes:
        if self._routing:
            return ROUTING_EVENT + routing_json(routing).encode() + b"\n\ndata: [DONE]\n\n"
        return b"data: [DONE]\n\n"

    def fail(self, err: HTTPError) -> bytes:
        return sse(err.body()) + b"data: [DONE]\n\n"

    def ping(self) -> bytes:
        return b": ping\n\n"  # an SSE comment: clients skip it
