"""The response cache on Redis: one string key per entry (JSON), with the cache's TTL.

Its size is bounded by Redis itself: give the cache's Redis `maxmemory` and an eviction policy
(`allkeys-lru` for a Redis that holds only the cache; `volatile-lru` when it is shared with the
budgets, whose keys must not be evicted: every cache entry has a TTL unless ttl_seconds = 0).
While Redis is down, `get` misses and `set` does nothing: answers come from the models.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from router.governance.waste import RepeatDetector
from router.shared import Link, errors
from router.shared.state import RedisRepeatDetector


class RedisResponseCache:
    def __init__(self, link: Link, *, ttl_seconds: int) -> None:
        self._link = link
        self._ttl = ttl_seconds or None

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            text = self._link.client.get(self._link.key("cache", key))
        except errors() as exc:
            self._link.failed(exc)
            return None
        self._link.ok()
        return _entry(text)

    def get_counting(
        self, key: str, repeats: RepeatDetector, user: str | None
    ) -> tuple[dict[str, Any] | None, bool]:
        """The entry under `key`, and whether answering the request again repeats it
        (RepeatDetector.repeated): one round trip, the GET and the repeat count pipelined."""
        if not isinstance(repeats, RedisRepeatDetector) or repeats.window <= 0:
            return self.get(key), repeats.repeated(user, key)
        pipe = self._link.client.pipeline(transaction=False)
        pipe.get(self._link.key("cache", key))
        repeats.count(pipe, user, key, time.time())
        try:
            text, count = pipe.execute()
        except errors() as exc:
            self._link.failed(exc)
            return None, RepeatDetector.repeated(repeats, user, key)  # counted in process
        self._link.ok()
        return _entry(text), repeats.reached(int(count))

    async def aget_counting(
        self, key: str, repeats: RepeatDetector, user: str | None
    ) -> tuple[dict[str, Any] | None, bool]:
        """`get_counting` on the event loop: the same one round trip, on the loop's lean
        connection (router.shared.resp; redis.asyncio for URLs it does not speak), and the
        loop serves other requests while Redis answers (or times out)."""
        counting = isinstance(repeats, RedisRepeatDetector) and repeats.window > 0
        lean = self._link.lean_client()
        try:
            if lean is not None:
                commands: list[tuple[Any, ...]] = [("GET", self._link.key("cache", key))]
                if counting:
                    commands.append(repeats.count_command(user, key, time.time()))  # type: ignore[attr-defined]
                found = await lean.call(*commands)
            else:
                pipe = self._link.async_client().pipeline(transaction=False)
                pipe.get(self._link.key("cache", key))
                if counting:
                    repeats.count(pipe, user, key, time.time())  # type: ignore[attr-defined]
                found = await pipe.execute()
        except errors() as exc:
            self._link.failed(exc)
            return None, RepeatDetector.repeated(repeats, user, key)  # counted in process
        self._link.ok()
        repeated = repeats.reached(int(found[1])) if counting else repeats.repeated(user, key)
        return _entry(found[0]), repeated

    def set(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        try:
            self._link.client.set(self._link.key("cache", key), text, ex=self._ttl)
        except errors() as exc:
            self._link.failed(exc)
            return
        self._link.ok()

    def close(self) -> None:
        pass  # the link belongs to the router


def _entry(text: Any) -> dict[str, Any] | None:
    """A cache entry from its stored JSON, text or bytes (None: nothing, or not an entry)."""
    if not isinstance(text, str | bytes):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what json.dumps wrote and orjson refuses (NaN in an answer's logprobs)
            value = json.loads(text)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
