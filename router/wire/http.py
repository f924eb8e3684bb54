"""Router errors → HTTP statuses and OpenAI error bodies; the feedback body.

No HTTP framework here: the server moves bytes, this module decides what they mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from router.errors import (
    BackendError,
    BudgetExceededError,
    BusyError,
    CloudRefusedError,
    LedgerUnavailableError,
    NoRouteError,
    NotFoundError,
    RateLimitedError,
    RequestError,
    RouterError,
    TooLargeError,
    UnavailableError,
    UnknownModelError,
)
from router.types import body


@dataclass
class HTTPError(Exception):
    """An error response in OpenAI's shape: {"error": {message, type, param, code}}."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The status an API answers with where it is not `status` (its clients' own rules).
    statuses: dict[str, int] = field(default_factory=dict)
    refusal: str = ""  # the RouterError's refusal ("budget", "guardrail"), for the metrics
    limit: str = ""  # a rate limit's scope and kind ("user:ana rpm"), for the metrics

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
    """The HTTP status and OpenAI error body for a router error, in its public words (never a
    provider's message, a URL, a path or a pid: RouterError.public)."""
    if isinstance(exc, UnknownModelError):
        return HTTPError(404, exc.public, param="model", code="model_not_found")
    if isinstance(exc, NotFoundError):
        return HTTPError(404, exc.public, param=exc.param, code="not_found")
    if isinstance(exc, NoRouteError):
        return HTTPError(400, exc.public, param=exc.param, code="no_model_can_serve")
    if isinstance(exc, TooLargeError):
        return HTTPError(413, exc.public, param=exc.param, code="request_too_large")
    if isinstance(exc, RequestError):
        return HTTPError(400, exc.public, param=exc.param)
    if isinstance(exc, BudgetExceededError):
        if exc.in_flight:  # requests still running hold it: seconds away, retry
            return HTTPError(
                429,
                exc.public,
                "budget_exceeded_error",
                code="budget_in_use",
                headers={"Retry-After": str(max(1, round(exc.retry_after())))},
            )
        return budget_spent(exc.public)
    if isinstance(exc, RateLimitedError):  # seconds away: every client retries a 429
        return HTTPError(
            429,
            exc.public,
            "rate_limit_error",
            code="rate_limited",
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )
    if isinstance(exc, BusyError):
        retry = str(max(1, round(exc.retry_after or 1)))
        return HTTPError(
            503,
            exc.public,
            "service_unavailable_error",
            code="queue_full",
            headers={"Retry-After": retry},
        )
    if isinstance(exc, LedgerUnavailableError):  # no paid call that could not be recorded
        return HTTPError(
            503,
            exc.public,
            "service_unavailable_error",
            code="ledger_unavailable",
            headers={"Retry-After": str(max(1, round(exc.retry_after or 5)))},
        )
    if isinstance(exc, CloudRefusedError):  # the provider said no: retrying will not help
        return HTTPError(502, exc.public, "upstream_error", code="cloud_refused")
    if isinstance(exc, UnavailableError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return HTTPError(
            503, exc.public, "service_unavailable_error", code="no_tier_available", headers=headers
        )
    if isinstance(exc, BackendError):  # a model failed mid-answer: a stream's error event
        return HTTPError(503, exc.public, "service_unavailable_error", code="model_failed")
    return HTTPError(500, exc.public, "server_error")


def budget_spent(message: str) -> HTTPError:
    """A budget that cannot take the request until it resets: a final answer, never a wait.

    OpenAI's code for it, `insufficient_quota`, with a 400 and `x-should-retry: false`: the
    status every client treats as final. (Codex 0.171 stops on a 429 `insufficient_quota` at
    once but prints its own "Quota exceeded" without the budget's words; it retries a 402 or
    403 five times; it prints a 400's message and stops.) Anthropic's clients get its
    `billing_error`, a 402, which Claude Code and Anthropic's SDKs do not retry. No
    Retry-After: the reset is hours away, and clients that honour it look hung."""
    return HTTPError(
        400,
        message,
        "insufficient_quota",
        code="insufficient_quota",
        headers={"x-should-retry": "false"},
        statuses={"messages": 402},
    )


FEEDBACK_FIELDS = {"id", "rating", "comment"}


def parse_feedback(raw: bytes) -> tuple[str, str, str]:
    """A /v1/feedback body `{"id", "rating": "good" | "bad", "comment"?}` → its three fields,
    or HTTPError(400) naming the one to fix."""
    try:
        data = body.parse(raw)
    except body.BodyError as exc:
        raise HTTPError(400, str(exc), param=exc.param) from None
    if not isinstance(data, dict):
        raise HTTPError(400, 'the body must be a JSON object: {"id": ..., "rating": "good"}')
    unknown = sorted(set(data) - FEEDBACK_FIELDS)
    if unknown:
        raise HTTPError(400, f"unknown field {unknown[0][:40]!r}", param=unknown[0][:40])
    ident, rating, comment = data.get("id"), data.get("rating"), data.get("comment", "")
    if not isinstance(ident, str) or not 0 < len(ident) <= 200:
        raise HTTPError(400, "'id': the answer's id, a string (the response's `id`)", param="id")
    if rating not in ("good", "bad"):
        raise HTTPError(400, '\'rating\': give "good" or "bad"', param="rating")
    if not isinstance(comment, str) or len(comment) > 2000:
        raise HTTPError(400, "'comment': a string of at most 2000 characters", param="comment")
    return ident, str(rating), comment
