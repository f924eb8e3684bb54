"""OpenAI conversations and sampling parameters → what a local GGUF model (its chat template,
llama-cpp-python's arguments) can take.

Chat templates expect `{role, content: str}`. OpenAI conversations also carry content as a list
of parts, assistant turns whose `content` is null because they only called tools, `tool`
messages with the results, and a `developer` role. For a model without tool support the tool
turns are written out as text (the model still sees what was called and what came back); for
one with `supports_tools = true` they are kept, with string content, for its chat handler.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from router.types import SAMPLING_PARAMS, Message, message_text


def for_local(messages: list[Message], *, tools: bool) -> list[dict[str, Any]]:
    """`messages` with string content and roles every chat template knows."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, text = m["role"], message_text(m)
        if role == "developer":
            role = "system"
        if role == "assistant":
            if not text and m.get("refusal"):
                text = m["refusal"]
            calls = m.get("tool_calls") or []
            if m.get("function_call"):
                calls = [*calls, {"id": "", "function": m["function_call"]}]
            if calls and tools:
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
                continue
            text = "\n".join([text, *map(_call_line, calls)]).strip()
        elif role == "tool":
            if tools:
                out.append({"role": "tool", "content": text, "tool_call_id": m["tool_call_id"]})
                continue
            role, text = "user", f"[result of tool call {m['tool_call_id']}]\n{text}"
        out.append({"role": role, "content": text})
    return out


def _call_line(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    with contextlib.suppress(ValueError):  # compact, stable spacing whatever was sent
        arguments = json.dumps(json.loads(arguments), ensure_ascii=False)
    return f"[called tool {function.get('name', '?')}({arguments})]"


def llama_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python arguments for one generation. Every generation gets a seed: without
    one, llama-cpp-python derives the next seed from the last request's, so one client's `seed`
    would make the next client's answers predictable."""
    # `tools` only reach a model whose models.toml says supports_tools = true (its chat_format
    # must then handle them, e.g. "chatml-function-calling"); response_format is translated.
    kwargs = {k: v for k, v in params.items() if k in SAMPLING_PARAMS and k != "response_format"}
    # llama.cpp takes a 32-bit seed; -1 stays 0xFFFFFFFF, llama.cpp's "random".
    kwargs["seed"] = params["seed"] % (1 << 32) if "seed" in params else secrets.randbits(32)
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema or {}}
    return kwargs
