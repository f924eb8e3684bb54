"""Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`...): what Ollama clients speak
(the `ollama` Python and JS libraries, Open WebUI, AnythingLLM, editors' Ollama providers).

`/api/chat` and `/api/generate` become chat requests: `options` map to the request's parameters
(`num_predict` → max_tokens, `temperature`, `top_p`, `seed`, `stop`, `repeat_penalty`... the rest
is dropped and the ledger says so), `format` ("json" or a schema) to `response_format`, images
to image parts, an assistant's `tool_calls` and the `tool` messages after them to OpenAI's tool
turns (Ollama's carry no ids: they are numbered in order). Answers stream as NDJSON by default,
one `{"message" | "response", "done": false}` object a piece and a last `done: true` one with
`done_reason` and the counts; `"stream": false` gives that last one whole. Errors are
`{"error": "..."}`. A model name may carry Ollama's `:latest` tag.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from router.errors import RequestError
from router.types import ChatRequest, Completion, Message, Routing
from router.wire.api import Asked, Call, bad, finish_of, ndjson, parse_object, usage_of
from router.wire.http import HTTPError, http_error

VERSION = "0.13.0"  # what /api/version says: clients check for features by it
OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
CHAT_FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
GENERATE_FIELDS = {
    "model", "prompt", "system", "images", "format", "options", "stream", "keep_alive", "think",
    "suffix", "template", "raw", "context",
}  # fmt: skip
DONE = {"stop": "stop", "length": "length", "tool_calls": "stop"}


def name_of(model: Any) -> str:
    """A model name as the router knows it: Ollama's `:latest` tag taken off."""
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise bad("model", "a model name (see /api/tags)")
    return model.removesuffix(":latest")


def parse_chat(raw: bytes, asked: Asked) -> Call:
    data = parse_object(raw, '{"model": ..., "messages": [...]}')
    dropped = [n for n in sorted(set(data) - CHAT_FIELDS)][:16]
    model = name_of(data.get("model"))
    given = data.get("messages")
    if not isinstance(given, list) or not given:
        raise bad("messages", "a non-empty list of {role, content} objects")
    messages = _messages(given)
    params = _params(data, dropped)
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad("tools", "a list of {type: function, function: {...}} objects")
    if tools:  # (the ollama client sends an empty list for none)
        params["tools"] = tools
    return _call(data, messages, params, model, dropped, asked, kind="chat")


def parse_generate(raw: bytes, asked: Asked) -> Call:
    data = parse_object(raw, '{"model": ..., "prompt": "..."}')
    dropped = [n for n in sorted(set(data) - GENERATE_FIELDS)][:16]
    dropped += [n for n in ("suffix", "template", "raw", "context") if data.get(n)]
    model = name_of(data.get("model"))
    prompt, system = data.get("prompt", ""), data.get("system")
    if not isinstance(prompt, str):
        raise bad("prompt", "a string")
    if not prompt and not data.get("images"):  # Ollama's way to load a model: nothing to do
        loaded = {"model": data["model"], "created_at": now(), "response": "", "done": True}
        request = ChatRequest([{"role": "user", "content": "-"}], model, api="ollama")
        return Call(request, False, str(data["model"]), ready={**loaded, "done_reason": "load"})
    if system is not None and not isinstance(system, str):
        raise bad("system", "a string")
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    user: Message = {"role": "user", "content": prompt}
    if data.get("images"):
        user["content"] = [{"type": "text", "text": prompt}, *_images(data["images"], "images")]
    messages.append(user)
    return _call(data, messages, _params(data, dropped), model, dropped, asked, kind="generate")


def _call(
    data: Mapping[str, Any],
    messages: list[Message],
    params: dict[str, Any],
    model: str,
    dropped: list[str],
    asked: Asked,
    *,
    kind: str,
) -> Call:
    stream = data.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise bad("stream", "true or false")
    try:
        request = ChatRequest(
            messages,
            model,
            params,
            user=asked.user,
            session=asked.session,
            key_budget=asked.key_budget,
            cache=asked.cache,
            category=asked.category,
            client_retries=asked.client_retries,
            api="ollama",
            dropped=tuple(dropped),
        )
    except RequestError as exc:
        raise http_error(exc) from None
    return Call(request, stream, str(data["model"]), {"kind": kind})


def _messages(given: list[Any]) -> list[Message]:
    out: list[Message] = []
    waiting: list[str] = []  # ids given to an assistant's calls, for the tool results after it
    for i, m in enumerate(given):
        at = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise bad(f"{at}.role", '"system", "user", "assistant" or "tool"')
        content = m.get("content", "")
        if not isinstance(content, str):
            raise bad(f"{at}.content", "a string")
        role = m["role"]
        if role == "tool":
            ident = waiting.pop(0) if waiting else f"call_{i}"
            out.append({"role": "tool", "tool_call_id": ident, "content": content})
            continue
        message: Message = {"role": role, "content": content}
        if role == "user" and m.get("images"):
            message["content"] = [
                {"type": "text", "text": content},
                *_images(m["images"], f"{at}.images"),
            ]
        if role == "assistant" and m.get("tool_calls"):
            calls = _tool_calls(m["tool_calls"], f"{at}.tool_calls", i)
            waiting = [c["id"] for c in calls]
            message["tool_calls"] = calls
            message["content"] = content or None
        out.append(message)
    return out


def _images(images: Any, at: str) -> list[dict[str, Any]]:
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise bad(at, "a list of base64 strings")
    return [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{x}"}} for x in images
    ]


def _tool_calls(calls: Any, at: str, turn: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise bad(at, "a list of {function: {name, arguments}} objects")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{at}[{j}].function", "an object with a name")
        arguments = function.get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        out.append(
            {
                "id": f"call_{turn}_{j}",
                "type": "function",
                "function": {"name": function["name"], "arguments": text},
            }
        )
    return out


def _params(data: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise bad("options", 'an object such as {"temperature": 0.2, "num_predict": 64}')
    for name, value in options.items():
        target = OPTIONS.get(name)
        if target == "max_tokens":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("options.num_predict", "an integer (-1: no limit)")
            if value > 0:
                params["max_tokens"] = value
        elif target is not None:
            params[target] = value
        elif name == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise bad("options.stop", "a list of non-empty strings")
            params["stop"] = value[:4]
        else:
            dropped.append(f"options.{str(name)[:30]}")
    fmt = data.get("format")
    if fmt == "json":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        spec = {"name": "format", "schema": fmt}
        params["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif fmt not in (None, ""):
        raise bad("format", '"json" or a JSON schema object')
    return params


# ---------------------------------------------------------------- answers


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        function = c.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {"arguments": function.get("arguments")}
        out.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def _stats(routing: Routing, prompt: int, completion: int) -> dict[str, Any]:
    total = int(routing.latency_ms * 1e6)
    return {
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 0,
        "eval_count": completion,
        "eval_duration": total,
    }


class OllamaApi:
    api = "ollama"
    media_type = "application/x-ndjson"

    def answer(self, call: Call, done: Completion) -> dict[str, Any]:
        finish, calls = finish_of(done)
        prompt, completion = usage_of(done)
        head: dict[str, Any] = {"model": call.model, "created_at": now()}
        if call.options.get("kind") == "generate":
            head["response"] = done.text
        else:
            message: dict[str, Any] = {"role": "assistant", "content": done.text}
            if calls:
                message["tool_calls"] = _ollama_calls(calls)
            head["message"] = message
        return {
            **head,
            "done": True,
            "done_reason": DONE.get(finish, "stop"),
            **_stats(done.routing, prompt, completion),
        }

    def writer(self, call: Call, routing: Routing) -> OllamaWriter:
        return OllamaWriter(call)

    def error(self, err: HTTPError) -> dict[str, Any]:
        return {"error": err.message}


class OllamaWriter:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._generate = call.options.get("kind") == "generate"
        self._finish = "stop"
        self._calls: list[dict[str, Any]] = []

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self._finish = choice.get("finish_reason") or self._finish
            for piece in delta.get("tool_calls") or []:  # gathered: Ollama sends them whole
                index = int(piece.get("index") or 0)
                while len(self._calls) <= index:
                    self._calls.append({"function": {"name": "", "arguments": ""}})
                function = piece.get("function") or {}
                self._calls[index]["function"]["name"] += function.get("name") or ""
                self._calls[index]["function"]["arguments"] += function.get("arguments") or ""
            if delta.get("content"):
                out += ndjson(self._piece(delta["content"]))
        return out

    def end(self, routing: Routing) -> bytes:
        last = self._piece("")
        if self._calls and not self._generate:
            last["message"]["tool_calls"] = _ollama_calls(self._calls)
        last.update(done=True, done_reason=DONE.get(self._finish, "stop"))
        last.update(_stats(routing, routing.prompt_tokens, routing.completion_tokens))
        return ndjson(last)

    def fail(self, err: HTTPError) -> bytes:
        return ndjson({"error": err.message})

    def ping(self) -> bytes:
        return b""

    def _piece(self, text: str) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self._call.model, "created_at": now()}
        if self._generate:
            return {**head, "response": text, "done": False}
        return {**head, "message": {"role": "assistant", "content": text}, "done": False}
