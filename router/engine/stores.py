"""Which store each part gets: Redis when `[shared] redis_url` (or $ROUTER_REDIS_URL) is set,
else the embedded files. The router and `router budget` open their stores here (API keys:
router.server.keys), so every command acts on the same state as the running replicas."""

from __future__ import annotations

from router.config import Config
from router.engine.cache import DiskResponseCache, ResponseCache
from router.governance.alerts import Alerts
from router.governance.budgets import BudgetStore
from router.governance.limits import Limits, MemoryLimits, Rules, RuleStore
from router.governance.waste import RepeatDetector
from router.ledger import Ledger, SQLiteLedger
from router.shared import Link
from router.shared.state import RedisRepeatDetector


def link_for(config: Config) -> Link | None:
    url = config.shared.resolved_redis_url()
    if url is None:
        return None
    return Link(url, config.shared.key_prefix, config.shared.timeout_seconds)


def shared_cache(config: Config, link: Link | None) -> ResponseCache:
    if link is None:
        return DiskResponseCache(
            config.cache_dir(),
            ttl_seconds=config.cache.ttl_seconds,
            size_limit_mb=config.cache.size_limit_mb,
        )
    from router.shared.cache import RedisResponseCache

    return RedisResponseCache(link, ttl_seconds=config.cache.ttl_seconds)


def repeat_detector(config: Config, link: Link | None) -> RepeatDetector:
    window = config.guardrails.repeat_window_seconds
    threshold = config.guardrails.repeat_threshold
    if link is None:
        return RepeatDetector(window, threshold)
    return RedisRepeatDetector(link, window, threshold)


def open_ledger(config: Config) -> Ledger:
    """PostgreSQL when [ledger] url (or $ROUTER_DATABASE_URL) is set, else the SQLite file."""
    url = config.ledger.resolved_url()
    if url is None:
        return SQLiteLedger(config.ledger_path())
    from router.shared import client_module
    from router.shared.postgres import PostgresLedger

    client_module("psycopg", "[ledger] url")
    return PostgresLedger(url, config.ledger_path().with_name("ledger-queue.sqlite3"))


def budget_store(config: Config, link: Link | None = None) -> BudgetStore:
    link = link or link_for(config)
    if link is None:
        return BudgetStore(config.governance_path(), config)
    from router.shared.budgets import RedisBudgetStore

    return RedisBudgetStore(link, config)


def rate_limits(config: Config, link: Link | None) -> Limits:
    """[[limits]]' windows: in this process, or on Redis (in total across replicas)."""
    if link is None:
        return MemoryLimits()
    from router.shared.limits import RedisLimits

    return RedisLimits(link)


def rate_rules(config: Config, link: Link | None = None) -> Rules:
    """models.toml's [[limits]] and those `router limits set` stored: beside the ledger
    (limits.sqlite3), or on Redis."""
    link = link or link_for(config)
    if link is None:
        return RuleStore(config.governance_path().with_name("limits.sqlite3"), config)
    from router.shared.limits import RedisRules

    return RedisRules(link, config)


def alerts_for(config: Config, link: Link | None = None) -> Alerts | None:
    """[alerts], or None without the section. With [shared] Redis each event is claimed there
    (SET NX with the window's expiry): one replica sends it."""
    if config.alerts is None:
        return None
    if link is None:
        return Alerts(config.alerts)
    from router.shared import errors

    here = Alerts(config.alerts)  # while Redis is down: claimed in this process

    def claim(key: str, window: float) -> bool:
        try:
            return bool(link.client.set(link.key("alerts", key), "1", nx=True, ex=int(window)))
        except errors() as exc:
            link.failed(exc)
            return here._claim_here(key, window)

    return Alerts(config.alerts, claim)
