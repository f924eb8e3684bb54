"""The router's own endpoints: feedback on answers, the savings summary and its page, health
and metrics. Each key sees what its role allows (router.server.keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from router import dashboard
from router.backends.cloud import litellm_state
from router.config import LocalModel
from router.engine.policy import ModelView
from router.errors import RouterError
from router.governance.budgets import budget_rows
from router.server.metrics import (
    budget_gauges,
    cache_gauges,
    endpoint_gauges,
    ledger_gauges,
    redis_gauges,
    shadow_counters,
)
from router.server.service import Service
from router.wire.chat import ChatApi
from router.wire.http import HTTPError, parse_feedback

PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'"
)


def routes(service: Service) -> list[Route]:
    router = service.router
    openai = ChatApi()
    fingerprint = router.config.fingerprint()

    async def feedback(request: Request) -> Response:
        try:
            whose = service.own_only(service.authenticate(request))  # a user: their answers
            ident, rating, comment = parse_feedback(await service.read_body(request))
            try:
                await anyio.to_thread.run_sync(
                    lambda: router.feedback(ident, rating, comment, user=whose)
                )
            except RouterError as exc:
                raise service.failure(request, exc) from None
        except HTTPError as err:
            return service.error_response(openai, err)
        return JSONResponse({"id": ident, "rating": rating, "recorded": True})

    async def router_summary(request: Request) -> Response:
        try:
            whose = service.own_only(service.authenticate(request))
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
                raise service.failure(request, exc) from None
        except HTTPError as err:
            return service.error_response(openai, err)
        return JSONResponse(body)

    async def dashboard_page(request: Request) -> Response:
        # The page holds no figures (they come from /v1/router/summary, behind the keys off
        # loopback) and may load nothing from anywhere else.
        return HTMLResponse(dashboard.page(), headers={"Content-Security-Policy": PAGE_POLICY})

    async def health(request: Request) -> Response:
        """`{"status": "ok" | "degraded"}` for anyone (a load balancer's check); the details
        (workers' pids, endpoints' URLs, failures) for an admin only: operator matters."""
        try:
            details = service.admin(request)
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
        reasons = _model_trouble(views)
        if router.link is not None:  # [shared]: Redis, and what waits for it
            await anyio.to_thread.run_sync(router.link.ping)
            body["shared"] = router.shared_health()
            if not router.link.up:
                reasons.append("the shared store (Redis) cannot be reached")
        # The ledger (SQLite, or PostgreSQL and its queue on disk): paid calls stop without it.
        body["ledger"] = await anyio.to_thread.run_sync(router.ledger.health)
        if not body["ledger"]["up"]:
            reasons.append("the ledger cannot be written: paid calls are refused")
        # The response cache is best effort: answers go on without it, not cached.
        body["cache"] = router.cache_health()
        if not body["cache"]["up"]:
            reasons.append("the response cache cannot be read or written: answers are not cached")
        if reasons:
            body["status"] = "degraded"
            body["reasons"] = reasons
        # Which models.toml, as read (`router chat` uses this server only for the same one),
        # and LiteLLM's import, which `router serve` starts at start-up: "warming" until done.
        body["config"] = fingerprint
        body["cloud_client"] = litellm_state()
        public = {
            "status": body["status"],
            **({"reasons": reasons} if reasons else {}),
            "config": fingerprint,
            "cloud_client": body["cloud_client"],
        }
        return JSONResponse(body if details else public)

    async def metrics(request: Request) -> Response:
        try:
            if service.require_keys and not service.admin(request):  # everyone's figures
                raise HTTPError(
                    403,
                    "/metrics needs an admin key ('router keys create --role admin')",
                    "permission_error",
                    code="admin_key_required",
                )
        except HTTPError as err:
            return service.error_response(openai, err)
        remote = {
            name: router.local_runtime(name)
            for name, m in router.config.enabled().items()
            if isinstance(m, LocalModel) and m.remote
        }
        text = service.metrics.render() + endpoint_gauges(remote)
        text += shadow_counters(router.shadow.counts)
        text += ledger_gauges(await anyio.to_thread.run_sync(router.ledger.health))
        try:  # each budget's used share: a store that cannot be read leaves them out
            rows = await anyio.to_thread.run_sync(lambda: budget_rows(router.budgets))
            text += budget_gauges(rows)
        except RouterError:
            pass
        text += cache_gauges(router.cache_health())
        if router.link is not None:
            text += redis_gauges(router.link.up, router.link.errors)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return [
        Route("/health", health, methods=["GET"]),
        Route("/v1/router/summary", router_summary, methods=["GET"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/dashboard", dashboard_page, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _model_trouble(views: Mapping[str, ModelView]) -> list[str]:
    """Why the router cannot do its job as configured, in words anyone may read: every local
    chat model unusable (everything goes to the paid cloud, or nowhere), or no chat model
    usable at all. A cloud model without a key is the zero-setup default, not trouble."""
    chat = [v for v in views.values() if not v.embeddings]
    local = [v for v in chat if v.tier == "local"]
    if chat and all(v.unusable for v in chat):
        return ["no model can answer: " + "; ".join(_why(v) for v in chat)]
    if local and all(v.unusable for v in local):
        return ["no local model is usable, so every answer is paid for: "
                + "; ".join(_why(v) for v in local)]  # fmt: skip
    return []


def _why(view: ModelView) -> str:
    return f"{view.name}: {view.unusable_public or 'unusable'}"
