"""A local model's turns: one generation at a time, handed out in the order asked
(batching.FairLock); a request is refused at once, rather than queued, when `max_queue`
requests are already in flight (BusyError, 503), or when its user already has
`max_parallel` chat requests in flight (RateLimitedError, 429), so one user cannot hold the
only worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from router.backends.batching import FairLock
from router.config import LocalModel
from router.errors import BusyError, RateLimitedError
from router.types import ChatRequest


class Turns:
    def __init__(self, name: str, model: LocalModel) -> None:
        self.name = name
        self._model = model
        self._generate_lock = FairLock()  # the model's turn, in the order asked
        self._queue_lock = threading.Lock()
        self.in_flight = 0  # running + waiting for the model
        self._by_user: dict[str, int] = {}  # the same, per user of a chat request
        self._seconds_per_request = 2.0  # moving average, for Retry-After

    @contextmanager
    def turn(self, admitted: bool = False, chat: ChatRequest | None = None) -> Iterator[None]:
        """Wait for the model, or refuse at once (`admitted`: a request that had a turn
        already, back for its next group; `chat`: a chat request, counted for its user, the
        anonymous together)."""
        whose = None if chat is None else chat.user or ""
        with self._queue_lock:
            if not admitted and self.in_flight >= self._model.max_queue:
                wait = self.in_flight * self._seconds_per_request
                raise BusyError(
                    f"local model {self.name!r} has {self.in_flight} requests in flight "
                    f"(max_queue = {self._model.max_queue}); retry in {wait:.0f} s",
                    retry_after=max(1.0, wait),
                )
            cap = self._model.max_parallel
            mine = self._by_user.get(whose, 0) if whose is not None else 0
            if whose is not None and cap is not None and mine >= cap:
                scope = f"user:{whose}" if whose else "anonymous"
                raise RateLimitedError(
                    f"{scope} model:{self.name}",
                    "max_parallel",
                    cap,
                    mine,
                    max(1.0, self._seconds_per_request),
                )
            self.in_flight += 1
            if whose is not None:
                self._by_user[whose] = mine + 1
        try:
            with self._generate_lock:
                started = time.monotonic()
                try:
                    yield
                finally:
                    took = time.monotonic() - started
                    self._seconds_per_request += 0.2 * (took - self._seconds_per_request)
        finally:
            with self._queue_lock:
                self.in_flight -= 1
                if whose is not None:
                    left = self._by_user.pop(whose) - 1
                    if left:
                        self._by_user[whose] = left
