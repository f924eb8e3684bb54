"""A streamed answer on its way to the client, in any API's events (router.wire.api.Writer).

The chunks are pulled from the engine by a thread of their own and handed over one at a time;
while none comes for PING_SECONDS the client gets the API's keep-alive (Anthropic's `ping`, an
SSE comment), so proxies and clients with read timeouts do not hang up on a long think. When the
client goes, the puller stops at its next chunk and closes the stream there, which stops the
generation (a local model frees itself for the next request) and writes the ledger's row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from router.backends.hangup import Hangup
from router.errors import RouterError
from router.types import CompletionStream
from router.wire.api import Writer
from router.wire.http import HTTPError

log = logging.getLogger("router.server")
PING_SECONDS = 10.0
_END = object()


async def relay(
    stream: CompletionStream,
    writer: Writer,
    hangup: Hangup,
    failure: Callable[[RouterError], HTTPError],
    crashed: Callable[[], HTTPError],
    done: Callable[[int], None],
    ping_seconds: float = PING_SECONDS,
) -> AsyncIterator[bytes]:
    """The stream's bytes; `done(status)` once it has ended, however it ended (499: the
    client hung up)."""
    send, receive = anyio.create_memory_object_stream[Any](0)
    stop = threading.Event()
    token = anyio.lowlevel.current_token()

    def pull() -> None:
        """In its own thread: every chunk to the event loop, then _END or the error; closes
        the stream here (never while another thread is inside it)."""
        try:
            for chunk in stream:
                if stop.is_set():
                    break
                anyio.from_thread.run(send.send, chunk, token=token)
                if stop.is_set():
                    break
            else:
                anyio.from_thread.run(send.send, _END, token=token)
        except Exception as exc:  # the model failed mid-answer (or a bug): the client is told
            if not stop.is_set():
                anyio.from_thread.run(send.send, exc, token=token)
        finally:
            try:
                stream.close()
            except Exception:
                log.exception("closing a stream failed")

    status = 200
    ended = False
    threading.Thread(target=pull, name="router-stream", daemon=True).start()
    try:
        yield writer.start()
        while True:
            item: Any = None
            with anyio.move_on_after(ping_seconds) as waited:
                item = await receive.receive()
            if waited.cancelled_caught:
                if ping := writer.ping():
                    yield ping
                continue
            if item is _END:
                ended = True
                yield writer.end(stream.routing)
                return
            if isinstance(item, RouterError):  # the model failed after the answer had started
                ended = True
                err = failure(item)
                status = err.status
                yield writer.fail(err)
                return
            if isinstance(item, Exception):  # a bug: a proper end, the details in the log
                ended = True
                status = 500
                log.error("a stream failed", exc_info=item)
                yield writer.fail(crashed())
                return
            if data := writer.chunk(item):
                yield data
    finally:
        if not ended:  # the client hung up: the puller stops at its next chunk and closes
            hangup.fire()
            status = 499
        stop.set()
        receive.close()
        done(status)
