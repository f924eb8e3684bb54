"""What the API tests of the server share: a router on test doubles behind a real server, whose
cloud model calls a `weather` tool and then answers with its result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.server_harness import ServerThread

ALIASES = '\n[aliases]\n"claude-*" = "auto"\n"gpt-5*" = "auto"\n'


def weather(request: Any, params: Any) -> Any:
    """A model that calls the weather tool, then answers with the tool's result."""
    last = request.messages[-1]
    if last["role"] == "tool":
        return f"It is {json.loads(last['content'])['sky']} in Paris."
    if params.get("tools"):
        call = {"id": "call_w1", "type": "function"}
        call["function"] = {"name": "weather", "arguments": '{"city": "Paris"}'}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "cloud-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
        }
    return "Hello from the router."


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Router, str]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", ALIASES)
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "Hello from the router."),
        "cloud-mini": FunctionBackend("cloud-mini", weather),
    }
    with Router(config, backends=backends) as router, ServerThread(create_app(router)) as s:
        yield router, s.url
