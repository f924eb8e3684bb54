"""A lean Redis connection for the server's event loop: a cache hit's one round trip.

redis.asyncio spends about 60 µs of Python on each pipeline (packing, its connection pool,
retries, RESP3 parsing), a tenth of a cache hit; the hit's GET and ZCOUNT need none of it. This
is one connection per event loop, shared by the requests on it: what concurrent requests send
is written as it comes (pipelined), and the replies, which Redis sends in order, go back to
the requests in order. Any failure (a refused connection, a timeout, an error reply to the
handshake) closes the connection and fails every call waiting on it; the next call connects
again. It speaks to `redis://` URLs (user, password and database number included); for others
(`rediss://`, `unix://`) the router keeps redis.asyncio (router.shared.Link).
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

Command = Sequence[str | bytes | int | float]


class ReplyError(Exception):
    """Redis answered a command with an error (`-ERR ...`, `-NOAUTH ...`)."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def pack(commands: Sequence[Command]) -> bytes:
    """`commands` in RESP, one after the other (a pipeline)."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)


def parse(buffer: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """The reply that starts at `pos` and where the next one starts; _Incomplete when the
    buffer ends first. Errors are returned (ReplyError), not raised: the others still count."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[pos], bytes(buffer[pos + 1 : end])
    if kind == 36:  # $ bulk string (-1: nil)
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buffer) < end + 4 + size:
            raise _Incomplete
        return bytes(buffer[end + 2 : end + 2 + size]), end + 4 + size
    if kind == 58:  # : integer
        return int(line), end + 2
    if kind == 43:  # + simple string
        return line.decode(), end + 2
    if kind == 45:  # - error
        return ReplyError(line.decode(errors="replace")), end + 2
    if kind == 42:  # * array (-1: nil)
        count, pos = int(line), end + 2
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            items.append(item)
        return items, pos
    raise ConnectionError(f"Redis sent something that is not RESP ({bytes([kind])!r})")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        # Each call waiting: its future, how many replies it wants, those already in.
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiting:
                reply, pos = parse(self.buffer, pos)
                future, wanted, replies = self.waiting[0]
                replies.append(reply)
                if len(replies) == wanted:
                    self.waiting.popleft()
                    if not future.done():
                        future.set_result(replies)
        except _Incomplete:
            pass
        except (ValueError, ConnectionError) as exc:  # not RESP: nothing after it can be read
            self.fail(ConnectionError(f"Redis's reply could not be read: {exc}"))
            return
        del self.buffer[:pos]

    def fail(self, exc: BaseException) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))


class LoopRedis:
    """One pipelined connection to the Redis at `url` for the running event loop; `call`
    sends commands and returns their replies (bulk strings as bytes, nil as None)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"LoopRedis speaks redis:// only, not {parts.scheme}://")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.timeout = timeout
        self._hello: list[Command] = []
        if parts.password is not None or parts.username:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            self._hello.append(("AUTH", user, password) if user else ("AUTH", password))
        db = parts.path.strip("/") or urllib.parse.parse_qs(parts.query).get("db", ["0"])[0]
        if db not in ("", "0"):
            self._hello.append(("SELECT", int(db)))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def speaks(cls, url: str) -> bool:
        return url.startswith("redis://")

    async def call(self, *commands: Command) -> list[Any]:
        """The replies to `commands`, sent in one write; OSError (ConnectionError,
        TimeoutError) when Redis cannot be reached in time or sends an error."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect(deadline)
        replies = await self._send(protocol, commands, deadline)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise ConnectionError(f"Redis refused a command: {reply}")
        return replies

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.lost

    def send_nowait(
        self, commands: Sequence[Command], failed: Callable[[BaseException], None]
    ) -> bool:
        """Send `commands` on the open connection without waiting for the replies: `failed`
        hears of a failure (an error reply, a timeout, the connection lost). False, and
        nothing sent, when no connection is open (it needs a wait: use `call`)."""
        protocol = self._protocol
        if protocol is None or protocol.lost or protocol.transport is None:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiting.append((future, len(commands), []))
        protocol.transport.write(pack(commands))
        timer = loop.call_at(loop.time() + self.timeout, _expire, protocol, future)

        def settled(done: asyncio.Future[list[Any]]) -> None:
            timer.cancel()
            if done.cancelled():
                return
            exc = done.exception()
            if exc is None:
                refused = [r for r in done.result() if isinstance(r, ReplyError)]
                exc = ConnectionError(f"Redis refused a command: {refused[0]}") if refused else None
            if exc is not None:
                failed(exc)

        future.add_done_callback(settled)
        return True

    async def _send(
        self, protocol: _Protocol, commands: Sequence[Command], deadline: float
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiting.append((future, len(commands), []))
        assert protocol.transport is not None
        protocol.transport.write(pack(commands))
        timer = loop.call_at(deadline, _expire, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _connect(self, deadline: float) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection, however many calls find none
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port),
                    max(0.0, deadline - loop.time()),
                )
            except asyncio.TimeoutError:
                raise TimeoutError(f"Redis at {self.host}:{self.port} did not answer") from None
            if self._hello:
                for reply in await self._send(protocol, self._hello, deadline):
                    if isinstance(reply, ReplyError):
                        protocol.fail(ConnectionError(str(reply)))
                        raise ConnectionError(f"Redis refused the connection: {reply}")
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("closed"))
            self._protocol = None


def _expire(protocol: _Protocol, future: asyncio.Future[list[Any]]) -> None:
    """A call past its deadline: the connection is closed (a reply still to come would answer
    the wrong call), failing every call on it."""
    if not future.done():
        protocol.fail(TimeoutError("Redis did not answer in time"))
