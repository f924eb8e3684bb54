"""A request's deadline, seen by every backend call made for it.

The engine sets it around the attempts on each candidate model (`[retry] deadline_seconds`);
`Retrying` stops retrying when the next attempt could not start before it (a `Retry-After`
longer than what is left falls back at once), and the cloud backend never waits on a call
longer than what is left. A context variable carries it, so the Backend seam stays
`complete(request, params)`: each thread serving a request has its own.
"""

from __future__ import annotations

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
    """A call's timeout: its own, or what is left when the deadline is nearer (at least 1 s).
    Once the deadline has passed, a model still to be tried gets one attempt on its own
    timeout: the deadline moves a request on to the next model, it never leaves it unanswered."""
    left = remaining()
    return own if left is None or left <= 0 else min(own, max(1.0, left))
