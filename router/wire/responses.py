"""OpenAI's Responses API (`POST /v1/responses`), stateless: what Codex CLI and the `openai`
SDKs' `responses` speak.

A request becomes a chat request at the edge, as llama.cpp's server does it
(`server_chat_convert_responses_to_chatcmpl`): `instructions` and system or developer messages
become system messages; `input` (a string, or items: messages with `input_text`,
`output_text` and `input_image` parts, `function_call` and `function_call_output`) becomes the
conversation, consecutive calls one assistant turn; function `tools`, `tool_choice`,
`max_output_tokens`, `temperature`, `top_p` and `text.format` carry over. `reasoning` items,
built-in and namespace tools, `reasoning`, `include`, `prompt_cache_key`, `client_metadata`,
`store` and fields this module does not know are dropped, and the ledger's reason names them.
The router keeps no response state: `previous_response_id` is a 400 naming it (send the whole
conversation, as Codex does with `store: false`).

Answers come back as a `response` object with `output` items (a `message` with `output_text`,
`function_call`s) and `usage`; streams as `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
`response.function_call_arguments.delta`, their `.done` events and `response.completed`
(`response.failed` when the model failed mid-answer).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from router.chunks import public_id
from router.errors import RequestError
from router.types import ChatRequest, Completion, Message, Routing
from router.wire.api import Asked, Call, bad, finish_of, parse_object, sse, text_of, unknown
from router.wire.http import HTTPError, http_error
from router.wire.identity import session_id

CARRIED = {
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
    "temperature", "top_p", "stream", "text", "user", "parallel_tool_calls", "metadata",
}  # fmt: skip
MAX_TOKENS = 1 << 30
QUIET = {"store", "include", "prompt_cache_key", "client_metadata", "stream_options"}


def parse(raw: bytes, asked: Asked) -> Call:
    """A /v1/responses body → a Call, or HTTPError(400) naming the field."""
    data = parse_object(raw, '{"model": ..., "input": "..." or [...]}')
    if data.get("previous_response_id") is not None:
        raise HTTPError(
            400,
            "'previous_response_id': this router keeps no response state; send the whole "
            "conversation in 'input' (as Codex does with store: false)",
            param="previous_response_id",
        )
    dropped = [n for n in unknown(data, CARRIED | QUIET) if n != "previous_response_id"]
    dropped += ["reasoning"] if data.get("reasoning") else []
    model = data.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise bad("model", "a model name or a routing mode (auto, local, cloud)")
    messages: list[Message] = []
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad("instructions", "a string")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += _input(data.get("input"), dropped)
    params = _params(data, dropped)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "true or false")
    user = data.get("user")
    try:
        request = ChatRequest(
            messages,
            model,
            params,
            user=asked.user or (user if isinstance(user, str) else None) or asked.device,
            session=asked.session or session_id(data.get("prompt_cache_key")),
            key_budget=asked.key_budget,
            cache=asked.cache,
            category=asked.category,
            client_retries=asked.client_retries,
            api="responses",
            dropped=tuple(dict.fromkeys(dropped))[:16],
            max_tokens_cap="max_output_tokens" not in data,
        )
    except RequestError as exc:
        raise http_error(exc) from None
    echo = {k: data.get(k) for k in ("tool_choice", "parallel_tool_calls", "temperature", "top_p")}
    return Call(request, bool(stream), model, {"echo": echo})


def _input(given: Any, dropped: list[str]) -> list[Message]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise bad("input", "a string or a non-empty list of items")
    out: list[Message] = []
    for i, item in enumerate(given):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(at, "an item object")
        kind = item.get("type", "message")
        if kind == "message":
            out += _message(item, at, dropped)
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            arguments = item.get("arguments", "{}")
            if not all(isinstance(v, str) for v in (call_id, name, arguments)):
                raise bad(at, 'a function_call with "call_id", "name" and "arguments" strings')
            call = {"id": call_id, "type": "function"}
            call["function"] = {"name": name, "arguments": arguments}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # consecutive calls: one turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise bad(f"{at}.call_id", "a string")
            text = output if isinstance(output, str) else text_of(output)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:  # reasoning, built-in tools' calls: nothing a chat model takes
            dropped.append(f"{str(kind)[:30]} items")
    return out


def _message(item: Mapping[str, Any], at: str, dropped: list[str]) -> list[Message]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad(f"{at}.role", '"user", "assistant", "system" or "developer"')
    role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad(f"{at}.content", "a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and role == "user" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif isinstance(kind, str):
            dropped.append(f"{kind[:30]} parts")
        else:
            raise bad(f"{at}.content[{j}]", 'a part with a "type"')
    if role == "user" and parts:
        return [{"role": "user", "content": parts}]
    text = "".join(p.get("text", "") for p in parts)
    return [{"role": role, "content": text}] if text or role != "assistant" else []


def _params(data: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    # Without max_output_tokens an answer may be as long as the model allows, as with OpenAI
    # (an agent's edits are long): the engine caps it per model (max_tokens_cap).
    params: dict[str, Any] = {"max_tokens": MAX_TOKENS}
    limit = data.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise bad("max_output_tokens", "a positive integer")
        params["max_tokens"] = min(limit, MAX_TOKENS)
    for name in ("temperature", "top_p"):
        if data.get(name) is not None:
            params[name] = data[name]
    if data.get("tools") is not None and not isinstance(data["tools"], list):
        raise bad("tools", "a list of tools")
    tools = []
    for i, tool in enumerate(data.get("tools") or []):
        if not isinstance(tool, dict):
            raise bad(f"tools[{i}]", "a tool object")
        if tool.get("type") != "function":  # built-in (web_search...) and namespace tools
            dropped.append(f"{str(tool.get('type'))[:30]} tools")
            continue
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        tools.append({"type": "function", "function": function})
    if tools:
        params["tools"] = tools
        choice = data.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function":
            params["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice in ("auto", "none", "required"):
            params["tool_choice"] = choice
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = {"name": fmt.get("name") or "schema", "schema": fmt.get("schema") or {}}
        params["response_format"] = {"type": "json_schema", "json_schema": spec}
    return params


# ---------------------------------------------------------------- answers


def _response(call: Call, rid: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    echo = call.options.get("echo") or {}
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": call.model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": None,
        "metadata": {},
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": echo.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": [],
        "top_p": echo.get("top_p"),
        "truncation": "disabled",
    }


def _usage(routing: Routing) -> dict[str, Any]:
    """The answer's usage in OpenAI's words: input tokens with the provider's cache reads."""
    prompt, completion = routing.prompt_tokens, routing.completion_tokens
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {
            "cached_tokens": routing.cache_read_tokens + routing.prompt_cached_tokens
        },
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _message_item(ident: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "type": "message",
        "id": ident,
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def _call_item(ident: str, call: Mapping[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": ident,
        "call_id": call.get("id") or ident,
        "name": function.get("name", ""),
        "arguments": function.get("arguments", "") if status == "completed" else "",
        "status": status,
    }


class ResponsesApi:
    api = "responses"
    media_type = "text/event-stream"

    def answer(self, call: Call, done: Completion) -> dict[str, Any]:
        finish, calls = finish_of(done)
        rid = public_id(done.routing.response_id, "resp_")
        output: list[dict[str, Any]] = []
        if done.text or not calls:
            output.append(_message_item(f"msg_{rid[5:]}", done.text))
        output += [_call_item(f"fc_{rid[5:21]}{i}", c) for i, c in enumerate(calls)]
        usage = _usage(done.routing)
        status = "incomplete" if finish == "length" else "completed"
        return _response(call, rid, status, output, usage)

    def writer(self, call: Call, routing: Routing) -> ResponsesWriter:
        return ResponsesWriter(call, public_id(routing.response_id, "resp_"))

    def error(self, err: HTTPError) -> dict[str, Any]:
        return err.body()


class ResponsesWriter:
    """Chat chunks → the Responses stream: one output item for the text (opened at its first
    piece), one per function call (its arguments as deltas), each closed with its `.done`
    events, then `response.completed` with every item and the usage."""

    def __init__(self, call: Call, rid: str) -> None:
        self._call = call
        self._rid = rid
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # finished items, in order
        self._open: dict[str, Any] | None = None  # the item being written
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish = "stop"

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return sse({"type": kind, "sequence_number": self._seq, **fields}, kind)

    def start(self) -> bytes:
        head = _response(self._call, self._rid, "in_progress", [], None)
        return self._event("response.created", response=head) + self._event(
            "response.in_progress", response=head
        )

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self._finish = choice.get("finish_reason") or self._finish
            if delta.get("content"):
                if self._open is None or self._open["type"] != "message":
                    out += self._close()
                    out += self._begin(_message_item(f"msg_{self._rid[5:]}", "", "in_progress"))
                    part = {"type": "output_text", "text": "", "annotations": []}
                    out += self._event("response.content_part.added", **self._where(), part=part)
                self._text.append(delta["content"])
                out += self._event(
                    "response.output_text.delta", **self._where(), delta=delta["content"]
                )
            for piece in delta.get("tool_calls") or []:
                index = int(piece.get("index") or 0)
                if index not in self._calls:
                    out += self._close()
                    function = piece.get("function") or {}
                    call = {
                        "id": piece.get("id") or f"call_{self._rid[5:17]}{index}",
                        "function": {"name": function.get("name") or "", "arguments": ""},
                    }
                    self._calls[index] = call
                    out += self._begin(
                        _call_item(f"fc_{self._rid[5:21]}{index}", call, "in_progress")
                    )
                arguments = (piece.get("function") or {}).get("arguments") or ""
                if arguments:
                    self._calls[index]["function"]["arguments"] += arguments
                    out += self._event(
                        "response.function_call_arguments.delta",
                        item_id=self._open["id"] if self._open else "",
                        output_index=len(self._items),
                        delta=arguments,
                    )
        return out

    def end(self, routing: Routing) -> bytes:
        out = self._close()
        status = "incomplete" if self._finish == "length" else "completed"
        usage = _usage(routing)
        final = _response(self._call, self._rid, status, self._items, usage)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)

    def fail(self, err: HTTPError) -> bytes:
        failed = _response(self._call, self._rid, "failed", self._items, None)
        failed["error"] = {"code": err.code or "server_error", "message": err.message}
        return self._event("response.failed", response=failed)

    def ping(self) -> bytes:
        return b": ping\n\n"

    def _where(self) -> dict[str, Any]:
        item_id = self._open["id"] if self._open else ""
        return {"item_id": item_id, "output_index": len(self._items), "content_index": 0}

    def _begin(self, item: dict[str, Any]) -> bytes:
        self._open = item
        return self._event("response.output_item.added", output_index=len(self._items), item=item)

    def _close(self) -> bytes:
        """Finish the open item: its `.done` events, and keep it for response.completed."""
        item, self._open = self._open, None
        if item is None:
            return b""
        where = {"item_id": item["id"], "output_index": len(self._items)}
        out = b""
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            done = _message_item(item["id"], text)
            part = done["content"][0]
            out += self._event("response.output_text.done", **where, content_index=0, text=text)
            out += self._event("response.content_part.done", **where, content_index=0, part=part)
        else:
            call = next(c for c in self._calls.values() if c["id"] == item["call_id"])
            done = _call_item(item["id"], call)
            out += self._event(
                "response.function_call_arguments.done", **where, arguments=done["arguments"]
            )
        out += self._event("response.output_item.done", output_index=len(self._items), item=done)
        self._items.append(done)
        return out
