"""The savings dashboard: what the router saved, and for whom.

`summary()` builds every figure the page shows from the ledger, the configuration and the
budget store, with the same functions as the CLI: its `stats` is `router stats --json` and its
`audit` is `router audit --format json` for the same window. `GET /v1/router/summary` serves it,
`GET /dashboard` is the page that polls it, and `router report --html FILE` writes the page
with the figures inside, as one file that needs nothing else. No CDN: the page is plain HTML,
CSS and JavaScript (`page.html`), its charts inline SVG.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any

from router.config import Config, LocalModel
from router.governance import audit as audit_mod
from router.governance.budgets import BudgetStore, budget_rows, scopes_of
from router.governance.quality import headline
from router.governance.quality import report as quality_report
from router.ledger import Sums, parse_since, summary_of, totals_of
from router.ledger.rollups import slot, total

WINDOWS = ("24h", "7d", "30d")
_EMBED = "/*SUMMARY*/null"


MAX_BUCKETS = 500  # hourly up to two days, else daily: at most MAX_WINDOW_DAYS + 1 bars


def stats_report(
    ledger: Sums,
    since: str,
    start: float,
    by: str,
    *,
    totals: dict[str, Any] | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """`router stats --json`: the sums of the window from `start` (`since` as the user wrote
    it), its groups `by`, and the judged acceptable rate of its local answers."""
    totals = totals if totals is not None else ledger.totals(start, user=user)
    return {
        "since": since,
        **totals,
        "cache_hit_rate": totals["cache_hits"] / totals["requests"] if totals["requests"] else 0.0,
        "by": by,
        "groups": ledger.summary(start, by, user=user),
        "quality": headline(ledger, start, user=user),
    }


def summary(
    config: Config,
    ledger: Sums,
    budgets: BudgetStore,
    since: str = "7d",
    *,
    user: str | None = None,
) -> dict[str, Any]:
    """Every figure of the dashboard for the window `since` (24h, 7d, 30d...); with `user`,
    only that user's own (a user's key sees nothing of anyone else). Each figure is a SQL
    rollup: the cost is a scan of the window's rows, never an object per row."""
    start = parse_since(since, "since")  # RequestError names a bad window
    ledger = _Once(ledger)  # the audits by user and by team read the same rollup, ...
    totals = ledger.totals(start, user=user)
    rate = totals["cache_hits"] / totals["requests"] if totals["requests"] else 0.0
    local = totals["by_tier"].get("local", 0)
    return {
        "since": since,
        "window_start": start,
        "generated": time.time(),
        "baseline": config.router.baseline,
        "headline": {
            "requests": totals["requests"],
            "local_share": local / totals["requests"] if totals["requests"] else 0.0,
            "cache_hit_rate": rate,
            "tokens_saved": totals["tokens_saved"],
            "usd_saved": totals["usd_saved"],
            # Of it, what local answers saved where the score wanted the cloud (it failed, had
            # no key, a budget kept the request local): savings nobody chose (saved_by).
            "usd_saved_fallback": totals["saved_by"]["fallback"]["usd_saved"],
            "cost_usd": totals["cost_usd"],
            # Of the requests, those refused (a spent budget, a guardrail), and the prompt
            # tokens the providers read from their caches (priced at a tenth or so).
            "refusals": totals["refusals"],
            "cache_read_tokens": totals["cache_read_tokens"],
        },
        # Exactly `router stats --since S --json` and `router audit --since S --format json`.
        "stats": stats_report(ledger, since, start, "tier", totals=totals, user=user),
        "audit": {
            by: [a.to_dict() for a in audit_mod.audit(ledger, config, by, since=start, user=user)]
            for by in ("user", "team")
        },
        "budgets": budget_rows(budgets, scopes=None if user is None else scopes_of(config, user)),
        "categories": ledger.summary(start, "category", user=user),
        "over_time": over_time(ledger, start, user),
        "ceilings": ceilings(config, ledger, start, user),
        # `router quality --json` for the window.
        "quality": quality_report(ledger, config, since=start, user=user),
    }


class _Once:
    """A ledger whose rollups are each read once (for one summary)."""

    def __init__(self, ledger: Sums) -> None:
        self._ledger = ledger
        self._seen: dict[str, Any] = {}

    def rollup(self, since: float, keys: Sequence[str] = (), **kwargs: Any) -> Any:
        return self._once("rollup", since, tuple(keys), **kwargs)

    def days(self, *args: Any, **kwargs: Any) -> Any:
        return self._once("days", *args, **kwargs)

    def summary(self, since: float | None = None, by: str | None = None, **kwargs: Any) -> Any:
        return summary_of(self, since, by, kwargs.get("user"))

    def totals(self, since: float | None = None, **kwargs: Any) -> Any:
        return totals_of(self, since, kwargs.get("user"))

    def _once(self, method: str, *args: Any, **kwargs: Any) -> Any:
        key = repr((method, args, sorted(kwargs.items())))
        if key not in self._seen:
            self._seen[key] = getattr(self._ledger, method)(*args, **kwargs)
        return self._seen[key]


def over_time(ledger: Sums, start: float, user: str | None = None) -> dict[str, Any]:
    """Requests, tokens and dollars saved by tier per hour (windows up to two days) or per
    day, oldest first, every bucket of the window present (at most MAX_BUCKETS)."""
    now = time.time()
    step = 3600 if now - start <= 2 * 86400 else 86400
    last = int(now // step) * step
    first = max(int(start // step) * step, last - (MAX_BUCKETS - 1) * step)
    slots = range(first, last + step, step)
    key = slot(step)
    buckets: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    sums = ("tokens_saved", "usd_saved")
    for r in ledger.rollup(start, [key, "tier"], sums=sums, user=user):
        buckets[int(r[key])][r["tier"]] = {
            "requests": r["requests"],
            "tokens_saved": r["tokens_saved"],
            "usd_saved": r["usd_saved"],
        }
    return {
        "step_seconds": step,
        "buckets": [{"start": s, "tiers": buckets.get(s, {})} for s in slots],
    }


def ceilings(
    config: Config, ledger: Sums, start: float, user: str | None = None
) -> list[dict[str, Any]]:
    """Each enabled local model's ceiling, the share of the window's requests scored at or
    under it, and the share it actually answered (cache hits left out)."""
    local = [
        (n, m)
        for n, m in config.enabled().items()
        if isinstance(m, LocalModel) and not m.embeddings
    ]
    found = [
        r
        for r in ledger.rollup(
            start,
            ["model", "cache_hit"],
            sums=(),
            user=user,
            ceilings=[m.max_score for _, m in local],
        )
        if not r["cache_hit"]
    ]
    scored = total(found, "requests")
    out = []
    for i, (name, m) in enumerate(local):
        under = total(found, f"under_{i}")
        answered = sum(r["requests"] for r in found if r["model"] == name)
        out.append(
            {
                "model": name,
                "ceiling": m.max_score,
                "share_under_ceiling": under / scored if scored else 0.0,
                "share_answered": answered / scored if scored else 0.0,
            }
        )
    return out


def page(embedded: dict[str, Any] | None = None) -> str:
    """The dashboard page; with `embedded`, the figures are inside it (a report file)."""
    html = resources.files("router.dashboard").joinpath("page.html").read_text(encoding="utf-8")
    if embedded is None:
        return html
    return html.replace(_EMBED, script_json(embedded), 1)


# Inside <script>, text such as "</script>" ends the element and "<!--" switches the HTML
# parser's state; U+2028 and U+2029 end a line in old JavaScript. JSON may write any of them
# as \u escapes, which mean the same characters to JSON.parse and to JavaScript.
_SCRIPT_SAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(value: Any) -> str:
    """`value` as JSON that is safe to place inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).translate(_SCRIPT_SAFE)
