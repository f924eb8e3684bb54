"""The OpenAI-compatible HTTP endpoint: OpenAI's wire format in and out, nothing else.

Routing, caching and accounting live in the Router; this module parses, authenticates, moves
blocking work off the event loop, and renders results and errors the way OpenAI clients expect.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router import dashboard
from router.backends.hangup import Hangup
from router.config import LocalModel
from router.engine import Router
from router.errors import ClientGoneError, RouterError
from router.server.keys import PREFIX, KeyOwner, Keys
from router.server.metrics import (
    Metrics,
    endpoint_gauges,
    ledger_gauges,
    redis_gauges,
    shadow_counters,
)
from router.server.origins import BrowserGuard
from router.types import ROUTING_MODES, CompletionStream, Routing
from router.wire.http import HTTPError, http_error, parse_chat, parse_feedback

log = logging.getLogger("router.server")
T = TypeVar("T")


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


CLIENT_GONE = 499  # nginx's "client closed request": in the metrics, never sent


class RequestIds:
    """ASGI middleware: every request gets an id (`x-request-id` on its response, as OpenAI's
    API sends it and its SDKs read it); the server's log keys what it writes by it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def failure(request: Request, exc: RouterError) -> HTTPError:
    """The error response for `exc`: its public words, and for a failure of the router's (5xx)
    the request id, under which the server's log has the whole story (a provider's message,
    a URL, a pid)."""
    err = http_error(exc)
    if err.status >= 500:
        rid = request.state.request_id
        log.warning("%s %s: %s", rid, request.url.path, exc)
        err.message = f"{err.message} (request {rid})"
    return err


def crashed(request: Request) -> HTTPError:
    """The error response for a bug (its traceback goes to the log, under the request id)."""
    rid = request.state.request_id
    log.exception("%s %s: unexpected error", rid, request.url.path)
    return HTTPError(500, f"internal error (request {rid})", "server_error")


async def watched(request: Request, hangup: Hangup, work: Callable[..., T], *args: Any) -> T:
    """`work(*args, hangup)` in a worker thread while the client is watched: when it hangs up
    (the ASGI `http.disconnect` message, which comes once the body was read), `hangup` fires
    and what generates for the request stops."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        hangup.fire()

    done: list[T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            done.append(await anyio.to_thread.run_sync(lambda: work(*args, hangup)))
        except Exception as exc:  # raised here, not as the task group's ExceptionGroup
            failed.append(exc)
        group.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return done[0]


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

    def authenticate(request: Request) -> KeyOwner | None:
        """The key's owner; None for anonymous loopback use (the machine's owner)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # On loopback, clients must send *some* key; placeholders ("sk-none", "EMPTY") are
        # fine, but anything shaped like one of our keys has to be valid.
        if not require_keys and not token.startswith(PREFIX):
            return None
        try:
            owner = keys.owner(token) if keys is not None and token else None
        except RouterError as exc:  # a shared key store that cannot be reached: 503
            raise failure(request, exc) from None
        if owner is None:
            raise HTTPError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' with a key "
                "from 'router keys create --user NAME'",
                "authentication_error",
                code="invalid_api_key",
            )
        return owner

    def own_only(viewer: KeyOwner | None) -> str | None:
        """The user whose figures and answers a caller sees (None: everyone's): a user key
        its own; an admin key, or the machine's owner on loopback without one, all."""
        return viewer.name if viewer is not None and not viewer.admin else None

    def admin(request: Request) -> bool:
        """Whether the caller may read operator details (/health's, /metrics): an admin key;
        on loopback, any key (a placeholder included), as a program of the owner's sends."""
        viewer = authenticate(request)
        if viewer is not None:
            return viewer.admin
        return not require_keys and "authorization" in request.headers

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
        wait = router.config.server.body_timeout_seconds
        try:
            with anyio.fail_after(wait):
                async for part in request.stream():
                    size += len(part)
                    if size > body_limit:
                        raise too_big
                    parts.append(part)
        except TimeoutError:
            raise HTTPError(
                408,
                f"the request body did not arrive within {wait:g} s "
                "(server.body_timeout_seconds in models.toml)",
                code="request_timeout",
            ) from None
        except ClientDisconnect:  # a client that hangs up mid-body: one quiet line
            log.info("%s: the client hung up before its body was sent", request.state.request_id)
            raise HTTPError(CLIENT_GONE, "client disconnected", "client_closed_request") from None
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
                user=user.name if user is not None else None,
                cache=not no_cache,
                category=request.headers.get("x-router-category"),
                # OpenAI's and Anthropic's SDKs say so: they retry 5xx and 429 themselves.
                client_retries="x-stainless-retry-count" in request.headers,
            )
            hangup = Hangup()
            if call.stream:
                stream = await watched(request, hangup, router.stream_request, call.request)
                return StreamingResponse(
                    stream_events(request, stream, call.include_usage, started, hangup),
                    media_type="text/event-stream",
                    headers={**routing_headers(stream.routing), "Cache-Control": "no-cache"},
                )
            done = await watched(request, hangup, router.complete_request, call.request)
            if hangup.fired:  # nobody to answer: the row says what was done
                metrics.observe(CLIENT_GONE, time.perf_counter() - started, done.routing)
                return Response(status_code=CLIENT_GONE)
        except HTTPError as exc:
            err = exc
        except ClientGoneError:
            log.info("client hung up before its answer was under way")
            err = HTTPError(CLIENT_GONE, "the client hung up", "client_closed_request")
        except RouterError as exc:
            err = failure(request, exc)
        except Exception:
            err = crashed(request)
        else:
            metrics.observe(200, time.perf_counter() - started, done.routing)
            return JSONResponse(done.response, headers=routing_headers(done.routing))
        metrics.observe(err.status, time.perf_counter() - started)
        return _error_response(err)

    async def stream_events(
        request: Request,
        stream: CompletionStream,
        include_usage: bool,
        started: float,
        hangup: Hangup,
    ) -> AsyncIterator[bytes]:
        status = 200
        ended = False
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, stream, None)
                if chunk is None:
                    break
                if not chunk["choices"] and not include_usage:
                    continue  # the usage chunk is opt-in, as with OpenAI
                yield _sse(chunk)
            ended = True
            yield b"data: [DONE]\n\n"
        except RouterError as exc:  # the model failed after the answer had started
            ended = True
            err = failure(request, exc)
            status = err.status
            yield _sse(err.body())
            yield b"data: [DONE]\n\n"
        except Exception:  # a bug: the client still gets a proper end, the log the details
            ended = True
            status = 500
            yield _sse(crashed(request).body())
            yield b"data: [DONE]\n\n"
        finally:
            # Runs on normal end and when the client hangs up (cancellation): closing the
            # stream stops the generation and frees a local model for the next request.
            if not ended:
                hangup.fire()
                status = CLIENT_GONE
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
            whose = own_only(authenticate(request))  # a user key rates its own answers
            ident, rating, comment = parse_feedback(await read_body(request))
            try:
                await anyio.to_thread.run_sync(
                    lambda: router.feedback(ident, rating, comment, user=whose)
                )
            except RouterError as exc:
                raise failure(request, exc) from None
        except HTTPError as err:
            return _error_response(err)
        return JSONResponse({"id": ident, "rating": rating, "recorded": True})

    async def router_summary(request: Request) -> Response:
        try:
            whose = own_only(authenticate(request))
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
                    lambda: dashboard.summary(
                        router.config, router.ledger, router.budgets, since, user=whose
                    )
                )
            except RouterError as exc:  # a bad or too long window: the 400 says which
                raise failure(request, exc) from None
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
        """`{"status": "ok" | "degraded"}` for anyone (a load balancer's check); the details
        (workers' pids, endpoints' URLs, failures) for an admin only: operator matters."""
        try:
            details = admin(request)
        except HTTPError:  # a bad key still learns whether the router is up
            details = False
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
        # The ledger (SQLite, or PostgreSQL and its queue on disk): paid calls stop without it.
        body["ledger"] = await anyio.to_thread.run_sync(router.ledger.health)
        if not body["ledger"]["up"]:
            body["status"] = "degraded"
        return JSONResponse(body if details else {"status": body["status"]})

    async def metrics_endpoint(request: Request) -> Response:
        try:
            if require_keys and not admin(request):  # everyone's figures: an admin key
                raise HTTPError(
                    403,
                    "/metrics needs an admin key ('router keys create --role admin')",
                    "permission_error",
                    code="admin_key_required",
                )
        except HTTPError as err:
            return _error_response(err)
        remote = {
            name: router.local_runtime(name)
            for name, m in router.config.enabled().items()
            if isinstance(m, LocalModel) and m.remote
        }
        text = metrics.render() + endpoint_gauges(remote) + shadow_counters(router.shadow.counts)
        text += ledger_gauges(await anyio.to_thread.run_sync(router.ledger.health))
        if router.link is not None:
            text += redis_gauges(router.link.up, router.link.errors)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_response(
            HTTPError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        rid = request.state.request_id
        log.error("%s %s: unhandled error", rid, request.url.path, exc_info=exc)
        return _error_response(HTTPError(500, f"internal error (request {rid})", "server_error"))

    app = Starlette(
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
            Middleware(RequestIds),
            Middleware(
                BrowserGuard,
                allowed_origins=router.config.server.allowed_origins,
                loopback=not require_keys if loopback is None else loopback,
            ),
        ],
    )
    app.state.server_settings = router.config.server  # what `router serve` runs it with
    return app
