"""State shared by several router replicas, on Redis (`[shared] redis_url` or
$ROUTER_REDIS_URL): the response cache, budget reservations, rate limits, the repeat detector
and API keys.

Each store implements the seam its embedded default does (router.engine.cache.ResponseCache,
router.governance.budgets.BudgetStore, router.governance.waste.RepeatDetector,
router.server.keys.KeyStore), so the pipeline does not know which one it has. `Link` is the
connection and its health: every store reports failures to it, `/health` and `/metrics` read
it, and the next successful call marks Redis up again.

What each feature does while Redis is down (docs/scaling.md): the cache is skipped (answers
come from the models); the repeat detector and rate limits count in process; budgets follow
`on_redis_down` ("local-only" answers budgeted users locally, "refuse" refuses their cloud
calls), never unlimited; API keys cannot be checked, so keyed requests get 503.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from router.reachability import Reachability, safe_url

if TYPE_CHECKING:
    import redis

__all__ = ["Link", "Reachability", "client_module", "errors", "safe_url"]
log = logging.getLogger("router.shared")


class Link(Reachability):
    """One Redis connection pool and whether Redis answered last time."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        library = client_module("redis", "[shared] redis_url")
        super().__init__("Redis", url)
        self.prefix = prefix
        self.client: redis.Redis = library.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            health_check_interval=30,
        )

        self._url, self._timeout = url, timeout
        self._async: tuple[Any, Any] | None = None  # (event loop, redis.asyncio client)
        self._lean: tuple[Any, Any] | None = None  # (event loop, router.shared.resp.LoopRedis)

    def async_client(self) -> Any:
        """A redis.asyncio client for the running event loop (the server's): a cache hit is
        read there without a thread and without blocking the loop while Redis answers."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            from redis import asyncio as aredis

            client = aredis.Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                decode_responses=True,
            )
            self._async = (loop, client)
        return self._async[1]

    def lean_client(self) -> Any:
        """The lean connection (router.shared.resp.LoopRedis) for the running event loop, for
        a cache hit's one round trip; None for a URL it does not speak (then async_client)."""
        import asyncio

        from router.shared.resp import LoopRedis

        if not LoopRedis.speaks(self._url):
            return None
        loop = asyncio.get_running_loop()
        if self._lean is None or self._lean[0] is not loop:
            self._lean = (loop, LoopRedis(self._url, self._timeout))
        return self._lean[1]

    def lean_here(self) -> Any:
        """The lean connection when called on the event loop it is open on (None elsewhere:
        a worker thread, or no connection yet)."""
        import asyncio

        lean = self._lean
        if lean is None:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return lean[1] if lean[0] is loop and lean[1].connected else None

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def ping(self) -> bool:
        """Ask Redis now (health checks): a replica idle since Redis failed learns it is back."""
        try:
            self.client.ping()
        except errors() as exc:
            self.failed(exc)
            return False
        self.ok()
        return True

    def health(self) -> dict[str, Any]:
        return {"redis": self.safe_url, **self.state()}

    def close(self) -> None:
        self.client.close()
        self._async = None  # its connections belong to the server's loop, gone with it
        if self._lean is not None:
            self._lean[1].close()
            self._lean = None


def client_module(name: str, setting: str) -> Any:
    """The client package a shared store needs, or ConfigError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        from router.errors import ConfigError

        raise ConfigError(
            f"{setting} needs the {name} package: pip install 'router[shared]' "
            "(or pip install -c requirements.lock '.[shared]' in a checkout)"
        ) from None


def errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is unreachable or refuses."""
    import redis

    return (redis.RedisError, OSError)
