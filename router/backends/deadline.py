"""A request's deadline, seen by every backend call made for it.

The engine sets it around the attempts on each candidate model (`[retry] deadline_seconds`);
`Retrying` stops retrying when the next attempt could not start before it (a `Retry-After`
longer than what is left falls back at once), and the cloud backend never waits on a call
longer than what is left. A context variable carries it, so the Backend seam stays
`complete(request, params)`: each thread serving a request has its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("router_deadline", default=None)


@contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Calls inside this block should be done by `deadline` (time.monotonic())."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the deadline (negative once passed); None without one."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def timeout(own: float) -> float:
    """A call's timeout: its own, or what is left when the deadline is nearer (at least 1 s),
    rounded up to whole seconds (tenths under 10 s). Once the deadline has passed, a model
    still to be tried gets one attempt on its own timeout: the deadline moves a request on to
    the next model, it never leaves it unanswered.

    Rounded: LiteLLM keeps one HTTP client (and its open connections) per timeout value, so a
    timeout that differed on every call would make a new client, a new TCP connection and a
    new TLS handshake with the provider on every call. Up: with the shipped defaults (a 60 s
    deadline, 60 s timeouts) a request's first call gets exactly its own timeout, and a call
    never ends before the deadline it was given (at most 1 s after it, 0.1 s under 10 s)."""
    left = remaining()
    if left is None or left <= 0 or left >= own:
        return own
    step = 1.0 if left >= 10 else 0.1
    return min(own, max(1.0, round(math.ceil(left / step) * step, 1)))
