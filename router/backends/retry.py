"""Retries with exponential backoff for any Backend, honouring a server's Retry-After.

A wrapper that is itself a Backend, so retrying composes with anything behind the seam. Only
errors marked retryable (429, 5xx, timeouts, dropped connections) are retried; a stream is
retried only until its first chunk arrives, never after output reached the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from router.backends import Backend, Embedder, deadline
from router.config.sections import RetrySettings
from router.errors import BackendError
from router.types import ChatRequest

_AT_MOST: ContextVar[int | None] = ContextVar("router_retries", default=None)


@contextmanager
def at_most(retries: int | None) -> Iterator[None]:
    """Calls inside this block retry at most `retries` times (None: as configured). A client
    that retries on its own (an OpenAI or Anthropic SDK) gets 0: its retries times the
    router's would multiply the calls to a failing provider."""
    token = _AT_MOST.set(retries)
    try:
        yield
    finally:
        _AT_MOST.reset(token)


class Retrying:
    def __init__(
        self,
        inner: Backend,
        settings: RetrySettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._settings = settings
        self._sleep = sleep

    def delay(self, attempt: int, error: BackendError) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        cap = self._settings.max_backoff_seconds
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(max(retry_after, 0.0), cap))
        return float(min(self._settings.backoff_seconds * (2**attempt), cap))

    def _should_retry(self, attempt: int, error: BackendError) -> bool:
        """Sleep before the next attempt and return True, or return False to give up now:
        not retryable, out of retries, a Retry-After beyond max_backoff_seconds, or a next
        attempt that could not start before the request's deadline (the engine then tries the
        next model at once)."""
        error.attempts = attempt + 1
        limit = _AT_MOST.get()
        retries = (
            self._settings.max_retries if limit is None else min(limit, self._settings.max_retries)
        )
        if not error.retryable or attempt >= retries:
            return False
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > self._settings.max_backoff_seconds:
            return False
        wait = self.delay(attempt, error)
        left = deadline.remaining()
        if left is not None and wait >= left:
            return False
        self._sleep(wait)
        return True

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return self.inner.complete(request, params)
            except BackendError as error:
                if not self._should_retry(attempt, error):
                    raise
                attempt += 1

    def embed(
        self, texts: list[str], dimensions: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        inner = self.inner
        if not isinstance(inner, Embedder):
            raise BackendError(f"{self.name}: not an embedding model")
        attempt = 0
        while True:
            try:
                return inner.embed(texts, dimensions, truncate)
            except BackendError as error:
                if not self._should_retry(attempt, error):
                    raise
                attempt += 1

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        attempt = 0
        while True:
            chunks = self.inner.stream(request, params)
            try:
                first = next(chunks)
                break
            except StopIteration:
                return
            except BackendError as error:
                if not self._should_retry(attempt, error):
                    raise
                attempt += 1
        yield first
        yield from chunks
