"""Which API's error shape a path answers in, for errors raised before any API's own code runs
(a browser's request refused, an unknown path, a method not allowed, a bug): Anthropic's under
/v1/messages, Ollama's under /api/, OpenAI's elsewhere."""

from __future__ import annotations

from typing import Any

from router.wire.http import HTTPError
from router.wire.messages import MessagesApi
from router.wire.ollama import OllamaApi


def error_body(path: str, err: HTTPError) -> dict[str, Any]:
    if path.startswith("/v1/messages"):
        return MessagesApi().error(err)
    if path.startswith("/api/"):
        return OllamaApi().error(err)
    return err.body()
