"""Browser safety for the HTTP endpoint: which web pages may call it, under which host names.

A router on 127.0.0.1 spends its owner's cloud budget for anyone who can reach it, and any web
page the owner visits can reach it:

- A page can POST cross-origin without asking first when the request is "simple" (for example
  `Content-Type: text/plain`): the browser sends it and only hides the answer. So a request
  whose `Origin` is not allowed is refused before it runs, and a POST must say
  `Content-Type: application/json` (which no simple request can). Ollama's API (/api/*) also
  takes a body without it from a program (no `Origin`, no `Sec-Fetch-Site`), as Ollama does:
  its own curl examples send none.
- A GET carries no `Origin`, so a page can make the router do work with `<img src=...>`: a
  request that the browser marks as another site's and not CORS (`Sec-Fetch-Site`,
  `Sec-Fetch-Mode`) is refused, except a navigation to the dashboard's page.
- DNS rebinding points a name the attacker controls at 127.0.0.1, making the page same-origin
  with the router so that it can also read the answers. On loopback, only loopback host names
  are answered (`localhost`, `*.localhost`, 127.0.0.1, [::1]).

Allowed origins (`[server] allowed_origins`, "*" for any) get proper CORS: preflights answered,
and `Access-Control-Allow-Origin` plus the routing headers exposed on every response. Ollama and
llama.cpp's server restrict origins for the same reason.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.wire.http import HTTPError
from router.wire.shapes import error_body

EXPOSED = "x-router-tier, x-router-model, x-router-score, x-router-cache, x-router-category, " + (
    "retry-after"
)
ALLOW_HEADERS = "authorization, content-type, cache-control, x-router-category, openai-beta, " + (
    "x-stainless-os, x-stainless-lang, x-stainless-arch, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-package-version, x-stainless-retry-count, "
    "x-stainless-timeout, x-stainless-async"
)


def split_host(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@functools.lru_cache(maxsize=256)  # a Host header per request: its address parsed once
def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: Iterable[str], host: str | None) -> bool:
    """Whether a page on `origin` may call a server reached as `host` (the Host header)."""
    origin = origin.strip().lower().rstrip("/")
    allowed = {a.lower().rstrip("/") for a in allowed}
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return host is not None and parts.scheme in ("http", "https") and parts.netloc == host.lower()


def cross_site_without_cors(method: str, path: str, headers: Headers) -> bool:
    """A request another site's page made without CORS: an `<img src>`, a script, a
    `fetch(..., {mode: "no-cors"})`, a link. Such a GET carries no `Origin`, so only the
    browser's `Sec-Fetch-Site` tells (every current browser sends it). A navigation to the
    dashboard's page is fine: the page holds no figures and asks for them same-origin."""
    site = headers.get("sec-fetch-site", "").lower()
    if site not in ("cross-site", "same-site"):  # same-origin, none (typed, bookmarked), absent
        return False
    mode = headers.get("sec-fetch-mode", "").lower()
    if mode == "cors":
        return False  # the Origin check above decided
    return not (mode == "navigate" and method == "GET" and path == "/dashboard")


def _error(path: str, status: int, message: str, code: str) -> Response:
    """The refusal in the shape of the API `path` belongs to (router.wire.shapes)."""
    body = error_body(path, HTTPError(status, message, code=code))
    return JSONResponse(body, status_code=status)


class BrowserGuard:
    """ASGI middleware applying the checks above before the app sees a request."""

    def __init__(self, app: ASGIApp, *, allowed_origins: Iterable[str], loopback: bool) -> None:
        self.app = app
        self.allowed = tuple(allowed_origins)
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope["method"], scope["path"], headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is None or origin_allowed(origin, (), headers.get("host")):
            await self.app(scope, receive, send)  # not cross-origin: no CORS headers
            return
        cors = {"access-control-allow-origin": origin, "vary": "Origin"}
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = {
                **cors,
                "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": headers.get(
                    "access-control-request-headers", ALLOW_HEADERS
                ),
                "access-control-max-age": "600",
            }
            await Response(status_code=204, headers=preflight)(scope, receive, send)
            return
        cors["access-control-expose-headers"] = EXPOSED

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw += [(k.encode(), v.encode("latin-1")) for k, v in cors.items()]
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def refusal(self, method: str, path: str, headers: Headers) -> Any:
        """The error response for a request that must not run, or None."""
        host = headers.get("host")
        if self.loopback and host is not None and not is_loopback_name(split_host(host)):
            return _error(
                path,
                403,
                f"Host {host[:100]!r} refused: this router listens on loopback and answers "
                "only localhost names (protection against DNS rebinding); call it as "
                "http://127.0.0.1:PORT, or serve it with --host and API keys to expose it",
                "host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.allowed, host):
            return _error(
                path,
                403,
                f"cross-origin request from {origin[:100]!r} refused: add that origin to "
                "[server] allowed_origins in models.toml to let its web pages use this router",
                "origin_not_allowed",
            )
        if cross_site_without_cors(method, path, headers):
            return _error(
                path,
                403,
                f"{path} refused: a request another site's page made (an image, a script, a "
                "link) may not run here; call it from a program, or from this router's own "
                "/dashboard",
                "cross_site_refused",
            )
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json" and not _scripted_ollama(path, headers):
                return _error(
                    path,
                    415,
                    f"{path} takes a JSON body: send 'Content-Type: application/json' "
                    f"(got {media[:60] or 'none'!r})",
                    "unsupported_media_type",
                )
        return None


def _scripted_ollama(path: str, headers: Headers) -> bool:
    """An Ollama API call from a program (curl, a script): Ollama's own examples send no JSON
    Content-Type, and Ollama reads the body all the same. A browser's POST always carries
    `Origin` (and `Sec-Fetch-Site`), so a web page's request is still refused."""
    return path.startswith("/api/") and "origin" not in headers and "sec-fetch-site" not in headers
