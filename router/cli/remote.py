"""`router chat` through a running `router serve`, as Ollama's CLI talks to its server.

A one-shot `router chat` in its own process pays for what a server has already done: the
local model's load, LiteLLM's import (seconds), the estimator's. When a router answers at the
address the CLI is pointed to (`--url` or `$ROUTER_URL`), or at the `[server]` address of the
same models.toml (its /health says which file it runs), the CLI sends its request there: the
server's warm worker, cache and ledger serve it. `--in-process` keeps everything in the CLI.

`ServerRouter` is the part of `Router` the chat commands use (`stream`, `complete`,
`feedback`, `config`), over HTTP with the standard library (no client to import): answers in
OpenAI's chat format, the whole routing in the `x-router-routing` header or, for a stream, in
an SSE comment before `[DONE]` (router.wire.chat), errors with the exit status the same error
has in process (`x-router-exit-code`).
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from router.config import Config
from router.errors import RequestError, ServedError
from router.types import Completion, CompletionStream, Message, Routing
from router.wire.api import ROUTING_EVENT, ROUTING_HEADER

URL_ENV = "ROUTER_URL"
KEY_ENV = "ROUTER_API_KEY"  # a key for a server that requires them (off loopback)
PROBE_SECONDS = 0.05  # to connect to the config's own address: nobody there costs no more
ANSWER_SECONDS = 600.0  # between two reads of an answer (streams get a ping every 10 s)
UNREACHABLE = 3  # the exit status when the server cannot be reached (no model available)


def _address(url: str) -> tuple[str, int, str]:
    """host, port and path prefix of a server URL (`http://127.0.0.1:8000[/v1]`)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise RequestError(
            f"--url {url!r}: give the address of a router serve, http://HOST:PORT "
            "(https: put the router behind a proxy and use the proxy's client)"
        )
    prefix = parts.path.rstrip("/")
    prefix = prefix[: -len("/v1")] if prefix.endswith("/v1") else prefix
    return parts.hostname, parts.port or 80, prefix


def _health(host: str, port: int, prefix: str, timeout: float) -> dict[str, Any] | None:
    """The server's /health body, or None when nothing (or something else) answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", prefix + "/health")
        response = conn.getresponse()
        body = json.loads(response.read(65536))
        return body if isinstance(body, dict) and "status" in body else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def find_server(config: Config, url: str | None, in_process: bool) -> ServerRouter | None:
    """The running server `router chat` should use, or None to work in process.

    `url` (`--url`, `$ROUTER_URL`) must answer: the user asked for it. Otherwise the config's
    own `[server]` address is tried for PROBE_SECONDS, and used only when the router there runs
    this same models.toml."""
    if in_process:
        return None
    if url:
        host, port, prefix = _address(url)
        if _health(host, port, prefix, timeout=5.0) is None:
            raise ServedError(
                f"no router answers at {url}: start one ('router serve'), or leave out "
                f"--url and ${URL_ENV} to answer in this process",
                UNREACHABLE,
            )
        return ServerRouter(f"http://{host}:{port}{prefix}", config)
    host = config.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # a bind-all address
    body = _health(host, config.server.port, "", timeout=PROBE_SECONDS)
    if body is None or body.get("config") != config.fingerprint():
        return None
    return ServerRouter(f"http://{host}:{config.server.port}", config)


class ServerRouter:
    """The chat commands' `Router`, served by a running `router serve` at `url`."""

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config  # the CLI's own (the REPL's /model lists)
        self._host, self._port, self._prefix = _address(url)
        self._key = os.environ.get(KEY_ENV, "").strip()

    def __enter__(self) -> ServerRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass  # each request has its own connection, closed with it

    # ---------------------------------------------------------------- requests

    def _send(
        self, path: str, body: dict[str, Any], *, cache: bool = True
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = {"content-type": "application/json", ROUTING_HEADER: "1"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        if not cache:
            headers["cache-control"] = "no-cache"
        conn = http.client.HTTPConnection(self._host, self._port, timeout=ANSWER_SECONDS)
        try:
            conn.request("POST", self._prefix + path, json.dumps(body).encode(), headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ServedError(
                f"the router at {self.url} did not answer ({exc}); rerun with --in-process "
                "to answer without it",
                UNREACHABLE,
            ) from None
        if response.status >= 400:
            try:
                raise self._error(response)
            finally:
                conn.close()
        return conn, response

    def _error(self, response: http.client.HTTPResponse) -> ServedError:
        raw = response.read(1 << 20)
        try:
            message = str(json.loads(raw)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace")[:500] or response.reason
        status = response.getheader("x-router-exit-code", "")
        fallback = 3 if response.status >= 500 else 2
        return ServedError(message, int(status) if status.isdigit() else fallback)

    @staticmethod
    def _body(
        messages: list[Message], model: str, user: str | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        body.update({k: v for k, v in params.items() if v is not None})
        if user:
            body["user"] = user
        return body

    def complete(
        self,
        messages: list[Message],
        model: str = "auto",
        *,
        user: str | None = None,
        cache: bool = True,
        **params: Any,
    ) -> Completion:
        conn, response = self._send(
            "/v1/chat/completions", self._body(messages, model, user, params), cache=cache
        )
        try:
            answer = json.loads(response.read())
            routing = _routing(response.getheader(ROUTING_HEADER, ""), response)
        finally:
            conn.close()
        return Completion(answer, routing)

    def stream(
        self,
        messages: list[Message],
        model: str = "auto",
        *,
        user: str | None = None,
        cache: bool = True,
        **params: Any,
    ) -> CompletionStream:
        body = {**self._body(messages, model, user, params), "stream": True}
        conn, response = self._send("/v1/chat/completions", body, cache=cache)
        routing = _routing("", response)  # what the headers say; the rest at the end
        return CompletionStream(_events(conn, response, routing), routing)

    def feedback(self, response_id: str, rating: str, comment: str = "") -> None:
        body = {"id": response_id, "rating": rating, "comment": comment}
        conn, response = self._send("/v1/feedback", body)
        response.read()
        conn.close()


def _routing(header: str, response: http.client.HTTPResponse) -> Routing:
    """The routing the server sent (all of it, or what a stream's headers say)."""
    if header:
        return Routing(**json.loads(header))
    return Routing(
        tier=response.getheader("x-router-tier", "local"),  # type: ignore[arg-type]
        model=response.getheader("x-router-model", ""),
        score=float(response.getheader("x-router-score", "0") or 0),
        reason="",
        cache_hit=response.getheader("x-router-cache") == "hit",
        category=response.getheader("x-router-category", "other"),
    )


def _events(
    conn: http.client.HTTPConnection, response: http.client.HTTPResponse, routing: Routing
) -> Iterator[dict[str, Any]]:
    """A chat stream's chunks; the final routing goes into `routing` as it comes. Closing it
    early closes the connection, which stops the answer on the server."""
    try:
        for line in response:
            if line.startswith(ROUTING_EVENT):
                routing.__dict__.update(json.loads(line[len(ROUTING_EVENT) :]))
            elif line.startswith(b"data: "):
                data = line[6:].strip()
                if data == b"[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:  # the model failed after the answer had started
                    raise ServedError(str(event["error"].get("message", event["error"])), 3)
                yield event
    except (OSError, http.client.HTTPException) as exc:
        raise ServedError(f"the router at {conn.host}:{conn.port} broke off: {exc}", 3) from None
    finally:
        conn.close()
