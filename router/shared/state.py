"""The repeat detector on Redis.

Repeats: a sorted set of answer times per (user, request key), trimmed to the window; the
count is shared, so a retry storm spread over replicas is still one storm. While Redis is down
the replica counts in process (`RepeatDetector`), as a single router does.
"""

from __future__ import annotations

import time
import uuid

from router.governance.waste import RepeatDetector
from router.shared import Link, errors


class RedisRepeatDetector(RepeatDetector):
    def __init__(self, link: Link, window_seconds: float, threshold: int) -> None:
        super().__init__(window_seconds, threshold)  # the in-process fallback
        self._link = link

    def _key(self, user: str | None, key: str) -> str:
        return self._link.key("repeat", user or "", key)

    def repeated(self, user: str | None, key: str, now: float | None = None) -> bool:
        if self.window <= 0:
            return False
        now = time.time() if now is None else now
        name = self._key(user, key)
        try:
            pipe = self._link.client.pipeline(transaction=False)
            pipe.zremrangebyscore(name, "-inf", now - self.window)
            pipe.zcard(name)
            count = int(pipe.execute()[1])
        except errors() as exc:
            self._link.failed(exc)
            return super().repeated(user, key)
        self._link.ok()
        return count + 1 >= self.threshold

    def answered(self, user: str | None, key: str, now: float | None = None) -> None:
        if self.window <= 0:
            return
        now = time.time() if now is None else now
        name = self._key(user, key)
        try:
            pipe = self._link.client.pipeline(transaction=False)
            pipe.zadd(name, {uuid.uuid4().hex: now})
            pipe.zremrangebyscore(name, "-inf", now - self.window)
            pipe.expire(name, max(1, int(self.window) + 1))
            pipe.execute()
        except errors() as exc:
            self._link.failed(exc)
            super().answered(user, key)
            return
        self._link.ok()
