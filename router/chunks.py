"""Conversions between whole `chat.completion` objects and streams of chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any


def new_id() -> str:
    """A fresh answer id, in OpenAI's shape."""
    return f"chatcmpl-{uuid.uuid4().hex}"


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
