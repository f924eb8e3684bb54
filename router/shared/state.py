"""The repeat detector on Redis.

Repeats: a sorted set of answer times per (user, request key), trimmed to the window; the
count is shared, so a retry storm spread over replicas is still one storm. While Redis is down
the replica counts in process (`RepeatDetector`), as a single router does.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from router.governance.waste import RepeatDetector
from router.shared import Link, errors


class RedisRepeatDetector(RepeatDetector):
    def __init__(self, link: Link, window_seconds: float, threshold: int) -> None:
        super().__init__(window_seconds, threshold)  # the in-process fallback
        self._link = link
        self._pending: list[tuple[str | None, str, float]] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None

    def _key(self, user: str | None, key: str) -> str:
        return self._link.key("repeat", user or "", key)

    def repeated(self, user: str | None, key: str, now: float | None = None) -> bool:
        if self.window <= 0:
            return False
        now = time.time() if now is None else now
        try:  # one command; the writer trims what the window left behind
            count = int(self.count(self._link.client, user, key, now))
        except errors() as exc:
            self._link.failed(exc)
            return super().repeated(user, key)
        self._link.ok()
        return self.reached(count)

    def count(self, client: Any, user: str | None, key: str, now: float) -> Any:
        """The answers to (user, key) in the window, asked of `client` (Redis, or a pipeline
        that the response cache reads with: router.shared.cache)."""
        return client.zcount(*self.count_command(user, key, now)[1:])

    def count_command(self, user: str | None, key: str, now: float) -> tuple[str, str, float, str]:
        """`count` as a Redis command (router.shared.resp)."""
        return ("ZCOUNT", self._key(user, key), now - self.window, "+inf")

    def answered(self, user: str | None, key: str, now: float | None = None) -> None:
        """Count an answer, off the request's path: on the server's loop (a cache hit), sent
        on its lean connection once the answer is written; elsewhere, by a background thread
        in batches (one round trip for many answers); counted in process if Redis fails."""
        if self.window <= 0:
            return
        at = time.time() if now is None else now
        lean = self._link.lean_here()  # on the server's loop (a cache hit): no thread, no wait
        if lean is not None:  # after the answer is written (the loop's next turn)
            asyncio.get_running_loop().call_soon(self._send_count, lean, user, key, at)
            return
        with self._pending_lock:
            self._pending.append((user, key, at))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="repeats", daemon=True)
                self._writer.start()
        self._wake.set()

    def _write(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                pipe = self._link.client.pipeline(transaction=False)
                for user, key, at in batch:
                    for command in self._writes(user, key, at):
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                pipe.execute()
            except errors() as exc:
                self._link.failed(exc)
                for user, key, _ in batch:
                    super().answered(user, key)
                continue
            self._link.ok()

    def _send_count(self, lean: Any, user: str | None, key: str, at: float) -> None:
        if not lean.send_nowait(self._writes(user, key, at), self._lost(user, key)):
            self._lost(user, key)(ConnectionError("Redis closed the connection"))

    def _writes(self, user: str | None, key: str, at: float) -> list[tuple[Any, ...]]:
        """An answer's count: its time added to the set, what the window left behind
        trimmed, the set kept a little longer than the window."""
        name = self._key(user, key)
        return [
            ("ZADD", name, at, uuid.uuid4().hex),
            ("ZREMRANGEBYSCORE", name, "-inf", at - self.window),
            ("EXPIRE", name, max(1, int(self.window) + 1)),
        ]

    def _lost(self, user: str | None, key: str) -> Callable[[BaseException], None]:
        def lost(exc: BaseException) -> None:  # counted in process, as the thread does
            self._link.failed(exc)
            RepeatDetector.answered(self, user, key)

        return lost

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until the answers counted so far are written (tests)."""
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with self._pending_lock:
                if not self._pending:
                    break
            time.sleep(0.005)
        time.sleep(0.01)  # the batch in flight
