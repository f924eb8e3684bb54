"""Ollama's native API on the router (router.wire.ollama has the formats): chat and generate
through the one engine, and the catalogue endpoints clients ask first (tags, show, ps, version).
The router's modes (auto, local, cloud) and its models are listed as Ollama models."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.server.service import Service
from router.types import ROUTING_MODES
from router.wire import embeddings as vectors
from router.wire import ollama
from router.wire.api import Asked, parse_object
from router.wire.http import HTTPError

EPOCH = "1970-01-01T00:00:00Z"


def routes(service: Service) -> list[Route]:
    router = service.router
    api = ollama.OllamaApi()

    def guarded(request: Request) -> None:
        service.authenticate(request)

    def known() -> dict[str, dict[str, Any]]:
        """Every name a client may send: the modes, then each enabled model."""
        views = router.model_views()
        tools = any(v.supports_tools for v in views.values())
        vision = any(v.supports_vision for v in views.values())
        out: dict[str, dict[str, Any]] = {
            m: {"family": "router", "n_ctx": None, "tools": tools, "vision": vision}
            for m in ROUTING_MODES
        }
        for name, v in views.items():
            out[name] = {
                "family": v.tier,
                "n_ctx": v.n_ctx,
                "tools": v.supports_tools,
                "vision": v.supports_vision,
            }
        return out

    def details(family: str) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "",
            "quantization_level": "",
        }

    async def chat(request: Request) -> Response:
        return await service.serve(request, api, ollama.parse_chat)

    async def generate(request: Request) -> Response:
        return await service.serve(request, api, ollama.parse_generate)

    async def embed(request: Request) -> Response:
        def job(raw: bytes, asked: Asked) -> Any:
            return vectors.ollama_job(router.embed, raw, asked, legacy=False)

        return await service.run(request, "embeddings", api.error, job)

    async def embeddings(request: Request) -> Response:
        def job(raw: bytes, asked: Asked) -> Any:
            return vectors.ollama_job(router.embed, raw, asked, legacy=True)

        return await service.run(request, "embeddings", api.error, job)

    async def tags(request: Request) -> Response:
        try:
            guarded(request)
        except HTTPError as err:
            return service.error_response(api, err)
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": EPOCH,
                "size": 0,
                "digest": "",
                "details": details(info["family"]),
            }
            for name, info in known().items()
        ]
        for pattern, target in router.config.aliases.items():  # names clients send
            family = known().get(target, {"family": "router"})["family"]
            entry = {"name": pattern, "model": pattern, "modified_at": EPOCH, "size": 0}
            models.append({**entry, "digest": "", "details": details(family)})
        return JSONResponse({"models": models})

    async def show(request: Request) -> Response:
        try:
            guarded(request)
            data = parse_object(await service.read_body(request), '{"model": "..."}')
            name = ollama.name_of(data.get("model", data.get("name")))
            info = known().get(router.config.resolve(name))
            if info is None:
                raise HTTPError(404, f"model {name[:100]!r} not found", code="model_not_found")
        except HTTPError as err:
            return service.error_response(api, err)
        capabilities = ["completion"]
        capabilities += ["tools"] if info["tools"] else []
        capabilities += ["vision"] if info["vision"] else []
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": details(info["family"]),
                "model_info": {
                    "general.architecture": "router",
                    "general.basename": name,
                    "router.context_length": info["n_ctx"] or 0,
                },
                "capabilities": capabilities,
                "modified_at": EPOCH,
            }
        )

    async def ps(request: Request) -> Response:
        try:
            guarded(request)
        except HTTPError as err:
            return service.error_response(api, err)
        running = []
        for name, view in router.model_views().items():
            worker = router.local_runtime(name) if view.tier == "local" else {}
            if worker.get("state") == "ready":
                running.append(
                    {
                        "name": name,
                        "model": name,
                        "size": int((worker.get("rss_mb") or 0) * 2**20),
                        "digest": "",
                        "details": details("local"),
                        "expires_at": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365))
                        .isoformat()
                        .replace("+00:00", "Z"),
                        "size_vram": 0,
                    }
                )
        return JSONResponse({"models": running})

    async def version(request: Request) -> Response:
        return JSONResponse({"version": ollama.VERSION})

    return [
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
    ]
