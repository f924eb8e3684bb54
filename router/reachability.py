"""Whether a service the router depends on answered its last call: Redis, the ledger's
database or file, the response cache. A small record below every part that keeps one (the
ledger, the cache, the shared stores), so none of them imports another for it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("router.shared")


def safe_url(url: str) -> str:
    """A URL without its credentials."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class Reachability:
    """Whether a shared service answered its last call, since when not, and how often it
    failed; logs the moment it goes away and the moment it is back."""

    def __init__(self, what: str, url: str) -> None:
        self.what = what  # "Redis", "the ledger database"
        self.url = url
        self._lock = threading.Lock()
        self.up = True
        self.errors = 0
        self.last_error = ""
        self.down_since: float | None = None

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    def ok(self) -> None:
        if self.up:
            return
        with self._lock:
            if not self.up:
                log.warning("%s at %s answers again", self.what, self.safe_url)
                self.up, self.down_since = True, None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}".strip()[:300]
            if self.up:
                log.error("%s at %s failed: %s", self.what, self.safe_url, self.last_error)
                self.up, self.down_since = False, time.time()

    def state(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "down_since": self.down_since,
            "errors": self.errors,
            "last_error": self.last_error or None,
        }
