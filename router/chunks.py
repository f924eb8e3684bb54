"""Conversions between whole `chat.completion` objects and streams of chunks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any


def new_id() -> str:
    """A fresh answer id, in OpenAI's shape: `chatcmpl-` and 32 hex digits, the first 12 the
    time in milliseconds and the other 80 bits random, as UUIDv7 lays them out. Ids made later
    sort later, so every row lands at the end of the ledger's index on them; random ids (uuid4)
    put each row on a random page of that index, which outgrows SQLite's page cache: a hit's
    row cost twice as much once the ledger held 400,000 rows (scripts/bench_ledger_ids.py)."""
    return f"chatcmpl-{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


ID_PREFIXES = ("msg_", "resp_", "cmpl-", "ollama-")  # how other APIs' answers show the id


def public_id(response_id: str, prefix: str) -> str:
    """The router's answer id (`chatcmpl-<hex>`) as another API writes ids (`msg_<hex>`)."""
    return prefix + response_id.removeprefix("chatcmpl-")


def canonical_id(ident: str) -> str:
    """An id as any API showed it, back to the ledger's `chatcmpl-<hex>` (for feedback)."""
    for prefix in ID_PREFIXES:
        if ident.startswith(prefix):
            return "chatcmpl-" + ident.removeprefix(prefix)
    return ident


def assemble(
    first: dict[str, Any] | None,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: Mapping[str, Any],
) -> dict[str, Any]:
    """A streamed answer as the `chat.completion` object the same request would have got."""
    return {
        "id": (first or {}).get("id") or new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("prompt_tokens") or 0)
            + int(usage.get("completion_tokens") or 0),
        },
    }


def collect(chunks: Iterable[Mapping[str, Any]], model: str) -> dict[str, Any]:
    """Streamed chunks (the router's shape) as the `chat.completion` they add up to: the text,
    tool calls merged by index (OpenAI sends a call's name once, its arguments in pieces),
    the finish reason, and the usage of the last chunk that had one (None without)."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: Mapping[str, Any] | None = None
    first: Mapping[str, Any] = {}
    for chunk in chunks:
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(
                    int(piece.get("index") or 0),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = piece.get("id") or call["id"]
                call["type"] = piece.get("type") or call["type"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": first.get("id") or new_id(),
        "object": "chat.completion",
        "created": first.get("created") or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": dict(usage) if usage else None,
    }


def replay(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A cached `chat.completion` as the chunks a stream would have delivered."""
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk",
        "created": response["created"],
        "model": response["model"],
    }
    choice = response["choices"][0]
    message = choice["message"]
    return [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": message.get("content") or ""},
                    "finish_reason": None,
                }
            ],
        },
        {
            **base,
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
            ],
        },
        {**base, "choices": [], "usage": response["usage"]},
    ]
