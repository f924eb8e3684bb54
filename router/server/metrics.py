"""Prometheus text-format metrics, kept in process (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

from router.types import Routing

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._cache_hits = 0
        self._tokens_saved = 0
        self._usd_saved = 0.0
        self._usd_cost = 0.0
        self._cache_read = 0  # prompt tokens read from providers' prompt caches
        self._cache_write = 0
        self._kv_reused = 0  # local prompt tokens reused from the model's KV cache
        self._refusals: dict[str, int] = defaultdict(int)  # by kind: budget, guardrail
        self._limited: dict[str, int] = defaultdict(int)  # by rate limit: "user:ana rpm"
        self._latency: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._latency_sum: dict[str, float] = defaultdict(float)

    def observe(
        self,
        status: int,
        seconds: float,
        routing: Routing | None = None,
        api: str = "chat",
        refusal: str = "",
        limit: str = "",
    ) -> None:
        tier = routing.tier if routing else "none"
        with self._lock:
            if refusal:
                self._refusals[refusal] += 1
            if limit:  # one series a limit reached, a bounded number of them
                known = limit in self._limited or len(self._limited) < MAX_LIMIT_SERIES
                self._limited[limit if known else "other"] += 1
            self._requests[(api, tier, str(status))] += 1
            self._latency[tier][bisect.bisect_left(BUCKETS, seconds)] += 1  # its own bucket
            self._latency_sum[tier] += seconds
            if routing is not None:
                self._cache_hits += int(routing.cache_hit)
                self._tokens_saved += routing.tokens_saved
                self._usd_saved += routing.usd_saved
                self._usd_cost += routing.cost_usd
                self._cache_read += routing.cache_read_tokens
                self._cache_write += routing.cache_write_tokens
                self._kv_reused += routing.prompt_cached_tokens

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP router_requests_total Requests by API, tier and HTTP status.",
                "# TYPE router_requests_total counter",
            ]
            for (api, tier, status), n in sorted(self._requests.items()):
                labels = f'api="{api}",tier="{tier}",status="{status}"'
                out.append(f"router_requests_total{{{labels}}} {n}")
            for name, kind, value, help_text in (
                ("router_cache_hits_total", "counter", self._cache_hits, "Answers from cache."),
                (
                    "router_tokens_saved_total",
                    "counter",
                    self._tokens_saved,
                    "Tokens not sent to a paid provider.",
                ),
                (
                    "router_usd_saved_total",
                    "counter",
                    self._usd_saved,
                    "Dollars saved against the baseline model.",
                ),
                ("router_usd_cost_total", "counter", self._usd_cost, "Dollars paid."),
                (
                    "router_provider_cache_read_tokens_total",
                    "counter",
                    self._cache_read,
                    "Prompt tokens the providers read from their prompt caches.",
                ),
                (
                    "router_provider_cache_write_tokens_total",
                    "counter",
                    self._cache_write,
                    "Prompt tokens the providers wrote to their prompt caches.",
                ),
                (
                    "router_local_prompt_cached_tokens_total",
                    "counter",
                    self._kv_reused,
                    "Prompt tokens local models reused from their KV cache, not read again.",
                ),
            ):
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
            out += [
                "# HELP router_refusals_total Requests refused, by why (budget, guardrail).",
                "# TYPE router_refusals_total counter",
            ]
            out += [
                f'router_refusals_total{{kind="{k}"}} {n}'
                for k, n in sorted(self._refusals.items())
            ]
            out += [
                "# HELP router_rate_limited_total Requests refused by a rate limit, by limit.",
                "# TYPE router_rate_limited_total counter",
            ]
            out += [
                f"router_rate_limited_total{{limit={label(k)}}} {n}"
                for k, n in sorted(self._limited.items())
            ]
            out += [
                "# HELP router_request_duration_seconds Time to answer (to the end of a stream).",
                "# TYPE router_request_duration_seconds histogram",
            ]
            hist = "router_request_duration_seconds"
            for tier, counts in sorted(self._latency.items()):
                bounds = [str(b) for b in BUCKETS] + ["+Inf"]
                below = 0  # Prometheus's buckets are cumulative: each counts all below it
                for bound, n in zip(bounds, counts, strict=True):
                    below += n
                    out.append(f'{hist}_bucket{{tier="{tier}",le="{bound}"}} {below}')
                out.append(f'{hist}_sum{{tier="{tier}"}} {self._latency_sum[tier]}')
                out.append(f'{hist}_count{{tier="{tier}"}} {below}')
        return "\n".join(out) + "\n"


def endpoint_gauges(runtimes: dict[str, dict[str, Any]]) -> str:
    """Each remote local model's endpoints: up (1) or ejected (0), requests in flight,
    failures so far. `runtimes` maps model names to `Router.local_runtime`."""
    out = [
        "# HELP router_endpoint_up A local model's server endpoint: 1 up, 0 ejected.",
        "# TYPE router_endpoint_up gauge",
    ]
    in_flight = ["# TYPE router_endpoint_in_flight gauge"]
    failures = ["# TYPE router_endpoint_failures_total counter"]
    for model, runtime in sorted(runtimes.items()):
        for e in runtime.get("endpoints") or []:
            labels = f'model="{_label(model)}",endpoint="{_label(str(e["url"]))}"'
            out.append(f"router_endpoint_up{{{labels}}} {int(e['state'] != 'ejected')}")
            in_flight.append(f"router_endpoint_in_flight{{{labels}}} {e['in_flight']}")
            failures.append(f"router_endpoint_failures_total{{{labels}}} {e['failures']}")
    if len(out) == 2:
        return ""
    return "\n".join(out + in_flight + failures) + "\n"


def shadow_counters(counts: dict[str, int]) -> str:
    """Shadow judging's jobs by outcome (sampled, judged, capped, failed, local-busy...)."""
    if not counts:
        return ""
    out = [
        "# HELP router_shadow_jobs_total Shadow judging jobs by outcome.",
        "# TYPE router_shadow_jobs_total counter",
    ]
    for outcome, n in sorted(counts.items()):
        out.append(f'router_shadow_jobs_total{{outcome="{_label(outcome)}"}} {n}')
    return "\n".join(out) + "\n"


def redis_gauges(up: bool, errors: int) -> str:
    """[shared] Redis: reachable at the last call (1) or not (0), and failed calls so far."""
    return (
        "# HELP router_redis_up Shared state on Redis: 1 reachable at the last call, 0 not.\n"
        "# TYPE router_redis_up gauge\n"
        f"router_redis_up {int(up)}\n"
        "# HELP router_redis_errors_total Redis calls that failed.\n"
        "# TYPE router_redis_errors_total counter\n"
        f"router_redis_errors_total {errors}\n"
    )


MAX_LIMIT_SERIES = 10_000


def label(value: str) -> str:
    """A Prometheus label value, quoted and escaped (a user's name may hold anything)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def budget_gauges(rows: list[dict[str, Any]]) -> str:
    """Each budget's used share of each of its limits this day, month or session (rows of
    router.governance.budgets.budget_rows): 1 is spent."""
    out = [
        "# HELP router_budget_used_ratio A budget's use over its limit (1: spent).",
        "# TYPE router_budget_used_ratio gauge",
    ]
    for r in rows:
        for name, used in r["used"].items():
            limit = r["limits"][name]
            share = used / limit if limit else float(used > 0)
            out.append(
                f"router_budget_used_ratio{{scope={label(r['scope'])},limit={label(name)}}} "
                f"{share:.6g}"
            )
    return "\n".join(out) + "\n"


def ledger_gauges(health: dict[str, Any]) -> str:
    """The ledger: taking rows at the last write (1) or not (0), and writes that failed (each
    a paid call refused, or a free answer served without its row)."""
    return (
        "# HELP router_ledger_up The ledger took the last row written: 1 yes, 0 no.\n"
        "# TYPE router_ledger_up gauge\n"
        f"router_ledger_up {int(bool(health.get('up')))}\n"
        "# HELP router_ledger_write_failures_total Ledger writes that failed.\n"
        "# TYPE router_ledger_write_failures_total counter\n"
        f"router_ledger_write_failures_total {int(health.get('write_failures') or 0)}\n"
    )


def cache_gauges(health: dict[str, Any]) -> str:
    """The response cache: its last read or write worked (1) or not (0), and the reads and
    writes that failed (each a hit lost or an answer left uncached, never an answer lost)."""
    return (
        "# HELP router_cache_up The response cache's last read or write worked: 1 yes, 0 no.\n"
        "# TYPE router_cache_up gauge\n"
        f"router_cache_up {int(bool(health.get('up')))}\n"
        "# HELP router_cache_failures_total Response cache reads and writes that failed.\n"
        "# TYPE router_cache_failures_total counter\n"
        f"router_cache_failures_total {int(health.get('errors') or 0)}\n"
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
