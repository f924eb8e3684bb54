"""When a failed local worker may start again: the supervisor's restart policy, pure.

Ollama and systemd do the same: restart at once after a single failure, back off when failures
repeat, and stop trying for a while when a process keeps dying (a model that crashes on every
load must not turn each request into a crash).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class RestartPolicy:
    """When a failed worker may start again. Pure: the caller passes the clock's time.

    After one failure within `window` seconds: at once. After more: 1 s later, doubling up to
    8 s (the next request waits for it). After `limit`: not for `cooldown` seconds (the model is
    unusable meanwhile); then one try, and a failure before a successful generation disables
    it again at once.
    """

    window: float = 60.0
    limit: int = 3
    cooldown: float = 300.0

    def __post_init__(self) -> None:
        self.recent: deque[tuple[float, str]] = deque()
        self.total = 0
        self.not_before = 0.0
        self.tripped = False

    def failed(self, now: float, what: str) -> None:
        while self.recent and now - self.recent[0][0] > self.window:
            self.recent.popleft()
        self.recent.append((now, what))
        self.total += 1
        n = len(self.recent)
        if self.tripped or n >= self.limit:
            self.tripped = True
            self.not_before = now + self.cooldown
        else:
            self.not_before = now + (0.0 if n == 1 else min(2.0 ** (n - 2), 8.0))

    def succeeded(self) -> None:
        self.tripped = False

    def wait(self, now: float) -> float:
        """Seconds before a new worker may start (0: now)."""
        return max(0.0, self.not_before - now)

    def unusable(self, now: float, *, detail: bool = True) -> str | None:
        """Why the model is disabled now, or None; `detail`: with the last failure."""
        if not self.tripped or now >= self.not_before:
            return None
        last = self.recent[-1][1] if self.recent else "unknown"
        return (
            f"disabled after {len(self.recent)} worker failures in {self.window:.0f} s"
            + (f" (last: {last})" if detail else "")
            + f"; next try in {self.not_before - now:.0f} s"
        )

    @property
    def last(self) -> str | None:
        return self.recent[-1][1] if self.recent else None
