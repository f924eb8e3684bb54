"""The OpenAI-compatible HTTP endpoint: OpenAI's wire format in and out, nothing else.

Routing, caching and accounting live in the Router; this module parses, authenticates, moves
blocking work off the event loop, and renders results and errors the way OpenAI clients expect.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from router import dashboard
from router.config import LocalModel
from router.engine import Router
from router.errors import RouterError
from router.server.keys import PREFIX, Keys
from router.server.metrics import Metrics, endpoint_gauges, redis_gauges, shadow_counters
from router.server.origins import BrowserGuard
from router.types import ROUTING_MODES, CompletionStream, Routing
from router.wire.http import HTTPError, http_error, parse_chat, parse_feedback

log = logging.getLogger("router.server")


def routing_headers(routing: Routing) -> dict[str, str]:
    return {
        "x-router-tier": routing.tier,
        "x-router-model": routing.model,
        "x-router-score": f"{routing.score:.4f}",
        "x-router-cache": "hit" if routing.cache_hit else "miss",
        "x-router-category": routing.category,
    }


PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'"
)


def _error_response(err: HTTPError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def create_app(
    router: Router,
    *,
    keys: Keys | None = None,
    require_keys: bool = False,
    max_body_bytes: int | None = None,
    loopback: bool | None = None,
) -> Starlette:
    """An ASGI app serving `router`. With `require_keys`, every /v1 call needs a valid key.

    `loopback` (default: not `require_keys`): the server is bound to a loopback address, so
    only loopback Host names are answered (router.server.origins)."""
    metrics = Metrics()
    body_limit = max_body_bytes or router.config.server.max_body_kb * 1024
    if require_keys and keys is None:
        raise ValueError("require_keys needs a KeyStore")

    def authenticate(request: Request) -> str | None:
        """The key owner's name; None for anonymous loopback use."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # On loopback, clients must send *some* key; placeholders ("sk-none", "EMPTY") are
        # fine, but anything shaped like one of our keys has to be valid.
        if not require_keys and not token.startswith(PREFIX):
            return None
        try:
            owner = keys.owner(token) if keys is not None and token else None
        except RouterError as exc:  # a shared key store that cannot be reached: 503
            raise http_error(exc) from None
        if owner is None:
            raise HTTPError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' with a key "
                "from 'router keys create --user NAME'",
                "authentication_error",
                code="invalid_api_key",
            )
        return owner

    async def read_body(request: Request) -> bytes:
        too_big = HTTPError(
            413,
            f"request body is larger than {body_limit} bytes (server.max_body_kb in models.toml)",
            code="request_too_large",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            raise too_big
        parts: list[bytes] = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > body_limit:
                raise too_big
            parts.append(part)
        return b"".join(parts)

    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        try:
            user = authenticate(request)
            raw = await read_body(request)
            no_cache = {"no-cache", "no-store"} & {
                v.strip() for v in request.headers.get("cache-control", "").lower().split(",")
            }
            call = parse_chat(
                raw,
                user=user,
                cache=not no_cache,
                category=request.headers.get("x-router-category"),
            )
            if call.stream:
                stream = await anyio.to_thread.run_sync(router.stream_request, call.request)
                return StreamingResponse(
                    stream_events(stream, call.include_usage, started),
                    media_type="text/event-stream",
                    headers={**routing_headers(stream.routing), "Cache-Control": "no-cache"},
                )
            done = await anyio.to_thread.run_sync(router.complete_request, call.request)
        except HTTPError as exc:
            err = exc
        except RouterError as exc:
            err = http_error(exc)
        except Exception:
            log.exception("unexpected error in /v1/chat/completions")
            err = HTTPError(500, "internal error; the server log has the details", "server_error")
        else:
            metrics.observe(200, time.perf_counter() - started, done.routing)
            return JSONResponse(done.response, headers=routing_headers(done.routing))
        metrics.observe(err.status, time.perf_counter() - started)
        return _error_response(err)

    async def stream_events(
        stream: CompletionStream, include_usage: bool, started: float
    ) -> AsyncIterator[bytes]:
        status = 200
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, stream, None)
                if chunk is None:
                    break
                if not chunk["choices"] and not include_usage:
                    continue  # the usage chunk is opt-in, as with OpenAI
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        except RouterError as exc:  # the model failed after the answer had started
            err = http_error(exc)
            status = err.status
            yield _sse(err.body())
            yield b"data: [DONE]\n\n"
        except Exception:  # a bug: the client still gets a proper end, the log the details
            log.exception("unexpected error in a /v1/chat/completions stream")
            status = 500
            yield _sse(
                HTTPError(
                    500, "internal error; the server log has the details", "server_error"
                ).body()
            )
            yield b"data: [DONE]\n\n"
        finally:
            # Runs on normal end and when the client hangs up (cancellation): closing the
            # stream stops the generation and frees a local model for the next request.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)
            metrics.observe(status, time.perf_counter() - started, stream.routing)

    def model_list() -> list[dict[str, Any]]:
        views = router.model_views()
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "router"} for m in ROUTING_MODES
        ]
        for name, view in views.items():
            data.append({"id": name, "object": "model", "created": 0, "owned_by": view.tier})
        return data

    async def list_models(request: Request) -> Response:
        try:
            authenticate(request)
        except HTTPError as err:
            return _error_response(err)
        return JSONResponse({"object": "list", "data": model_list()})

    async def feedback(request: Request) -> Response:
        try:
            owner = authenticate(request)
            ident, rating, comment = parse_feedback(await read_body(request))
            try:
                await anyio.to_thread.run_sync(
                    lambda: router.feedback(ident, rating, comment, user=owner)
                )
            except RouterError as exc:
                raise http_error(exc) from None
        except HTTPError as err:
            return _error_response(err)
        return JSONResponse({"id": ident, "rating": rating, "recorded": True})

    async def router_summary(request: Request) -> Response:
        try:
            authenticate(request)
            unknown = sorted(set(request.query_params) - {"since"})
            if unknown:
                raise HTTPError(
                    400,
                    f"unknown parameter {unknown[0][:40]!r}: only 'since'",
                    param=unknown[0][:40],
                )
            since = request.query_params.get("since", "7d")
            try:
                body = await anyio.to_thread.run_sync(
                    dashboard.summary, router.config, router.ledger, router.budgets, since
                )
            except RouterError as exc:  # a bad or too long window: the 400 says which
                raise http_error(exc) from None
        except HTTPError as err:
            return _error_response(err)
        return JSONResponse(body)

    async def dashboard_page(request: Request) -> Response:
        # The page holds no figures (they come from /v1/router/summary, behind the keys off
        # loopback) and may load nothing from anywhere else.
        return HTMLResponse(dashboard.page(), headers={"Content-Security-Policy": PAGE_POLICY})

    async def get_model(request: Request) -> Response:
        try:
            authenticate(request)
        except HTTPError as err:
            return _error_response(err)
        wanted = request.path_params["model"]
        for entry in model_list():
            if entry["id"] == wanted:
                return JSONResponse(entry)
        return _error_response(
            HTTPError(
                404, f"model {wanted[:100]!r} not found", param="model", code="model_not_found"
            )
        )

    async def health(request: Request) -> Response:
        views = router.model_views()
        models: dict[str, dict[str, Any]] = {}
        for name, view in views.items():
            models[name] = {"tier": view.tier, "usable": view.unusable is None}
            models[name]["why_not"] = view.unusable
            if view.tier == "local":  # its worker process: state, pid, memory, failures
                models[name]["worker"] = router.local_runtime(name)
        shadow = {"rate": router.shadow.settings.shadow_rate, **router.shadow.counts}
        body: dict[str, Any] = {"status": "ok", "models": models, "shadow": shadow}
        if router.link is not None:  # [shared]: Redis, and what waits for it
            await anyio.to_thread.run_sync(router.link.ping)
            body["shared"] = router.shared_health()
            if not router.link.up:
                body["status"] = "degraded"
        ledger_health = getattr(router.ledger, "health", None)
        if callable(ledger_health):  # the ledger on PostgreSQL, and its queue on disk
            body["ledger"] = await anyio.to_thread.run_sync(ledger_health)
            if not body["ledger"]["up"]:
                body["status"] = "degraded"
        return JSONResponse(body)

    async def metrics_endpoint(request: Request) -> Response:
        try:
            if require_keys:
                authenticate(request)
        except HTTPError as err:
            return _error_response(err)
        remote = {
            name: router.local_runtime(name)
            for name, m in router.config.enabled().items()
            if isinstance(m, LocalModel) and m.remote
        }
        text = metrics.render() + endpoint_gauges(remote) + shadow_counters(router.shadow.counts)
        if router.link is not None:
            text += redis_gauges(router.link.up, router.link.errors)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_response(
            HTTPError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error_response(HTTPError(500, "internal error", "server_error"))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/router/summary", router_summary, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/dashboard", dashboard_page, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_exception, Exception: server_error},
        middleware=[
            Middleware(
                BrowserGuard,
                allowed_origins=router.config.server.allowed_origins,
                loopback=not require_keys if loopback is None else loopback,
            )
        ],
    )
