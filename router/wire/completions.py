"""OpenAI's legacy completions (`POST /v1/completions`): a prompt in, text out.

Routed like chat: the prompt becomes the one user message of a chat request (the models
behind the router are chat models; a raw continuation without a template is not something
they all do), and the answer comes back as a `text_completion`. One prompt per request (a list
of one is fine); `echo`, `suffix`, `best_of` above 1 and `logprobs` are refused or dropped as
they say.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from router.chunks import public_id
from router.errors import RequestError
from router.types import ChatRequest, Completion, Routing
from router.wire.api import Asked, Call, bad, finish_of, parse_object, sse, unknown
from router.wire.http import HTTPError, http_error

PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
          "frequency_penalty")  # fmt: skip
KNOWN = {*PARAMS, "model", "prompt", "stream", "stream_options", "user", "n", "best_of",
         "echo", "suffix", "logprobs", "logit_bias"}  # fmt: skip


def parse(raw: bytes, asked: Asked) -> Call:
    data = parse_object(raw, '{"model": ..., "prompt": "..."}')
    model = data.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise bad("model", "a model name or a routing mode (auto, local, cloud)")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt", "a string (one prompt per request)")
    for name, allowed in (("n", 1), ("best_of", 1)):
        if data.get(name) not in (None, allowed):
            raise bad(name, "1 (one completion per request)")
    if data.get("echo"):
        raise bad("echo", "false (the prompt is not echoed back)")
    dropped = list(unknown(data, KNOWN))
    dropped += [n for n in ("suffix", "logprobs", "logit_bias") if data.get(n)]
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "true or false")
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    user = data.get("user")
    try:
        request = ChatRequest(
            [{"role": "user", "content": prompt}],
            model,
            {k: data[k] for k in PARAMS if data.get(k) is not None},
            user=asked.user or (user if isinstance(user, str) else None),
            session=asked.session,
            key_budget=asked.key_budget,
            cache=asked.cache,
            category=asked.category,
            client_retries=asked.client_retries,
            api="completions",
            dropped=tuple(dropped),
        )
    except RequestError as exc:
        raise http_error(exc) from None
    return Call(request, bool(stream), model, {"include_usage": include_usage})


def _choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


class CompletionsApi:
    api = "completions"
    media_type = "text/event-stream"

    def answer(self, call: Call, done: Completion) -> dict[str, Any]:
        finish, _ = finish_of(done)
        return {
            "id": public_id(done.routing.response_id, "cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [_choice(done.text, finish)],
            "usage": done.response.get("usage"),
        }

    def writer(self, call: Call, routing: Routing) -> CompletionsWriter:
        return CompletionsWriter(call, public_id(routing.response_id, "cmpl-"))

    def error(self, err: HTTPError) -> dict[str, Any]:
        return err.body()


class CompletionsWriter:
    def __init__(self, call: Call, ident: str) -> None:
        self._call = call
        self._id = ident

    def _event(self, choices: list[Any], **extra: Any) -> bytes:
        head = {"id": self._id, "object": "text_completion", "created": int(time.time())}
        return sse({**head, "model": self._call.model, "choices": choices, **extra})

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason")
            if text or finish:
                out += self._event([_choice(text, finish)])
        return out

    def end(self, routing: Routing) -> bytes:
        out = b""
        if self._call.options.get("include_usage"):
            usage = {
                "prompt_tokens": routing.prompt_tokens,
                "completion_tokens": routing.completion_tokens,
                "total_tokens": routing.prompt_tokens + routing.completion_tokens,
            }
            out = self._event([], usage=usage)
        return out + b"data: [DONE]\n\n"

    def fail(self, err: HTTPError) -> bytes:
        return sse(err.body()) + b"data: [DONE]\n\n"

    def ping(self) -> bytes:
        return b": ping\n\n"
