"""The OpenAI wire format: request bodies in, error bodies out. No HTTP framework here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from router.errors import (
    BackendError,
    BudgetExceededError,
    BusyError,
    NoRouteError,
    RequestError,
    RouterError,
    UnavailableError,
    UnknownModelError,
)
from router.types import SAMPLING_PARAMS, ChatRequest

# OpenAI request fields that change nothing here and are accepted so that clients which always
# send them (LangChain sends n=1, the SDK may send store=false) keep working.
_ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "n",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "store",
        "service_tier",
        "modalities",
        "reasoning_effort",
    }
)


@dataclass
class HTTPError(Exception):
    """An error response in OpenAI's shape: {"error": {message, type, param, code}}."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def http_error(exc: RouterError) -> HTTPError:
    """The HTTP status and OpenAI error body for a router error."""
    if isinstance(exc, UnknownModelError):
        return HTTPError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, NoRouteError):
        return HTTPError(400, str(exc), param=exc.param, code="no_model_can_serve")
    if isinstance(exc, RequestError):
        return HTTPError(400, str(exc), param=exc.param)
    if isinstance(exc, BudgetExceededError):
        return HTTPError(
            429,
            str(exc),
            "budget_exceeded_error",
            code="budget_exceeded",
            headers={"Retry-After": str(max(1, round(exc.seconds_to_reset())))},
        )
    if isinstance(exc, BusyError):
        retry = str(max(1, round(exc.retry_after or 1)))
        return HTTPError(
            503,
            str(exc),
            "service_unavailable_error",
            code="queue_full",
            headers={"Retry-After": retry},
        )
    if isinstance(exc, UnavailableError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return HTTPError(
            503, str(exc), "service_unavailable_error", code="no_tier_available", headers=headers
        )
    if isinstance(exc, BackendError):  # a model failed mid-answer: a stream's error event
        return HTTPError(503, str(exc), "service_unavailable_error", code="model_failed")
    return HTTPError(500, str(exc), "server_error")


@dataclass(frozen=True)
class ChatCall:
    request: ChatRequest
    stream: bool
    include_usage: bool


def _expect(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # JSON true is a Python bool, which is also an int: keep the two apart.
    ok = (
        isinstance(value, bool)
        if kind is bool
        else (isinstance(value, kind) and not isinstance(value, bool))
    )
    if not ok:
        raise HTTPError(400, f"'{name}' must be {what}", param=name)
    return value


def parse_chat(
    raw: bytes, *, user: str | None, cache: bool, category: str | None = None
) -> ChatCall:
    """A /v1/chat/completions body → a validated ChatCall, or HTTPError(400) saying what to fix.

    `user` (the API key's owner) wins over the body's `user` field when given; `category`
    (the x-router-category header) over the body's `metadata.category`.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - _ACCEPTED - SAMPLING_PARAMS)
    if unknown:
        raise HTTPError(
            400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise HTTPError(
            400,
            "'model' must be a non-empty string: auto, local, cloud or a "
            "model name from GET /v1/models",
            param="model",
        )
    n = _expect(body, "n", int, "an integer")
    if n not in (None, 1):
        raise HTTPError(400, "only n = 1 is supported", param="n")
    stream = bool(_expect(body, "stream", bool, "true or false"))
    options = _expect(body, "stream_options", dict, "an object") or {}
    body_user = _expect(body, "user", str, "a string")
    params = {k: body[k] for k in SAMPLING_PARAMS if k in body}
    metadata = _expect(body, "metadata", dict, "an object") or {}
    category = category or metadata.get("category")
    try:
        request = ChatRequest(
            messages=body.get("messages"),  # type: ignore[arg-type]
            model=model,
            params=params,
            user=user or body_user,
            cache=cache,
            category=category,
        )
    except RequestError as exc:
        raise http_error(exc) from None
    return ChatCall(request, stream, bool(options.get("include_usage")))
