"""How `router serve` holds connections: uvicorn, with the limits a server on a network needs.

- A connection must send its request's headers within `header_timeout_seconds` (10) of
  opening, or of its last answer when kept alive: one that sends half its headers, or
  nothing, is closed (a slowloris holds no connection for long). uvicorn closes idle kept-alive
  connections itself, but only until the first byte of a next request.
- A body must arrive within `body_timeout_seconds` (the app answers 408: router.server.app).
- At most `max_connections` connections and requests at once; past that, uvicorn answers 503.
- The access log (on unless `access_log = false`) never shows a key: query parameters named
  like a key or token, and anything shaped like a router key, are written as `***`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from router.config_sections import ServerSettings

log = logging.getLogger("router.server")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers."""

    header_timeout = 10.0  # set per server by `server_config`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers arrived: its body has its own limit
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's headers, if the connection is kept
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection that sent no complete request headers in time")
            self.transport.close()


_SECRET_PARAM = re.compile(r"(?i)([?&][^=&\s]*(?:key|token|secret|password)[^=&\s]*=)[^&\s\"]*")
_ROUTER_KEY = re.compile(r"rk-[A-Za-z0-9_\-]+")


def redact(text: str) -> str:
    """`text` with every key in it written as ***."""
    return _ROUTER_KEY.sub("rk-***", _SECRET_PARAM.sub(r"\1***", text))


class RedactKeys(logging.Filter):
    """A log filter: keys in a record's arguments (the access log's request line) become ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def server_config(app: Any, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration `router serve` runs `app` with (tests run the same)."""

    class Protocol(GuardedH11Protocol):
        header_timeout = settings.header_timeout_seconds

    config = uvicorn.Config(
        app,
        http=Protocol,
        limit_concurrency=settings.max_connections,
        access_log=settings.access_log,
        **options,
    )
    logging.getLogger("uvicorn.access").addFilter(_REDACT)
    return config


_REDACT = RedactKeys()


def run(app: Any, settings: ServerSettings, sock: socket.socket, **options: Any) -> None:
    """Serve `app` on the listening socket `sock` until interrupted."""
    uvicorn.Server(server_config(app, settings, **options)).run(sockets=[sock])
