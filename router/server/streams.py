"""A streamed answer on its way to the client, in any API's events (router.wire.api.Writer).

One thread of its own starts the stream (`open_stream`: the engine's decision, the model's
first chunk, a fallback) and then pulls every chunk into a Feed, which hands them to the event
loop without waiting for it: the loop renders whatever has arrived in one write, and at most
FEED_DEPTH chunks wait unread (the puller waits beyond that). While none comes for
PING_SECONDS the client gets the API's keep-alive (Anthropic's `ping`, an SSE comment), so
proxies and clients with read timeouts do not hang up on a long think. When the client goes,
the puller stops at its next chunk and closes the stream there, which stops the generation (a
local model frees itself for the next request) and writes the ledger's row.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from router.backends.hangup import Hangup
from router.errors import RouterError
from router.types import CompletionStream
from router.wire.api import Writer
from router.wire.http import HTTPError

log = logging.getLogger("router.server")
PING_SECONDS = 10.0
FEED_DEPTH = 64
FLUSH_WAIT = 1.0
_END = object()


class _Started:
    def __init__(self, stream: CompletionStream) -> None:
        self.stream = stream


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Feed:
    """Items from one thread to the event loop, the thread never waiting on the loop for each
    (at most `depth` unread); `close()` (the reader is gone) makes `put` say False."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = FEED_DEPTH) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._credits = threading.Semaphore(depth)
        self._closed = threading.Event()
        self.flushed = threading.Event()  # the first bytes have gone to the client

    def put(self, item: Any) -> bool:
        """In the thread: hand `item` over; False once the reader is gone (stop pulling)."""
        while not self._credits.acquire(timeout=1.0):
            if self._closed.is_set():
                return False
        if self._closed.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has closed (the server stopped)
            self._closed.set()
            return False
        return True

    async def get(self) -> Any:
        item = await self._queue.get()
        self._credits.release()
        return item

    def get_nowait(self) -> Any:
        """The next item if one has arrived, else None."""
        if self._queue.empty():
            return None
        item = self._queue.get_nowait()
        self._credits.release()
        return item

    def close(self) -> None:
        self._closed.set()
        self._credits.release()  # a puller waiting for room sees it at once

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


async def open_stream(
    start: Callable[[Hangup], CompletionStream], hangup: Hangup, gone: Callable[[], Any]
) -> tuple[CompletionStream, Feed]:
    """`start(hangup)` in a thread of its own, which then pulls the stream into the Feed;
    returns once the stream has started (or raises what `start` raised). Until then `gone()`
    is awaited beside it: when it returns (the client hung up), `hangup` fires."""
    feed = Feed(asyncio.get_running_loop())

    def pull() -> None:
        try:
            stream = start(hangup)
        except Exception as exc:
            feed.put(_Failed(exc))
            return
        if not feed.put(_Started(stream)):  # nobody waits for it: stop the generation
            stream.close()
            return
        try:
            for n, chunk in enumerate(stream):
                if not feed.put(chunk):
                    break
                if n == 0:  # the client's first token goes out before this thread takes the
                    feed.flushed.wait(FLUSH_WAIT)  # GIL for the rest (else ms of waiting)
            else:
                feed.put(_END)
        except Exception as exc:  # the model failed mid-answer (or a bug): the client is told
            feed.put(exc)
        finally:
            try:
                stream.close()  # here, never while another thread is inside it
            except Exception:
                log.exception("closing a stream failed")

    async def watch() -> None:
        await gone()
        hangup.fire()

    context = contextvars.copy_context()  # as anyio.to_thread would: the request's context
    threading.Thread(target=context.run, args=(pull,), name="router-stream", daemon=True).start()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            first = await feed.get()
            group.cancel_scope.cancel()
    except BaseException:
        feed.close()  # cancelled (the server stops): the puller closes the stream
        raise
    if isinstance(first, _Failed):
        raise first.exc
    return first.stream, feed


async def relay(
    stream: CompletionStream,
    feed: Feed,
    writer: Writer,
    hangup: Hangup,
    failure: Callable[[RouterError], HTTPError],
    crashed: Callable[[], HTTPError],
    done: Callable[[int], None],
    ping_seconds: float = PING_SECONDS,
) -> AsyncIterator[bytes]:
    """The stream's bytes, what has arrived rendered in one piece; `done(status)` once it has
    ended, however it ended (499: the client hung up)."""
    status = 200
    ended = False
    try:
        out = [writer.start()]
        while not ended:
            item = feed.get_nowait()
            if item is None:
                if out:
                    yield b"".join(out)
                    out.clear()
                    feed.flushed.set()
                with anyio.move_on_after(ping_seconds) as waited:
                    item = await feed.get()
                if waited.cancelled_caught:
                    if ping := writer.ping():
                        yield ping
                    continue
            if item is _END:
                ended = True
                out.append(writer.end(stream.routing))
            elif isinstance(item, RouterError):  # the model failed after the answer started
                ended = True
                err = failure(item)
                status = err.status
                out.append(writer.fail(err))
            elif isinstance(item, Exception):  # a bug: a proper end, the details in the log
                ended = True
                status = 500
                log.error("a stream failed", exc_info=item)
                out.append(writer.fail(crashed()))
            elif data := writer.chunk(item):
                out.append(data)
        yield b"".join(out)
    finally:
        if not ended:  # the client hung up: the puller stops at its next chunk and closes
            hangup.fire()
            status = 499
        feed.close()
        feed.flushed.set()
        done(status)
