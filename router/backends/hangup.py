"""A client that hangs up: what generates for its request stops, whatever the backend.

The server makes a `Hangup` for each request and fires it when the client disconnects (the
ASGI `http.disconnect` message); the engine makes it the current one around the backend calls
(a context variable, as `deadline` does, so the Backend seam stays `complete(request, params)`).
Each backend stops its work its own way: a local model's worker gets the cancel a stream gets,
a server's connection is shut, a cloud call (made as a stream for this) is closed at the next
token. A backend that cut an answer short says so (`cut`), so the ledger row can.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger("router.hangup")


class Hangup:
    """Fired at most once, from any thread; `on_fire` callbacks run then (at once if it had
    fired already). They must be quick and must not raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._stops: dict[int, Callable[[], None]] = {}
        self._ids = iter(range(1 << 62))
        self.cut = False  # a backend stopped generating the answer part-way
        self.estimated = False  # ... and could not count the tokens it had generated

    @property
    def fired(self) -> bool:
        return self._fired

    def fire(self) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
            stops = list(self._stops.values())
        for stop in stops:
            _run(stop)

    def on_fire(self, stop: Callable[[], None]) -> Callable[[], None]:
        """Call `stop` when the client hangs up; returns a function that forgets it (call it
        when the work is done, so that a late hang-up stops nothing else)."""
        with self._lock:
            if not self._fired:
                ident = next(self._ids)
                self._stops[ident] = stop
                return lambda: self._forget(ident)
        _run(stop)
        return lambda: None

    def cut_short(self, *, estimated: bool = False) -> None:
        """A backend stopped the answer part-way for this hang-up."""
        self.cut = True
        self.estimated = self.estimated or estimated

    def _forget(self, ident: int) -> None:
        with self._lock:
            self._stops.pop(ident, None)


def _run(stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception:  # stopping is best effort: the request ends either way
        log.exception("stopping work for a client that hung up failed")


_CURRENT: ContextVar[Hangup | None] = ContextVar("router_hangup", default=None)


@contextmanager
def watching(hangup: Hangup | None) -> Iterator[None]:
    """Backend calls inside this block serve a client that may hang up through `hangup`."""
    token = _CURRENT.set(hangup)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Hangup | None:
    """The hang-up of the request being served, if its client can hang up."""
    return _CURRENT.get()
