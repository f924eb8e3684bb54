"""The HTTP endpoint: the APIs clients speak, in and out, and the router's own pages.

Routing, caching and accounting live in the Router; each API's format lives in router.wire;
router.server.service does what every endpoint shares (keys, bodies, hang-ups, error shapes).
This module only says which path is served how:

- OpenAI: POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings;
  GET /v1/models[/{id}]
- Anthropic: POST /v1/messages, /v1/messages/count_tokens
- Ollama: /api/chat, /api/generate, /api/embed, /api/embeddings, /api/tags, /api/show,
  /api/ps, /api/version (router.server.ollama)
- the router's own: /v1/feedback, /v1/router/summary, /dashboard, /health, /metrics
  (router.server.admin)
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.engine import policy
from router.engine.pipeline import Router
from router.server import admin, admin_api, ollama
from router.server.connections import AccessLog
from router.server.keys import Keys
from router.server.origins import BrowserGuard
from router.server.service import Direct, RequestIds, Service
from router.types import ROUTING_MODES
from router.wire import chat, completions, messages, responses, shapes
from router.wire import embeddings as vectors
from router.wire.api import Asked
from router.wire.http import HTTPError

log = logging.getLogger("router.server")


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
    service = Service(
        router,
        keys,
        require_keys=require_keys,
        body_limit=max_body_bytes or router.config.server.max_body_kb * 1024,
    )
    chat_api, messages_api = chat.ChatApi(), messages.MessagesApi()
    responses_api, completions_api = responses.ResponsesApi(), completions.CompletionsApi()

    async def chat_completions(request: Request) -> Response:
        return await service.serve(request, chat_api, chat.parse)

    async def openai_responses(request: Request) -> Response:
        return await service.serve(request, responses_api, responses.parse)

    async def legacy_completions(request: Request) -> Response:
        return await service.serve(request, completions_api, completions.parse)

    async def embeddings(request: Request) -> Response:
        def job(raw: bytes, asked: Asked) -> Any:
            return vectors.openai_job(router.embed, raw, asked)

        return await service.run(request, "embeddings", chat_api.error, job)

    async def anthropic_messages(request: Request) -> Response:
        return await service.serve(request, messages_api, messages.parse)

    async def count_tokens(request: Request) -> Response:
        """Anthropic's token count, from the router's estimate (3 characters a token, on the
        safe side): no model is called and nothing is recorded."""
        try:
            service.authenticate(request)
            call = messages.count_tokens(await service.read_body(request))
        except HTTPError as err:
            return service.error_response(messages_api, err)
        return JSONResponse({"input_tokens": policy.estimate_prompt_tokens(call.request)})

    def model_list() -> list[dict[str, Any]]:
        views = router.model_views()
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "router"} for m in ROUTING_MODES
        ]
        for name, view in views.items():
            data.append({"id": name, "object": "model", "created": 0, "owned_by": view.tier})
        for pattern, target in router.config.aliases.items():  # names clients send
            data.append({"id": pattern, "object": "model", "created": 0, "owned_by": target})
        return data

    async def list_models(request: Request) -> Response:
        try:
            service.authenticate(request)
        except HTTPError as err:
            return service.error_response(chat_api, err)
        return JSONResponse({"object": "list", "data": model_list()})

    async def get_model(request: Request) -> Response:
        try:
            service.authenticate(request)
        except HTTPError as err:
            return service.error_response(chat_api, err)
        wanted = request.path_params["model"]
        for entry in model_list():
            if entry["id"] == wanted:
                return JSONResponse(entry)
        target = router.config.resolve(wanted)  # a name an alias covers
        if target != wanted:
            return JSONResponse({"id": wanted, "object": "model", "created": 0, "owned_by": target})
        return service.error_response(
            chat_api,
            HTTPError(
                404, f"model {wanted[:100]!r} not found", param="model", code="model_not_found"
            ),
        )

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = HTTPError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(shapes.error_body(request.url.path, err), status_code=err.status)

    async def server_error(request: Request, exc: Exception) -> Response:
        rid = request.state.request_id
        log.error("%s %s: unhandled error", rid, request.url.path, exc_info=exc)
        err = HTTPError(500, f"internal error (request {rid})", "server_error")
        return JSONResponse(shapes.error_body(request.url.path, err), status_code=500)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/responses", openai_responses, methods=["POST"]),
            Route("/v1/completions", legacy_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            *admin.routes(service),
            *admin_api.routes(service),
            *ollama.routes(service),
        ],
        exception_handlers={HTTPException: http_exception, Exception: server_error},
        middleware=[
            Middleware(RequestIds, access=AccessLog() if router.config.server.access_log else None),
            Middleware(
                BrowserGuard,
                allowed_origins=router.config.server.allowed_origins,
                loopback=not require_keys if loopback is None else loopback,
            ),
            Middleware(
                Direct,
                endpoints={
                    "/v1/chat/completions": chat_completions,
                    "/v1/responses": openai_responses,
                    "/v1/completions": legacy_completions,
                    "/v1/messages": anthropic_messages,
                },
            ),
        ],
    )
    # A path with a slash too many is a 404 that says so, not a 307 a POST client may not follow.
    app.router.redirect_slashes = False
    app.state.server_settings = router.config.server  # what `router serve` runs it with
    return app
