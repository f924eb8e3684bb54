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
import functools
import logging
import queue
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
    PULLERS.run(functools.partial(context.run, pull))
    # A bare task, not an anyio task group: a group costs the loop ~60 µs more, while the
    # puller wants the GIL for the stream's start (time to the first token).
    watcher = asyncio.ensure_future(watch())
    watcher.add_done_callback(_retrieved)
    try:
        first = await feed.get()
    except BaseException:
        feed.close()  # cancelled (the server stops): the puller closes the stream
        raise
    finally:
        watcher.cancel()
    if isinstance(first, _Failed):
        raise first.exc
    return first.stream, feed


def _retrieved(task: asyncio.Task[None]) -> None:
    """A watcher's end: cancelled (the stream started), done (the client hung up) or failed
    (logged: the stream goes on, as it would once started)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("watching a stream's client failed", exc_info=exc)


class Pullers:
    """The threads that start and pull streams, kept when a stream ends: the next stream's
    thread is woken with its job (~70 µs here) instead of started (~220 µs), on its way to
    the first token. A new one is started only when none is idle; one idle for `idle_seconds`
    ends. Daemon threads, as before: a generation under way never holds the process up."""

    def __init__(self, idle_seconds: float = 60.0) -> None:
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._idle_seconds = idle_seconds

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None  # the latest idle: still warm
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="router-stream", daemon=True
            ).start()
        inbox.put(job)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        job: Callable[[], None] | None = inbox.get()
        while job is not None:
            try:
                job()
            except BaseException:  # pull() catches what streams raise: this is a bug
                log.exception("a stream's thread failed")
            job = None  # (the stream and its request freed now, not at the next job)
            with self._lock:
                self._idle.append(inbox)
            job = self._next(inbox)

    def _next(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> Callable[[], None] | None:
        """The next job handed to this idle thread; None once it has idled long enough."""
        while True:
            try:
                return inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return None
                # `run` took this inbox just now: its job is on the way


PULLERS = Pullers()


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
