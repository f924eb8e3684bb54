"""Requests passed to a cloud model as they came, when it speaks their API: an Anthropic
Messages request to an Anthropic model goes through LiteLLM's `anthropic_messages` with its own
body, so `thinking`, `cache_control` and `context_management` reach the provider (a
translation into chat would drop them). The router still routes, budgets, records and caches
it: the answer is also given in chat's shape (text, tool calls, usage) for the engine, with the
provider's own answer (`native`) for the client.

LiteLLM 1.83 offers Anthropic's passthrough only as a coroutine: each call runs on an event
loop of its own in the calling thread (a client hanging up cancels its task, which closes the
connection). Streams come as Anthropic's server-sent events, relayed one by one (`native` in
each chunk) beside their chat translation. Responses API passthrough is not offered: LiteLLM's
stream drops the item events Codex reads, so Responses requests are translated.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from router.backends import hangup as hangups
from router.config import CloudModel
from router.types import ChatRequest
from router.units import Tokens

# What a model that speaks Anthropic's API is sent of a request, the one allow-list of that path
# (router.wire.messages_native keeps these fields at the edge, and checks them): the documented
# request fields of POST /v1/messages (the API reference, 2026-12) that LiteLLM 1.83's passthrough
# carries to the provider (its AnthropicMessagesRequestOptionalParams). They become the keyword
# arguments of `litellm.anthropic_messages`; no LiteLLM argument has one of these names but as that
# same Anthropic field (tests/server/test_passthrough.py checks every one), so no body can set where
# the call goes, what it carries or what it answers (`api_base`, `custom_llm_provider`,
# `extra_headers`, `mock_response`...). `stream` is the router's to set. Not passed, and named in
# the ledger's reason: `service_tier` (LiteLLM's passthrough drops it), `speed` and `inference_geo`
# (they change the price, which the router's books would not know), `container` and `mcp_servers`
# (they reach containers and servers of the operator's account or of the client's choosing),
# `output_format` (superseded by `output_config.format`), and any other name.
NATIVE = (
    "model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "thinking", "context_management", "output_config",
    "cache_control",
)  # fmt: skip
# The client's headers that may reach the provider, as values router.wire.messages_native
# checked.
HEADERS = ("anthropic-version", "anthropic-beta")
STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def _arguments(
    request: ChatRequest, params: Mapping[str, Any], model: CloudModel
) -> dict[str, Any]:
    """The keyword arguments of the provider call made from a request: only the allow-listed
    Anthropic fields (NATIVE, filtered again here), the model and `max_tokens` as this model
    may take them. Where the call goes (key, base URL, client) and its headers are set by
    `_Session` from models.toml and checked header values, never from the body."""
    native = request.native
    assert native is not None
    arguments = {k: native.body[k] for k in NATIVE if k in native.body}
    arguments["model"] = model.litellm_model
    arguments["max_tokens"] = int(params["max_tokens"])  # as this model may take it (the cap)
    return arguments


class _Session:
    """An event loop of its own and an HTTP client on it, both closed after the call: LiteLLM's
    cached clients belong to other event loops, and a client left open is closed later on a
    loop that is gone ("Event loop is closed")."""

    def __init__(
        self, litellm: Any, model: CloudModel, timeout: float, request: ChatRequest
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._handler = litellm.llms.custom_httpx.http_handler.AsyncHTTPHandler(timeout=timeout)
        headers = dict(request.native.headers) if request.native is not None else {}
        self.kwargs: dict[str, Any] = {
            "api_key": model.api_key(),
            "api_base": model.resolved_api_base(),
            "client": self._handler,
        }
        forwarded = {k: v for k, v in headers.items() if k in HEADERS}
        if forwarded:  # the client's checked anthropic-version and anthropic-beta (the key
            # is LiteLLM's to add; it keeps the betas it knows the provider takes)
            self.kwargs["extra_headers"] = forwarded

    def run(self, work: Awaitable[Any]) -> Any:
        """`work` on the loop, cancelled when the request's client hangs up."""
        loop = self.loop
        task: asyncio.Future[Any] = asyncio.ensure_future(work, loop=loop)
        hangup = hangups.current()

        def cancel() -> None:
            loop.call_soon_threadsafe(task.cancel)

        forget = hangup.on_fire(cancel) if hangup else None
        try:
            return loop.run_until_complete(task)
        finally:
            if forget is not None:
                forget()

    def close(self, events: Any = None) -> None:
        loop = self.loop
        try:
            if events is not None and hasattr(events, "aclose"):
                loop.run_until_complete(events.aclose())
            loop.run_until_complete(self._handler.close())
        finally:
            try:
                # What LiteLLM left on the loop (its success logging, and the logging worker
                # that logging starts): cancelled and awaited, as asyncio.run does. Left
                # pending, each was destroyed with the loop and printed a 2 KB traceback
                # ("Event loop is closed") per call when collected.
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


def complete(
    litellm: Any, request: ChatRequest, params: Mapping[str, Any], model: CloudModel, name: str,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """The provider's answer, in chat's shape with the native one inside."""
    session = _Session(litellm, model, timeout, request)
    try:
        work = litellm.anthropic_messages(**_arguments(request, params, model), **session.kwargs)
        native = dict(session.run(work))
    finally:
        session.close()
    text = "".join(
        b.get("text", "") for b in native.get("content") or [] if b.get("type") == "text"
    )
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in native.get("content") or []
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": native.get("id"),
        "object": "chat.completion",
        "created": 0,
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": STOP.get(str(native.get("stop_reason")), "stop"),
                "logprobs": None,
            }
        ],
        "usage": _usage(native.get("usage") or {}),
        "native": native,
    }


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's usage as chat's: every input token read, cache reads and writes included
    (and named in `prompt_tokens_details`, as LiteLLM writes them)."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    split = usage.get("cache_creation") or {}
    hour = int(split.get("ephemeral_1h_input_tokens") or 0) if isinstance(split, Mapping) else 0
    return Tokens(
        prompt=int(usage.get("input_tokens") or 0) + read + write,
        completion=int(usage.get("output_tokens") or 0),
        cache_read=read,
        cache_write=write,
        cache_write_1h=min(hour, write),
    ).usage()


def stream(
    litellm: Any, request: ChatRequest, params: Mapping[str, Any], model: CloudModel, name: str,
    timeout: float, on_error: Callable[[Exception], Exception],
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Each provider event as a chunk (`native`: the event, `choices`: its chat translation),
    then a last chunk with the usage. Closing it closes the connection."""
    session = _Session(litellm, model, timeout, request)
    events: Any = None
    try:
        try:
            work = litellm.anthropic_messages(
                **_arguments(request, params, model), stream=True, **session.kwargs
            )
            events = session.run(work).__aiter__()
        except Exception as exc:
            raise on_error(exc) from exc
        usage: dict[str, Any] = {}
        buffer = b""
        while True:
            try:
                piece = session.run(events.__anext__())
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise on_error(exc) from exc
            buffer += piece if isinstance(piece, bytes) else str(piece).encode()
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                event = _parse(raw)
                if event is None:
                    continue
                kind, data = event
                if kind == "message_start":
                    usage.update((data.get("message") or {}).get("usage") or {})
                if kind == "message_delta":
                    usage.update(data.get("usage") or {})
                yield {
                    "id": None,
                    "object": "chat.completion.chunk",
                    "model": name,
                    "choices": _translated(kind, data),
                    "native": {"event": kind, "data": data},
                }
        yield {"id": None, "object": "chat.completion.chunk", "model": name, "choices": [],
               "usage": _usage(usage)}  # fmt: skip
    finally:
        session.close(events)


def _parse(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    kind, data = "", ""
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
    if not data:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return (kind or str(parsed.get("type", ""))), parsed


def _translated(kind: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An event's chat delta: its text, a tool call's start and arguments, the stop reason."""
    delta: dict[str, Any] = {}
    finish = None
    if kind == "content_block_delta":
        d = data.get("delta") or {}
        if d.get("type") == "text_delta":
            delta["content"] = d.get("text", "")
        elif d.get("type") == "input_json_delta":
            piece = {
                "index": data.get("index", 0),
                "function": {"arguments": d.get("partial_json", "")},
            }
            delta["tool_calls"] = [piece]
    elif (
        kind == "content_block_start"
        and (data.get("content_block") or {}).get("type") == "tool_use"
    ):
        block = data["content_block"]
        piece = {"index": data.get("index", 0), "id": block.get("id"), "type": "function",
                 "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
        delta["tool_calls"] = [piece]
    elif kind == "message_delta":
        finish = STOP.get(str((data.get("delta") or {}).get("stop_reason")), "stop")
    if not delta and finish is None:
        return []
    return [{"index": 0, "delta": delta, "finish_reason": finish}]
