"""The admin API: keys, budgets and rate limits over HTTP, JSON in and out, for an IT team's
automation (what `router keys`, `router budget` and `router limits` do from the server's
shell, with the same checks).

    GET    /v1/router/admin/keys                  every key (never a key itself)
    POST   /v1/router/admin/keys                  {"user", "role"?, "expires"?, "models"?,
                                                  "rpm"?} -> 201, the key shown once
    PATCH  /v1/router/admin/keys/{id}             {"expires"?, "models"?, "rpm"?}
    POST   /v1/router/admin/keys/{id}/rotate      {"grace"?: "1h"} -> 201, the new key
    DELETE /v1/router/admin/keys/{id}             revoke at once
    GET    /v1/router/admin/budgets               every budget and its use
    PUT    /v1/router/admin/budgets               {"user" | "team", limits...}: set (replace)
    DELETE /v1/router/admin/budgets?user=NAME     (or ?team=NAME): remove what PUT set
    GET    /v1/router/admin/limits                every rate limit in force, and its source
    PUT    /v1/router/admin/limits                {"user" | "team" | neither (each user),
                                                  "model"?, "rpm"?, "tpm"?}: set (replace)
    DELETE /v1/router/admin/limits?user=NAME[&model=M]  (or ?team=, ?each_user=true)
    GET    /v1/router/admin/export?since=30d&user=&team=&category=&min_rating=good
           &judged_acceptable=true&include_flagged=true&include_cache_hits=true&metadata=true
                                                  JSON lines of training records (`router
                                                  export`), what each filter removed in the
                                                  X-Router-Export header

An admin key is required where the server requires keys; a user key is refused (403) on
every route, on loopback too. Errors are OpenAI's shape, with `param` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.config import RateLimit
from router.errors import RequestError, RouterError
from router.governance import export as exporting
from router.governance.budgets import budget_rows, parse_budget
from router.governance.limits import parse_limit, rule_key
from router.ledger import duration
from router.server.key_scope import KeyInfo, scope_of
from router.server.keys import Keys
from router.server.service import Service
from router.types import body as bodies
from router.wire.chat import ChatApi
from router.wire.http import HTTPError

PREFIX = "/v1/router/admin"
EXPORT_FLAGS = ("judged_acceptable", "include_flagged", "include_cache_hits", "metadata")
EXPORT_PARAMS = {"since", "user", "team", "category", "min_rating", *EXPORT_FLAGS}
MAX_VALUES = 1000  # users, teams or categories one export names


def switch(query: Mapping[str, str], name: str) -> bool:
    """A true/false query parameter (absent: false)."""
    value = query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise HTTPError(400, f"{name}: true or false, not {value[:20]!r}", param=name)
    return value in ("true", "1")


def routes(service: Service) -> list[Route]:
    router = service.router
    openai = ChatApi()

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                viewer = service.authenticate(request)
                if viewer is not None and not viewer.admin:
                    raise HTTPError(
                        403,
                        f"{request.url.path} needs an admin key ('router keys create --role "
                        "admin'); this key is a user's",
                        "permission_error",
                        code="admin_key_required",
                    )
                return await handler(request)
            except HTTPError as err:
                return service.error_response(openai, err)
            except RouterError as exc:
                return service.error_response(openai, service.failure(request, exc))

        return run

    async def read(request: Request) -> dict[str, Any]:
        raw = await service.read_body(request)
        if not raw.strip():
            return {}
        try:
            data = bodies.parse(raw)
        except bodies.BodyError as exc:
            raise HTTPError(400, str(exc), param=exc.param) from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return data

    def keys() -> Keys:
        if service.keys is None:
            raise HTTPError(
                404, "this server has no key store (it was started without one)", code="no_keys"
            )
        return service.keys

    def shown(info: KeyInfo) -> dict[str, Any]:
        return {**info.record(), "expired": info.owner().expired()}

    def missing(key_id: str) -> HTTPError:
        return HTTPError(404, f"no key with id {key_id[:40]!r}", param="id", code="not_found")

    async def list_keys(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(keys().list)
        return JSONResponse({"keys": [shown(k) for k in found]})

    async def create_key(request: Request) -> Response:
        scope = scope_of(await read(request), router.config, create=True)
        store = keys()
        user, role = scope.pop("user"), scope.pop("role", "user")
        key, key_id = await anyio.to_thread.run_sync(lambda: store.create(user, role, **scope))
        info = next(k for k in store.list() if k.key_id == key_id)
        return JSONResponse({"key": key, **shown(info)}, status_code=201)

    async def change_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        scope = scope_of(await read(request), router.config, create=False)
        store = keys()
        try:
            info = await anyio.to_thread.run_sync(lambda: store.change(key_id, **scope))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if info is None:
            raise missing(key_id)
        return JSONResponse(shown(info))

    async def rotate_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        data = await read(request)
        unknown = sorted(set(data) - {"grace"})
        if unknown:
            field = unknown[0][:40]
            raise HTTPError(400, f"unknown field {field!r}: only 'grace'", param=field)
        grace = data.get("grace", "1h")
        if not isinstance(grace, str):
            raise HTTPError(400, 'grace: a duration such as "1h" or "0m"', param="grace")
        seconds = duration(grace, "grace")
        store = keys()
        made = await anyio.to_thread.run_sync(lambda: store.rotate(key_id, seconds))
        if made is None:
            raise missing(key_id)
        info = next(k for k in store.list() if k.key_id == made[1])
        return JSONResponse({"key": made[0], "replaces": key_id, **shown(info)}, status_code=201)

    async def revoke_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        store = keys()
        if not await anyio.to_thread.run_sync(lambda: store.revoke(key_id)):
            raise missing(key_id)
        return JSONResponse({"id": key_id, "revoked": True})

    async def list_budgets(request: Request) -> Response:
        rows = await anyio.to_thread.run_sync(lambda: budget_rows(router.budgets))
        return JSONResponse({"budgets": rows})

    async def set_budget(request: Request) -> Response:
        budget = parse_budget(await read(request), router.config)
        await anyio.to_thread.run_sync(lambda: router.budgets.set(budget))
        rows = await anyio.to_thread.run_sync(lambda: budget_rows(router.budgets, [budget.scope]))
        return JSONResponse(rows[0] if rows else {"scope": budget.scope})

    async def remove_budget(request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"user", "team"})
        if unknown or len(query) != 1:
            raise HTTPError(400, "give ?user=NAME or ?team=NAME (one of them)", param="user")
        scope = "user:" + query["user"] if "user" in query else "team:" + query["team"]
        removed = await anyio.to_thread.run_sync(lambda: router.budgets.remove(scope))
        if removed:
            return JSONResponse({"scope": scope, "removed": True})
        if any(b.scope == scope for b in router.config.budgets):
            raise HTTPError(409, f"the budget of {scope} is in models.toml: change it there")
        raise HTTPError(404, f"no budget for {scope[:80]}", code="not_found")

    async def list_limits(request: Request) -> Response:
        rows = await anyio.to_thread.run_sync(router.rate_rules.rows)
        return JSONResponse({"limits": rows})

    async def set_limit(request: Request) -> Response:
        rule = parse_limit(await read(request), router.config)
        await anyio.to_thread.run_sync(lambda: router.rate_rules.set(rule))
        shown = {"key": rule_key(rule), "scope": rule.scope, **rule.model_dump(exclude_none=True)}
        return JSONResponse(shown)

    async def remove_limit(request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"user", "team", "each_user", "model"})
        scopes = [k for k in ("user", "team", "each_user") if k in query]
        if unknown or len(scopes) != 1:
            raise HTTPError(
                400, "give one of ?user=NAME, ?team=NAME or ?each_user=true (and ?model=M)",
                param=(unknown or ["user"])[0][:40],
            )  # fmt: skip
        wanted = rule_key(
            RateLimit.model_construct(
                user=query.get("user"), team=query.get("team"), model=query.get("model")
            )
        )
        if await anyio.to_thread.run_sync(lambda: router.rate_rules.remove(wanted)):
            return JSONResponse({"key": wanted, "removed": True})
        if any(rule_key(r) == wanted for r in router.config.limits):
            raise HTTPError(
                409, f"the rate limit {wanted[:120]} is in models.toml: change it there"
            )
        raise HTTPError(404, f"no rate limit set for {wanted[:120]}", code="not_found")

    async def export_rows(request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - EXPORT_PARAMS)
        if unknown:
            known = ", ".join(sorted(EXPORT_PARAMS))
            raise HTTPError(
                400, f"unknown parameter {unknown[0][:40]!r}: {known}", param=unknown[0][:40]
            )
        many = {name: query.getlist(name) for name in ("user", "team", "category")}
        for name, values in many.items():
            if len(values) > MAX_VALUES or any(len(v) > 200 for v in values):
                raise HTTPError(400, f"{name}: at most {MAX_VALUES} values of 200 characters", name)
        flags = {name: switch(query, name) for name in EXPORT_FLAGS}
        chosen = exporting.filters(
            router.config,
            users=many["user"],
            teams=many["team"],
            categories=many["category"],
            min_rating=query.get("min_rating", "unrated"),
            **{k: v for k, v in flags.items() if k != "metadata"},
        )
        since = query.get("since", "30d")
        done = await anyio.to_thread.run_sync(
            lambda: exporting.read(router.ledger, since, chosen, metadata=flags["metadata"])
        )
        summary = json.dumps(done.summary(), separators=(",", ":"))
        return Response(
            "".join(done.lines()),
            media_type="application/x-ndjson",
            headers={"X-Router-Export": summary},
        )

    return [
        Route(f"{PREFIX}/export", guarded(export_rows), methods=["GET"]),
        Route(f"{PREFIX}/limits", guarded(list_limits), methods=["GET"]),
        Route(f"{PREFIX}/limits", guarded(set_limit), methods=["PUT"]),
        Route(f"{PREFIX}/limits", guarded(remove_limit), methods=["DELETE"]),
        Route(f"{PREFIX}/keys", guarded(list_keys), methods=["GET"]),
        Route(f"{PREFIX}/keys", guarded(create_key), methods=["POST"]),
        Route(f"{PREFIX}/keys/{{key_id}}", guarded(change_key), methods=["PATCH"]),
        Route(f"{PREFIX}/keys/{{key_id}}", guarded(revoke_key), methods=["DELETE"]),
        Route(f"{PREFIX}/keys/{{key_id}}/rotate", guarded(rotate_key), methods=["POST"]),
        Route(f"{PREFIX}/budgets", guarded(list_budgets), methods=["GET"]),
        Route(f"{PREFIX}/budgets", guarded(set_budget), methods=["PUT"]),
        Route(f"{PREFIX}/budgets", guarded(remove_budget), methods=["DELETE"]),
    ]
