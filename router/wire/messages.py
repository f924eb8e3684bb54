"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): what Claude Code
and the `anthropic` SDKs speak.

A request becomes a chat request at the edge, as llama.cpp's server does it
(`server_chat_convert_anthropic_to_oai`): `system` (a string or text blocks) becomes a system
message; text and image blocks become content parts; an assistant's `tool_use` blocks become
its `tool_calls`, a user's `tool_result` blocks the `tool` messages that answer them; `tools`
become functions, `tool_choice` its OpenAI form; `stop_sequences` become `stop`;
`metadata.user_id` is the user. What a chat model cannot take (`thinking` blocks and settings,
`cache_control`, `context_management`, `output_config`, server tools, `top_k`, fields this
module does not know) is dropped, and the ledger's reason names it. `max_tokens` is a ceiling:
agents send the largest their model allows, so each model gets at most what it can hold.

The answer and its stream come back in Anthropic's shapes: content blocks, `stop_reason`,
`usage`; `message_start`, `content_block_start` / `_delta` (`text_delta`, `input_json_delta`) /
`_stop`, `message_delta`, `message_stop`, and `ping` during long waits. Errors are
`{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router.chunks import public_id
from router.errors import RequestError
from router.types import ChatRequest, Completion, Message, Routing
from router.wire.api import Asked, Call, bad, finish_of, parse_object, sse, unknown, usage_of
from router.wire.http import HTTPError, http_error
from router.wire.identity import agent_user
from router.wire.messages_native import Dropped, native

KNOWN = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "metadata", "stream", "thinking", "context_management",
    "output_config", "service_tier", "container", "mcp_servers",
}  # fmt: skip
CARRIED = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "tools", "tool_choice", "metadata", "stream",
}  # fmt: skip
STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    402: "billing_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def parse(raw: bytes, asked: Asked) -> Call:
    """A /v1/messages body → a Call, or HTTPError(400) in Anthropic's words."""
    data = parse_object(raw, '{"model": ..., "max_tokens": ..., "messages": [...]}')
    dropped = Dropped()
    for name in unknown(data, CARRIED):
        dropped.add(name)
    model = data.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise bad("model", "a model name or a routing mode (auto, local, cloud)")
    max_tokens = data.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens", "a positive integer")
    messages = _system(data.get("system"), dropped)
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad("messages", "a non-empty list of {role, content} objects")
    for i, message in enumerate(raw_messages):
        messages += _message(message, f"messages[{i}]", dropped)
    params: dict[str, Any] = {"max_tokens": min(max_tokens, 1 << 30)}
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, "a number in [0, 1]")
            params[name] = value
    stops = data.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise bad("stop_sequences", "a list of non-empty strings")
        if len(stops) > 4:
            dropped.add("stop_sequences beyond 4")
        if stops:
            params["stop"] = stops[:4]
    tools = _tools(data.get("tools"), dropped)
    if tools:
        params["tools"] = tools
        choice = _tool_choice(data.get("tool_choice"))
        if choice is not None:
            params["tool_choice"] = choice
    if data.get("top_k") is not None:
        dropped.add("top_k")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "true or false")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata", 'an object such as {"user_id": "..."}')
    named = (metadata or {}).get("user_id")
    if named is not None and not isinstance(named, str):
        raise bad("metadata.user_id", "a string")
    person, session = agent_user(named) if named else (None, None)
    try:
        request = ChatRequest(
            messages,
            model,
            params,
            user=asked.user or person or (named[:256] if named else None),
            session=asked.session or session,
            key_budget=asked.key_budget,
            cache=asked.cache,
            category=asked.category,
            client_retries=asked.client_retries,
            api="messages",
            dropped=tuple(dropped.names),
            native=native(data, asked.forward),
            max_tokens_cap=True,
        )
    except RequestError as exc:
        raise http_error(exc) from None
    return Call(request, bool(stream), model)


def count_tokens(raw: bytes) -> Call:
    """A /v1/messages/count_tokens body (a messages body without max_tokens) → a Call."""
    data = parse_object(raw, '{"model": ..., "messages": [...]}')
    data.setdefault("max_tokens", 1)
    return parse(json.dumps(data).encode(), Asked(cache=False))


def _system(system: Any, dropped: Dropped) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise bad("system", "a string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad(f"system[{i}]", 'a {"type": "text", "text": ...} block')
        if not isinstance(block.get("text"), str):
            raise bad(f"system[{i}].text", "a string")
        if "cache_control" in block:
            dropped.add("cache_control")
        texts.append(block["text"])
    joined = "\n\n".join(t for t in texts if t)
    return [{"role": "system", "content": joined}] if joined else []


def _message(message: Any, where: str, dropped: Dropped) -> list[Message]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
        raise bad(f"{where}.role", '"user" or "assistant" (or "system")')
    role, content = message["role"], message.get("content")
    if role == "system":  # instructions mid-conversation (Claude Code sends them)
        return _system(content, dropped)
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad(f"{where}.content", "a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[Message] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad(at, 'a content block with a "type"')
        if "cache_control" in block:
            dropped.add("cache_control")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise bad(f"{at}.text", "a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at, dropped))
        elif kind in ("thinking", "redacted_thinking"):
            dropped.add("thinking")
        else:
            dropped.add(f"{kind} blocks")
    out: list[Message] = list(results)  # a tool's result follows the call it answers
    if role == "assistant":
        if parts or calls:
            text = "".join(p["text"] for p in parts)
            turn: Message = {"role": "assistant", "content": text or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(block: Mapping[str, Any], at: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return f"data:{media};base64,{data}"
    url = source.get("url") if isinstance(source, dict) and source.get("type") == "url" else None
    if isinstance(url, str):
        return url
    raise bad(f"{at}.source", '{"type": "base64", "media_type", "data"} or {"type": "url", "url"}')


def _tool_use(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    ident, name, given = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(ident, str) or not isinstance(name, str):
        raise bad(at, 'a tool_use block with "id" and "name" strings')
    if not isinstance(given, dict):
        raise bad(f"{at}.input", "an object")
    arguments = json.dumps(given, ensure_ascii=False)
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_result(block: Mapping[str, Any], at: str, dropped: Dropped) -> Message:
    ident = block.get("tool_use_id")
    if not isinstance(ident, str):
        raise bad(f"{at}.tool_use_id", "a string")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                dropped.add(f"{part['type']} in tool results")
            else:
                raise bad(f"{at}.content[{k}]", "a content block")
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise bad(f"{at}.content", "a string or a list of text blocks")
    if block.get("is_error") is True:
        content = f"(the tool failed) {content}"
    return {"role": "tool", "tool_call_id": ident, "content": content}


def _tools(tools: Any, dropped: Dropped) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad("tools", 'a list of {"name", "description", "input_schema"} objects')
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise bad(f"tools[{i}]", "an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):  # a server tool (web search, bash...): Anthropic's own
            dropped.add(f"{str(kind)[:30]} tools")
            continue
        name, schema = tool.get("name"), tool.get("input_schema", {"type": "object"})
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise bad(f"tools[{i}]", 'a tool with a "name" and an "input_schema" object')
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad("tool_choice", '{"type": "auto" | "any" | "none"} or {"type": "tool", "name"}')


# ---------------------------------------------------------------- answers


class MessagesApi:
    api = "messages"
    media_type = "text/event-stream"

    def answer(self, call: Call, done: Completion) -> dict[str, Any]:
        native = done.response.get("native")
        if native:  # the provider's own answer, under the router's id
            return {**native, "id": public_id(done.routing.response_id, "msg_")}
        finish, calls = finish_of(done)
        blocks: list[dict[str, Any]] = []
        if done.text:
            blocks.append({"type": "text", "text": done.text})
        blocks += [_tool_use_block(c) for c in calls]
        prompt, completion = usage_of(done)
        return {
            "id": public_id(done.routing.response_id, "msg_"),
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": blocks,
            "stop_reason": "tool_use" if calls else STOP.get(finish, "end_turn"),
            "stop_sequence": None,
            "usage": _usage(
                prompt,
                completion,
                done.routing.cache_read_tokens,
                done.routing.cache_write_tokens,
            ),
        }

    def writer(self, call: Call, routing: Routing) -> MessagesWriter:
        return MessagesWriter(call, routing)

    def error(self, err: HTTPError) -> dict[str, Any]:
        kind = ERROR_TYPES.get(err.statuses.get("messages", err.status), "api_error")
        return {"type": "error", "error": {"type": kind, "message": err.message}}


def _usage(prompt: int, completion: int, read: int = 0, write: int = 0) -> dict[str, int]:
    """Usage in Anthropic's words: input tokens beside the provider's cache reads and writes."""
    return {
        "input_tokens": max(0, prompt - read - write),
        "output_tokens": completion,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }


def _tool_use_block(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        given = json.loads(function.get("arguments") or "{}")
    except ValueError:
        given = {"arguments": function.get("arguments")}  # what the model wrote, kept
    return {
        "type": "tool_use",
        "id": call.get("id") or "toolu_router",
        "name": function.get("name", ""),
        "input": given if isinstance(given, dict) else {"value": given},
    }


class MessagesWriter:
    """Chat chunks → Anthropic's stream events: one content block for the text, one per tool
    call (its arguments as `input_json_delta`), then `message_delta` with the stop reason and
    the usage, and `message_stop`."""

    def __init__(self, call: Call, routing: Routing) -> None:
        self._call = call
        self._id = public_id(routing.response_id, "msg_")
        self._index = -1  # the open content block, if any (_open)
        self._open: str | None = None  # "text", or the tool call's index as a string
        self._finish = "stop"
        self._tool = False
        self._started = False
        self._native = False  # the provider's own events, relayed (router.backends.native)

    def start(self) -> bytes:
        return b""  # the first chunk tells whether the provider's events come as they are

    def _head(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(0, 0),  # the real figures come with message_delta
        }
        return sse({"type": "message_start", "message": message}, "message_start")

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        native = chunk.get("native")
        if native:  # a model that speaks Anthropic's API: its events as they came
            self._native = self._started = True
            return sse(native["data"], native["event"])
        if self._native:
            return b""  # (the usage chunk)
        out = self._head()
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out += self._block("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for piece in delta.get("tool_calls") or []:
                self._tool = True
                function = piece.get("function") or {}
                key = str(piece.get("index", 0))
                if self._open != key:
                    block: dict[str, Any] = {
                        "type": "tool_use",
                        "id": piece.get("id") or f"toolu_{self._id[4:16]}{key}",
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    out += self._block(key, block)
                if function.get("arguments"):
                    partial = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out += self._delta(partial)
            self._finish = choice.get("finish_reason") or self._finish
        return out

    def end(self, routing: Routing) -> bytes:
        if self._native:
            return b""  # the provider's stream ended itself (message_stop)
        stop = "tool_use" if self._tool else STOP.get(self._finish, "end_turn")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": _usage(
                routing.prompt_tokens,
                routing.completion_tokens,
                routing.cache_read_tokens,
                routing.cache_write_tokens,
            ),
        }
        return (
            self._head()
            + self._close()
            + sse(delta, "message_delta")
            + sse({"type": "message_stop"}, "message_stop")
        )

    def fail(self, err: HTTPError) -> bytes:
        return self._close() + sse(MessagesApi().error(err), "error")

    def ping(self) -> bytes:
        return sse({"type": "ping"}, "ping")

    def _block(self, key: str, block: dict[str, Any]) -> bytes:
        """Open the block `key` (closing the one open before), unless it is open."""
        if self._open == key:
            return b""
        out = self._close()
        self._index += 1
        self._open = key
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + sse(start, "content_block_start")

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse(event, "content_block_delta")

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse({"type": "content_block_stop", "index": self._index}, "content_block_stop")
