"""How `router serve` holds connections: uvicorn, with the limits a server on a network needs.

- A connection must send its request's headers within `header_timeout_seconds` (10) of
  opening, or of its last answer when kept alive: one that sends half its headers, or
  nothing, is closed (a slowloris holds no connection for long). uvicorn closes idle kept-alive
  connections itself, but only until the first byte of a next request.
- A body must arrive within `body_timeout_seconds` (the app answers 408: router.server.app).
- At most `max_connections` connections and requests at once; past that, uvicorn answers 503.
- The access log (on unless `access_log = false`) never shows a key: query parameters named
  like a key or token, and anything shaped like a router key, are written as `***`. It is the
  app's (AccessLog), not uvicorn's: uvicorn's went through the logging module, a fifth of a
  cache hit's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import urllib.parse
from typing import Any

import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.config.sections import ServerSettings
from router.wire.http import HTTPError

log = logging.getLogger("router.server")


class HeaderDeadline:
    """A deadline for each request's headers: armed when a connection opens and after each
    answer, disarmed when the headers are in; a connection past it is closed."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    header_timeout = 10.0  # set per server by `server_config`
    _header_deadline: asyncio.TimerHandle | None = None

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


_HTTP2_MESSAGE = (
    "HTTP/2 is not served here: speak HTTP/1.1 (curl --http1.1; an HTTP/2 client falls back "
    "by itself over TLS, not with prior knowledge)"
)
_HTTP2_BODY = json.dumps(
    HTTPError(505, _HTTP2_MESSAGE, code="http_version_not_supported").body()
).encode()
HTTP2_REFUSED = (
    b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HTTP2_BODY), _HTTP2_BODY)
)

UNDER_WAY = "router.under_way"  # the scope's key for the server's requests under way
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~-]*\Z")  # what quote() leaves as it is
_SECRET_PARAM = re.compile(r"(?i)([?&][^=&\s]*(?:key|token|secret|password)[^=&\s]*=)[^&\s\"]*")
_ROUTER_KEY = re.compile(r"rk-[A-Za-z0-9_\-]+")


class GuardedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on llhttp (httptools), with a deadline for each request's
    headers: its C parser serves about a fifth more cache hits a second than h11's Python
    (scripts/bench_hot.py)."""

    def data_received(self, data: bytes) -> None:
        if self.cycle is None and data.startswith(b"PRI * HTTP/2.0"):
            # HTTP/2 with prior knowledge ("PRI * HTTP/2.0", then "SM"): one answer in HTTP/1.1
            # that says so (llhttp would answer a plain-text 400), and the connection closed.
            # Only here: a PRI anywhere else is refused by llhttp before it reaches the app.
            self.transport.write(HTTP2_REFUSED)
            self.transport.close()
            return
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()  # its body has its own limit
        # The server's requests under way (uvicorn's set of their tasks), for the app to see
        # whether this one has company (router.server.service: a hit's row committed alone).
        self.scope[UNDER_WAY] = self.tasks  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's headers, if the connection is kept
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class AccessLog:
    """One line per request on stdout, as uvicorn's access log wrote it (the client, the
    request line, the status) and the request's id, under which the server's log has the
    rest; keys written as ***. The lines of one turn of the event loop go out in one write."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def line(self, scope: Any, status: int, request_id: str) -> None:
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        target = scope.get("root_path", "") + scope["path"]
        if not _PLAIN_PATH.match(target):
            target = urllib.parse.quote(target)
        query = scope.get("query_string", b"")
        if query:
            target = f"{target}?{query.decode('ascii', 'replace')}"
        if "?" in target or "rk-" in target:
            target = redact(target)
        self._lines.append(
            f'INFO:     {address} - "{scope["method"]} {target} HTTP/{scope["http_version"]}" '
            f"{status} {request_id}\n"
        )
        if len(self._lines) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            try:
                sys.stdout.write("".join(lines))
                sys.stdout.flush()
            except (OSError, ValueError):  # stdout gone (a closed pipe): serve all the same
                pass


def redact(text: str) -> str:
    """`text` with every key in it written as ***."""
    return _ROUTER_KEY.sub("rk-***", _SECRET_PARAM.sub(r"\1***", text))


class Forwarded(ProxyHeadersMiddleware):
    """uvicorn's X-Forwarded-For and -Proto handling, for the hosts it trusts (its
    FORWARDED_ALLOW_IPS, 127.0.0.1 by default), with each client address's trust worked out
    once (uvicorn parsed the address on every request) and nothing copied for a request that
    carries neither header."""

    def __init__(self, app: Any, trusted_hosts: str) -> None:
        super().__init__(app, trusted_hosts)
        self._trust: dict[str | None, bool] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            client = scope.get("client")
            host = client[0] if client else None
            trusted = self._trust.get(host)
            if trusted is None:
                trusted = host in self.trusted_hosts
                if len(self._trust) < 4096:  # (addresses are many only behind no proxy)
                    self._trust[host] = trusted
            if trusted and any(name in _FORWARDED for name, _ in scope["headers"]):
                await super().__call__(scope, receive, send)
                return
        await self.app(scope, receive, send)


_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto")


def server_config(app: Any, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration `router serve` runs `app` with (tests run the same)."""

    class Protocol(GuardedHttpToolsProtocol):
        header_timeout = settings.header_timeout_seconds

    config = uvicorn.Config(
        Forwarded(app, os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")),
        proxy_headers=False,  # Forwarded does it
        http=Protocol,
        limit_concurrency=settings.max_connections,
        access_log=False,  # the app writes it (AccessLog)
        **options,
    )
    return config


def run(app: Any, settings: ServerSettings, sock: socket.socket, **options: Any) -> None:
    """Serve `app` on the listening socket `sock` until interrupted."""
    uvicorn.Server(server_config(app, settings, **options)).run(sockets=[sock])
