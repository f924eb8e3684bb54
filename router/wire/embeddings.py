"""Embeddings in OpenAI's shape (`POST /v1/embeddings`) and Ollama's (`/api/embed`,
`/api/embeddings`): the request's texts in, the vectors out (router.engine.embedding does the work).

OpenAI's `encoding_format: "base64"` (what the `openai` SDK asks for) is each vector's float32
values, little-endian, in base64. Token-id inputs are refused: send text. `dimensions` goes to
a cloud model's provider, which shortens its vectors; a local model refuses any size but its
own, before it does any work.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

from router.backends.hangup import Hangup
from router.engine.embedding import Embeddings
from router.types import Routing
from router.wire.api import Asked, bad, parse_object
from router.wire.http import HTTPError
from router.wire.ollama import name_of

Job = Callable[[Hangup], tuple[dict[str, Any], Routing]]
Embed = Callable[..., Embeddings]  # Router.embed


def _texts(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise bad(param, "text (token ids are not taken: send the text itself)")
    raise bad(param, "a non-empty string or a list of them")


def _dimensions(data: dict[str, Any]) -> int | None:
    wanted = data.get("dimensions")
    if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)):
        raise bad("dimensions", "an integer")
    return wanted


def openai_job(embed: Embed, raw: bytes, asked: Asked) -> Job:
    data = parse_object(raw, '{"model": ..., "input": "..." or [...]}')
    texts = _texts(data.get("input"), "input")
    model = data.get("model", "auto")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise bad("model", "an embedding model's name or a routing mode")
    fmt = data.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", '"float" or "base64"')
    wanted = _dimensions(data)
    scoped(model, asked)

    def work(hangup: Hangup) -> tuple[dict[str, Any], Routing]:
        done = _run(embed, texts, model, asked, hangup, wanted)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, fmt)}
            for i, v in enumerate(done.vectors)
        ]
        tokens = done.routing.prompt_tokens
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}, done.routing

    return work


def scoped(model: str, asked: Asked) -> None:
    """A 403 when the API key may not ask for `model` (Asked.models)."""
    if asked.models and model not in asked.models:
        raise HTTPError(
            403,
            f"this API key may ask for {', '.join(asked.models)} only, not {model[:80]!r}",
            "permission_error",
            param="model",
            code="model_not_allowed",
        )


def _run(
    embed: Embed,
    texts: list[str],
    model: str,
    asked: Asked,
    hangup: Hangup,
    wanted: int | None,
    truncate: bool = False,
) -> Embeddings:
    user, retries = asked.user, asked.client_retries
    return embed(
        texts,
        model,
        user=user,
        client_retries=retries,
        hangup=hangup,
        dimensions=wanted,
        truncate=truncate,
        key_budget=asked.key_budget,
    )


def _encoded(vector: list[float], fmt: str) -> Any:
    if fmt == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def ollama_job(embed: Embed, raw: bytes, asked: Asked, *, legacy: bool) -> Job:
    """/api/embed (`input`: a string or a list; `embeddings` out) or, `legacy`, the older
    /api/embeddings (`prompt`; one `embedding` out)."""
    data = parse_object(raw, '{"model": ..., "input": ...}')
    model = name_of(data.get("model"))
    texts = _texts(data.get("prompt" if legacy else "input"), "prompt" if legacy else "input")
    wanted = None if legacy else _dimensions(data)
    # Ollama cuts a text too long for its model by default; here only when asked (a text cut
    # without a word gives a vector of a part of it), otherwise it is a 400 that says so.
    truncate = data.get("truncate", False)
    if not isinstance(truncate, bool):
        raise bad("truncate", "true or false")
    scoped(model, asked)

    def work(hangup: Hangup) -> tuple[dict[str, Any], Routing]:
        done = _run(embed, texts, model, asked, hangup, wanted, truncate)
        if legacy:
            return {"embedding": done.vectors[0]}, done.routing
        nanoseconds = int(done.routing.latency_ms * 1e6)
        body = {
            "model": data["model"],
            "embeddings": done.vectors,
            "total_duration": nanoseconds,
            "load_duration": 0,
            "prompt_eval_count": done.routing.prompt_tokens,
        }
        return body, done.routing

    return work
