"""Rate limits on Redis: one window for every replica, so rpm = 10 is 10 in total.

The rules are router.governance.limits'. Per window two keys: `hits`, a sorted set of the
admitted requests (score: Redis's own clock, so replicas' clocks do not matter), and
`tokens`, a hash of second -> tokens of the answers that ended in it. One Lua script prunes,
checks every window of a request and, only when all admit it, counts it in each: atomic, so
replicas can never both take the last request of a window. Keys expire a minute after their
last write.

While Redis is down, requests are counted in this process (MemoryLimits): the limits hold
per replica until Redis answers again, never not at all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from router.config import Config, RateLimit
from router.config.sections import WINDOW_SECONDS
from router.errors import RateLimitedError, UnavailableError
from router.governance.limits import REREAD_SECONDS, MemoryLimits, Rules, Window, rule_key
from router.shared import Link, errors

log = logging.getLogger("router.shared")

# KEYS: hits and tokens of each window. ARGV: window seconds, a unique member, then each
# window's rpm and tpm (0: none). Returns {0}, or {window index, kind, used, seconds to wait}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local span = tonumber(ARGV[1])
local n = #KEYS / 2
for i = 1, n do
  local rpm = tonumber(ARGV[1 + 2 * i])
  local tpm = tonumber(ARGV[2 + 2 * i])
  local hits, tokens = KEYS[2 * i - 1], KEYS[2 * i]
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', hits, '-inf', now - span)
    local count = redis.call('ZCARD', hits)
    if count >= rpm then
      local oldest = redis.call('ZRANGE', hits, count - rpm, count - rpm, 'WITHSCORES')
      return {i, 'rpm', count, tostring(tonumber(oldest[2]) + span - now)}
    end
  end
  if tpm > 0 then
    local all = redis.call('HGETALL', tokens)
    local sum, kept = 0, {}
    for j = 1, #all, 2 do
      local second = tonumber(all[j])
      if second + 1 <= now - span then
        redis.call('HDEL', tokens, all[j])
      else
        sum = sum + tonumber(all[j + 1])
        table.insert(kept, {second, tonumber(all[j + 1])})
      end
    end
    if sum >= tpm then
      table.sort(kept, function(a, b) return a[1] < b[1] end)
      local left, wait = sum, span
      for _, b in ipairs(kept) do
        left = left - b[2]
        if left < tpm then
          wait = b[1] + 1 + span - now
          break
        end
      end
      return {i, 'tpm', sum, tostring(wait)}
    end
  end
end
for i = 1, n do
  if tonumber(ARGV[1 + 2 * i]) > 0 then
    redis.call('ZADD', KEYS[2 * i - 1], now, ARGV[2])
    redis.call('EXPIRE', KEYS[2 * i - 1], span + 5)
  end
end
return {0}
"""


class RedisLimits:
    def __init__(self, link: Link) -> None:
        self._link = link
        self._script: Any = link.client.register_script(ADMIT)
        self._async: tuple[Any, Any] | None = None  # (redis.asyncio client, its script)
        self._local = MemoryLimits()  # while Redis is down
        self._writes: queue.SimpleQueue[tuple[list[Window], int]] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def _keys(self, w: Window) -> tuple[str, str]:
        return self._link.key("limits", w.key, "hits"), self._link.key("limits", w.key, "tokens")

    def _asked(self, counted: list[Window]) -> tuple[list[str], list[Any]]:
        """The script's KEYS and ARGV for `counted`."""
        keys = [k for w in counted for k in self._keys(w)]
        args: list[Any] = [WINDOW_SECONDS, uuid.uuid4().hex]
        return keys, args + [v for w in counted for v in (w.rpm or 0, w.tpm or 0)]

    def admit(self, counted: list[Window]) -> None:
        if not counted:
            return
        keys, args = self._asked(counted)
        try:
            out = self._script(keys=keys, args=args)
        except errors() as exc:
            self._down(exc)
            self._local.admit(counted)
            return
        self._link.ok()
        self._decided(counted, out)

    async def aadmit(self, counted: list[Window]) -> None:
        """`admit` on the event loop's lean connection (router.shared.resp; redis.asyncio for
        a URL it does not speak): one round trip, no thread."""
        if not counted:
            return
        keys, args = self._asked(counted)
        try:
            lean = self._link.lean_client()
            if lean is not None:  # Redis keeps the compiled script: EVAL costs its bytes only
                out = (await lean.call(("EVAL", ADMIT, len(keys), *keys, *args)))[0]
            else:
                client = self._link.async_client()
                if self._async is None or self._async[0] is not client:
                    self._async = (client, client.register_script(ADMIT))
                out = await self._async[1](keys=keys, args=args)
        except errors() as exc:
            self._down(exc)
            self._local.admit(counted)
            return
        self._link.ok()
        self._decided(counted, out)

    @staticmethod
    def _decided(counted: list[Window], out: Any) -> None:
        if int(out[0]) == 0:
            return
        text = [x.decode() if isinstance(x, bytes) else x for x in out]  # the lean client's
        w, kind = counted[int(text[0]) - 1], str(text[1])
        limit = (w.rpm if kind == "rpm" else w.tpm) or 0
        raise RateLimitedError(w.scope, kind, limit, int(text[2]), float(text[3]))

    def used(self, counted: list[Window], tokens: int) -> None:
        """Queue an answer's tokens for the writer thread: the request never waits for it."""
        if tokens <= 0 or not any(w.tpm is not None for w in counted):
            return
        self._writes.put((counted, tokens))
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write, name="router-limits", daemon=True)
            self._writer.start()

    def _write(self) -> None:
        while True:
            try:
                counted, tokens = self._writes.get(timeout=30)
            except queue.Empty:
                return  # idle: the next `used` starts another
            self._add(counted, tokens)

    def _add(self, counted: list[Window], tokens: int) -> None:
        timed = [w for w in counted if w.tpm is not None]
        second = str(int(time.time()))
        try:
            pipe = self._link.client.pipeline(transaction=False)
            for w in timed:
                key = self._keys(w)[1]
                pipe.hincrby(key, second, tokens)
                pipe.expire(key, WINDOW_SECONDS + 5)
            pipe.execute()
        except errors() as exc:
            self._down(exc)
            self._local.used(counted, tokens)
            return
        self._link.ok()

    def _down(self, exc: BaseException) -> None:
        self._link.failed(exc)
        log.warning("rate limits: Redis cannot be reached (%s); counting in this process", exc)


class RedisRules(Rules):
    """The rules set at run time, one hash for every replica (rule key -> the rule's JSON)."""

    def __init__(self, link: Link, config: Config) -> None:
        super().__init__(config)
        self._link = link
        self._key = link.key("limits", "rules")

    def stored(self) -> dict[str, RateLimit]:
        try:
            found = self._link.client.hgetall(self._key)
        except errors() as exc:
            raise self._down(exc) from None
        return {str(k): RateLimit.model_validate_json(v) for k, v in found.items()}

    def set(self, rule: RateLimit) -> None:
        try:
            self._link.client.hset(
                self._key, rule_key(rule), rule.model_dump_json(exclude_none=True)
            )
        except errors() as exc:
            raise self._down(exc) from None
        self._read_at = -REREAD_SECONDS

    def remove(self, key: str) -> bool:
        try:
            removed = int(self._link.client.hdel(self._key, key))
        except errors() as exc:
            raise self._down(exc) from None
        self._read_at = -REREAD_SECONDS
        return removed > 0

    def _down(self, exc: BaseException) -> UnavailableError:
        self._link.failed(exc)
        return UnavailableError(
            f"the rate limits set at run time (Redis at {self._link.safe_url}) cannot be "
            f"reached: {exc}",
            retry_after=5,
        )
