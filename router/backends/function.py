"""FunctionBackend: a model whose answers come from a Python function. A test double that *is*
a backend (as httpx's MockTransport is a transport and pydantic-ai's FunctionModel a model), so
the whole pipeline (routing, fallback, cache, budgets, ledger) runs without a GGUF or a network:

    from router import Router
    from router.backends import FunctionBackend

    echo = FunctionBackend("smollm2", lambda request, params: f"echo: {request.last_user_text}")
    with Router(backends={"smollm2": echo}) as router:
        assert router.complete([{"role": "user", "content": "hi"}], "local").text == "echo: hi"

The function gets the request and the model parameters and returns the answer's text, or a
whole `chat.completion` dict, or raises `router.errors.BackendError` to act as a failed model.
Token counts are words (whitespace-separated), so tests can predict them; `max_tokens` cuts the
answer with `finish_reason = "length"`. `calls` records every (request, params) received.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from router.errors import BackendError, RequestError
from router.types import ChatRequest, message_text

AnswerFunction = Callable[[ChatRequest, dict[str, Any]], "str | dict[str, Any]"]
StreamFunction = Callable[[ChatRequest, dict[str, Any]], Iterable[str]]
EmbedFunction = Callable[[str], list[float]]


class FunctionBackend:
    """A backend answering with `fn` (and, for streams, `stream_fn`: the pieces of text)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        name: str,
        fn: AnswerFunction,
        *,
        stream_fn: StreamFunction | None = None,
        embed_fn: EmbedFunction | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._embed_fn = embed_fn
        self._stream_fn = stream_fn
        self.calls: list[tuple[ChatRequest, dict[str, Any]]] = []

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((request, dict(params)))
        answer = self._fn(request, params)
        if isinstance(answer, dict):
            return answer
        text, finish = _capped(answer.split(" "), params)
        return {
            "id": f"chatcmpl-fn{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage(request, text),
        }

    def embed(
        self, texts: list[str], dimensions: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """`embed_fn`'s vector for each text; tokens counted as words. Another `dimensions`
        than the vectors' own is refused, as a local model refuses it."""
        if self._embed_fn is None:
            raise BackendError(f"{self.name}: this FunctionBackend has no embed_fn")
        vectors = [self._embed_fn(t) for t in texts]
        if dimensions is not None and vectors and dimensions != len(vectors[0]):
            raise RequestError(f"'dimensions' must be {len(vectors[0])}", param="dimensions")
        return vectors, sum(len(t.split()) for t in texts)

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append((request, dict(params)))
        return self._stream(request, params)

    def _stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        if self._stream_fn is not None:
            pieces: Iterable[str] = self._stream_fn(request, params)  # lazily, as a model would
        else:
            answer = self._fn(request, params)
            if isinstance(answer, dict):  # a whole completion: its text, and its tool calls
                message = answer["choices"][0]["message"]
                calls = list(message.get("tool_calls") or [])
                answer = message.get("content") or ""
            words = answer.split(" ") if answer else []
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        limit = params.get("max_tokens")
        rid, created = f"chatcmpl-fn{next(self._ids)}", int(time.time())

        def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.name,
                "choices": [choice],
            }

        sent: list[str] = []
        finish = "stop"
        for piece in pieces:
            if limit is not None and len(sent) >= int(limit):
                finish = "length"
                break
            delta = {"role": "assistant", "content": piece} if not sent else {"content": piece}
            sent.append(piece)
            yield chunk(delta, None)
        for index, call in enumerate(calls):  # as OpenAI streams them: name, then arguments
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            yield chunk({"tool_calls": [{**head, "function": {"name": function["name"]}}]}, None)
            arguments = {"arguments": function["arguments"]}
            yield chunk({"tool_calls": [{"index": index, "function": arguments}]}, None)
        yield chunk({}, "tool_calls" if calls else finish)
        yield {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.name,
            "choices": [],
            "usage": usage(request, "".join(sent)),
        }


def usage(request: ChatRequest, answer: str) -> dict[str, int]:
    """Words as tokens: every message's words plus 3 per message, and the answer's words."""
    prompt = sum(len(message_text(m).split()) + 3 for m in request.messages)
    completion = len(answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _capped(words: list[str], params: dict[str, Any]) -> tuple[str, str]:
    limit = params.get("max_tokens")
    if limit is not None and len(words) > int(limit):
        return " ".join(words[: int(limit)]), "length"
    return " ".join(words), "stop"
