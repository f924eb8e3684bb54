"""What every endpoint of one app shares: the router, its keys and metrics, and the steps of
serving a call in any API: authenticate, read the body (bounded in size and time), answer
(watching for a hang-up), and write errors in the API's own shape with the request's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.backends.hangup import Hangup
from router.chunks import replay
from router.engine.pipeline import Router
from router.errors import ClientGoneError, RateLimitedError, RouterError, exit_code
from router.governance.limits import Window
from router.server.connections import UNDER_WAY, AccessLog
from router.server.keys import PREFIX, KeyOwner, Keys
from router.server.metrics import Metrics
from router.server.streams import open_stream, relay
from router.types import Completion, Routing
from router.wire import chat
from router.wire.api import FORWARDABLE, ROUTING_HEADER, Asked, Call, Renderer, routing_json
from router.wire.http import HTTPError, http_error
from router.wire.identity import raw_identity

log = logging.getLogger("router.server")
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": in the metrics, never sent
# asyncio's own deadline where there is one (3.11+): anyio's cost a twentieth of a cache hit.
_timeout: Callable[[float], Any] = getattr(asyncio, "timeout", None) or anyio.fail_after


def routing_headers(routing: Routing) -> dict[str, str]:
    return {
        "x-router-tier": routing.tier,
        "x-router-model": routing.model,
        "x-router-score": f"{routing.score:.4f}",
        "x-router-cache": "hit" if routing.cache_hit else "miss",
        "x-router-category": routing.category,
    }


class FastJSONResponse(Response):
    """A 200 JSON answer encoded by orjson (several times json's speed; the same compact
    UTF-8 JSON, NaN as null; json for what orjson refuses, an int over 64 bits), its headers
    written raw (Starlette's header building was a fiftieth of a cache hit)."""

    media_type = "application/json"

    def __init__(self, content: Any, headers: dict[str, str]) -> None:
        try:
            self.body = orjson.dumps(content)
        except TypeError:
            self.body = JSONResponse(None).render(content)
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-length", b"%d" % len(self.body)),
            (b"content-type", b"application/json"),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]


class RequestIds:
    """ASGI middleware: every request gets an id (`x-request-id` on its response, as OpenAI's
    API sends it and its SDKs read it); the server's log keys what it writes by it, and the
    access log (`access`, when on) has a line for each."""

    def __init__(self, app: ASGIApp, access: AccessLog | None = None) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{os.urandom(12).hex()}"  # secrets.token_hex's bytes, without its layers
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
                if self.access is not None:
                    self.access.line(scope, message["status"], rid)
            await send(message)

        await self.app(scope, receive, send_with_id)


class Direct:
    """ASGI middleware: a POST to one of `endpoints` (those that answer every error in their
    API's shape themselves: Service.serve) goes straight to it, past Starlette's routing and
    exception layers, a tenth of a cache hit's time; every other request goes on to them."""

    def __init__(self, app: ASGIApp, endpoints: dict[str, Callable[[Request], Any]]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def disconnected(request: Request) -> None:
    """Returns when the client has hung up (the ASGI `http.disconnect` message, which comes
    once the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watched(request: Request, hangup: Hangup, work: Callable[..., T], *args: Any) -> T:
    """`work(*args, hangup)` in a worker thread while the client is watched: when it hangs up
    (the ASGI `http.disconnect` message, which comes once the body was read), `hangup` fires
    and what generates for the request stops."""

    async def watch() -> None:
        await disconnected(request)
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


class Parsed:
    """Bodies already parsed, by their bytes and what the HTTP layer added (Asked): a repeated
    request, a cache hit most of all, is not parsed and validated again (a tenth of a hit).

    Only calls of small bodies (at most 8 KiB, streamed or not), at most 256, the oldest
    forgotten first; only for parsers that are pure functions of the two (the chat API's). A
    remembered call only ever answers from the cache: a request the cache does not answer is
    parsed afresh (Service.serve), so what a backend may do to a request is never shared."""

    PURE: frozenset[Callable[..., Any]] = frozenset({chat.parse})
    MAX_BODY, SIZE = 8192, 256

    def __init__(self) -> None:
        self._known: dict[tuple[Any, bytes, Asked], Call] = {}

    def key(self, parse: Callable[..., Call], raw: bytes, asked: Asked) -> Any:
        """What a body is remembered by; None for one that is not remembered."""
        if parse not in self.PURE or len(raw) > self.MAX_BODY:
            return None
        return (parse, hashlib.blake2b(raw, digest_size=16).digest(), asked)

    def get(self, key: Any) -> Call | None:
        return None if key is None else self._known.get(key)

    def put(self, key: Any, call: Call) -> None:
        if key is None or call.ready:
            return
        if len(self._known) >= self.SIZE:
            del self._known[next(iter(self._known))]
        self._known[key] = call


def _forwardable(request: Request) -> tuple[tuple[str, str], ...]:
    """The request's FORWARDABLE headers, as sent (one pass over the raw headers)."""
    return tuple(
        (name, value.decode("latin-1"))
        for raw, value in request.scope["headers"]
        if raw.startswith(b"anthropic-") and (name := raw.decode("latin-1")) in FORWARDABLE
    )


class Service:
    def __init__(
        self, router: Router, keys: Keys | None, *, require_keys: bool, body_limit: int
    ) -> None:
        if require_keys and keys is None:
            raise ValueError("require_keys needs a KeyStore")
        self.router = router
        self.keys = keys
        self.require_keys = require_keys
        self.body_limit = body_limit
        self.metrics = Metrics()
        self.parsed = Parsed()

    # ---------------------------------------------------------------- who asks

    def authenticate(self, request: Request) -> KeyOwner | None:
        """The key's owner; None for anonymous loopback use (the machine's owner). The key
        comes as `Authorization: Bearer` (OpenAI, Ollama) or `x-api-key` (Anthropic)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        token = token or request.headers.get("x-api-key", "").strip()
        # On loopback, clients must send *some* key; placeholders ("sk-none", "EMPTY") are
        # fine, but anything shaped like one of our keys has to be valid.
        if not self.require_keys and not token.startswith(PREFIX):
            return None
        try:
            owner = self.keys.owner(token) if self.keys is not None and token else None
        except RouterError as exc:  # a shared key store that cannot be reached: 503
            raise self.failure(request, exc) from None
        if owner is None:
            raise HTTPError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' (or "
                "'x-api-key') with a key from 'router keys create --user NAME'",
                "authentication_error",
                code="invalid_api_key",
            )
        if owner.expired():
            raise HTTPError(
                401,
                f"API key {owner.key_id} expired at {owner.expiry()}: ask for a new one "
                f"('router keys rotate {owner.key_id}' or 'router keys create')",
                "authentication_error",
                code="key_expired",
            )
        if self.keys is not None:  # its last use, written at most once a minute; a lost
            with contextlib.suppress(RouterError):  # one is not worth a refusal
                self.keys.touch(owner)
        return owner

    def in_scope(self, viewer: KeyOwner | None, model: str) -> list[Window]:
        """Whether `viewer`'s key may ask for `model` (a 403 naming what it may ask for), and
        the rate-limit window of its own rpm and tpm, if it has one."""
        if viewer is None:
            return []
        if viewer.models and self.router.config.resolve(model) not in viewer.models:
            raise HTTPError(
                403,
                f"API key {viewer.key_id} may ask for {', '.join(viewer.models)} only, not "
                f"{model[:80]!r}",
                "permission_error",
                param="model",
                code="model_not_allowed",
            )
        if viewer.rpm is None and viewer.tpm is None:
            return []
        scope = f"key:{viewer.key_id}"
        return [Window(scope, scope, viewer.rpm, viewer.tpm)]

    @staticmethod
    def own_only(viewer: KeyOwner | None) -> str | None:
        """The user whose figures and answers a caller sees (None: everyone's): a user key
        its own; an admin key, or the machine's owner on loopback without one, all."""
        return viewer.name if viewer is not None and not viewer.admin else None

    def admin(self, request: Request) -> bool:
        """Whether the caller may read operator details (/health's, /metrics): an admin key;
        on loopback, any key (a placeholder included), as a program of the owner's sends."""
        viewer = self.authenticate(request)
        if viewer is not None:
            return viewer.admin
        return not self.require_keys and (
            "authorization" in request.headers or "x-api-key" in request.headers
        )

    def asked(self, request: Request, viewer: KeyOwner | None, forward: bool = False) -> Asked:
        """What the headers say of a request; `forward`: with the API's own headers a model
        speaking it may be sent (FORWARDABLE: only the Messages API reads them)."""
        no_cache = {"no-cache", "no-store"} & {
            v.strip() for v in request.headers.get("cache-control", "").lower().split(",")
        }
        session, device = raw_identity(request.scope["headers"])
        return Asked(
            user=viewer.name if viewer is not None else None,
            session=session,
            device=device,
            cache=not no_cache,
            category=request.headers.get("x-router-category"),
            # OpenAI's and Anthropic's SDKs say so: they retry 5xx and 429 themselves.
            client_retries="x-stainless-retry-count" in request.headers,
            routing=ROUTING_HEADER in request.headers,
            forward=_forwardable(request) if forward else (),
            models=viewer.models if viewer is not None else (),
            key_budget=(viewer.key_id, viewer.daily_usd)
            if viewer is not None and viewer.daily_usd is not None
            else None,
        )

    # ---------------------------------------------------------------- the body

    async def read_body(self, request: Request) -> bytes:
        too_big = HTTPError(
            413,
            f"request body is larger than {self.body_limit} bytes (server.max_body_kb in "
            "models.toml)",
            code="request_too_large",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.body_limit:
            raise too_big
        parts: list[bytes] = []
        size = 0
        wait = self.router.config.server.body_timeout_seconds
        try:
            async with _timeout(wait):
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    part = message.get("body", b"")
                    size += len(part)
                    if size > self.body_limit:
                        raise too_big
                    parts.append(part)
                    if not message.get("more_body", False):
                        break
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

    # ---------------------------------------------------------------- errors

    @staticmethod
    def failure(request: Request, exc: RouterError) -> HTTPError:
        """The error for `exc`: its public words, and for a failure of the router's (5xx) the
        request id, under which the server's log has the whole story (a provider's message,
        a URL, a pid)."""
        err = http_error(exc)
        err.refusal = exc.refusal
        if isinstance(exc, RateLimitedError):
            err.limit = f"{exc.scope} {exc.kind}"
        # What `router chat` through this server exits with: the same as in process.
        err.headers = {**(err.headers or {}), "x-router-exit-code": str(exit_code(exc))}
        if err.status >= 500:
            rid = request.state.request_id
            log.warning("%s %s: %s", rid, request.url.path, exc)
            err.message = f"{err.message} (request {rid})"
        return err

    @staticmethod
    def crashed(request: Request) -> HTTPError:
        """The error for a bug (its traceback goes to the log, under the request id)."""
        rid = request.state.request_id
        log.exception("%s %s: unexpected error", rid, request.url.path)
        return HTTPError(500, f"internal error (request {rid})", "server_error")

    @staticmethod
    def replayed(renderer: Renderer, call: Call, done: Completion) -> Response:
        """A cache hit asked for as a stream: its events, rendered at once (router.chunks
        .replay), in one body."""
        writer = renderer.writer(call, done.routing)
        events = [writer.start(), *map(writer.chunk, replay(done.response))]
        body = b"".join([*events, writer.end(done.routing)])
        headers = {**routing_headers(done.routing), "Cache-Control": "no-cache"}
        return Response(body, media_type=renderer.media_type, headers=headers)

    @staticmethod
    def error_response(renderer: Renderer, err: HTTPError) -> Response:
        status = err.statuses.get(renderer.api, err.status)
        return JSONResponse(renderer.error(err), status_code=status, headers=err.headers)

    # ---------------------------------------------------------------- answers

    async def serve(
        self, request: Request, renderer: Renderer, parse: Callable[[bytes, Asked], Call]
    ) -> Response:
        """One completion in `renderer`'s API: authenticate, read and `parse` the body, answer
        (streamed or not), errors in the API's shape; counted in the metrics by API."""
        started = time.perf_counter()
        api = renderer.api

        counted: list[Window] = []  # the rate limits' windows the request counts in

        def observe(
            status: int, routing: Routing | None = None, refusal: str = "", limit: str = ""
        ) -> None:
            seconds = time.perf_counter() - started
            self.metrics.observe(status, seconds, routing, api, refusal, limit)
            self.router.used(counted, routing)  # the answer's tokens, for tpm

        try:
            viewer = self.authenticate(request)
            raw = await self.read_body(request)
            asked = self.asked(request, viewer, forward=api == "messages")
            remembered = self.parsed.key(parse, raw, asked)
            known = self.parsed.get(remembered)
            call = known or parse(raw, asked)
            if call.ready is not None:
                return JSONResponse(call.ready)
            router = self.router
            own = self.in_scope(viewer, call.request.model)  # a 403 out of the key's scope
            if own or router.limited():  # [[limits]]: counted, or a 429 and its ledger row
                counted = await router.aadmit(call.request, own)
            hangup = Hangup()
            looked = await router.alook_up(call.request)
            if looked is not None and looked.hit is not None:  # a hit: no thread, no model
                if known is None:
                    self.parsed.put(remembered, call)  # (only calls no backend has seen)
                together = len(request.scope.get(UNDER_WAY, ())) > 1  # other requests' tasks
                done = await router.acomplete_hit(
                    call.request, looked, together=together, stream=call.stream
                )
                if call.stream:  # the whole stream in one piece, as the thread would send it
                    observe(200, done.routing)
                    return self.replayed(renderer, call, done)
            elif call.stream:
                if known is not None:  # a remembered call only answers from the cache
                    call = parse(raw, asked)
                stream, feed = await open_stream(
                    functools.partial(router.stream_request, call.request, looked=looked),
                    hangup,
                    functools.partial(disconnected, request),
                )
                events = relay(
                    stream,
                    feed,
                    renderer.writer(call, stream.routing),
                    hangup,
                    lambda exc: self.failure(request, exc),
                    lambda: self.crashed(request),
                    lambda status: observe(status, stream.routing),
                )
                headers = {**routing_headers(stream.routing), "Cache-Control": "no-cache"}
                return StreamingResponse(events, media_type=renderer.media_type, headers=headers)
            else:
                if known is not None:  # a remembered call only answers from the cache
                    call = parse(raw, asked)
                answer = functools.partial(router.complete_request, looked=looked)
                done = await watched(request, hangup, answer, call.request)
            if hangup.fired:  # nobody to answer: the row says what was done
                observe(CLIENT_GONE, done.routing)
                return Response(status_code=CLIENT_GONE)
        except HTTPError as exc:
            err = exc
        except ClientGoneError:
            log.info("%s: the client hung up before its answer was under way", api)
            err = HTTPError(CLIENT_GONE, "the client hung up", "client_closed_request")
        except RouterError as exc:
            err = self.failure(request, exc)
        except Exception:
            err = self.crashed(request)
        else:
            observe(200, done.routing)
            body = renderer.answer(call, done)
            headers = routing_headers(done.routing)
            if call.options.get("routing"):
                headers[ROUTING_HEADER] = routing_json(done.routing)
            return FastJSONResponse(body, headers=headers)
        observe(err.status, refusal=err.refusal, limit=err.limit)
        return self.error_response(renderer, err)

    async def run(
        self,
        request: Request,
        api: str,
        error: Callable[[HTTPError], dict[str, Any]],
        job: Callable[[bytes, Asked], Callable[[Hangup], tuple[dict[str, Any], Routing]]],
    ) -> Response:
        """A request that is not a completion (embeddings): `job(body, asked)` checks the body
        and gives the work, which runs off the event loop and returns the answer's body and
        routing; errors in the `error` shape, counted in the metrics under `api`."""
        started = time.perf_counter()
        try:
            viewer = self.authenticate(request)
            work = job(await self.read_body(request), self.asked(request, viewer))
            body, routing = await watched(request, Hangup(), work)
        except HTTPError as exc:
            err = exc
        except RouterError as exc:
            err = self.failure(request, exc)
        except Exception:
            err = self.crashed(request)
        else:
            self.metrics.observe(200, time.perf_counter() - started, routing, api)
            return JSONResponse(body, headers=routing_headers(routing))
        self.metrics.observe(err.status, time.perf_counter() - started, None, api, err.refusal)
        return JSONResponse(error(err), status_code=err.status, headers=err.headers)
