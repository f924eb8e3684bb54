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
from importlib import resources
from typing import Any

from router.config import Config, LocalModel
from router.governance import audit as audit_mod
from router.governance.budgets import BudgetStore, budget_rows
from router.governance.quality import report as quality_report
from router.ledger import Entry, Ledger, parse_since

WINDOWS = ("24h", "7d", "30d")
_EMBED = "/*SUMMARY*/null"


def summary(
    config: Config, ledger: Ledger, budgets: BudgetStore, since: str = "7d"
) -> dict[str, Any]:
    """Every figure of the dashboard for the window `since` (24h, 7d, 30d...)."""
    start = parse_since(since)  # RequestError names a bad window
    totals = ledger.totals(start)
    rate = totals["cache_hits"] / totals["requests"] if totals["requests"] else 0.0
    entries = ledger.entries(start)
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
            "cost_usd": totals["cost_usd"],
        },
        # Exactly `router stats --since S --json` and `router audit --since S --format json`.
        "stats": {
            "since": since,
            **totals,
            "cache_hit_rate": rate,
            "by": "tier",
            "groups": ledger.summary(start, "tier"),
        },
        "audit": {
            "user": [a.to_dict() for a in audit_mod.audit(entries, config, "user")],
            "team": [a.to_dict() for a in audit_mod.audit(entries, config, "team")],
        },
        "budgets": budget_rows(budgets),
        "categories": ledger.summary(start, "category"),
        "over_time": over_time(entries, start),
        "ceilings": ceilings(config, entries),
        "quality": quality_report(entries, config),  # `router quality --json` for the window
    }


def over_time(entries: list[Entry], start: float) -> dict[str, Any]:
    """Requests, tokens and dollars saved by tier per hour (windows up to two days) or per
    day, oldest first, every bucket of the window present."""
    now = time.time()
    step = 3600 if now - start <= 2 * 86400 else 86400
    first = int(start // step) * step
    buckets: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    for e in entries:
        slot = int(e.ts // step) * step
        tier = buckets[slot].setdefault(
            e.tier, {"requests": 0, "tokens_saved": 0, "usd_saved": 0.0}
        )
        tier["requests"] += 1
        tier["tokens_saved"] += e.tokens_saved
        tier["usd_saved"] += e.usd_saved
    slots = range(first, int(now // step) * step + step, step)
    return {
        "step_seconds": step,
        "buckets": [{"start": slot, "tiers": buckets.get(slot, {})} for slot in slots],
    }


def ceilings(config: Config, entries: list[Entry]) -> list[dict[str, Any]]:
    """Each enabled local model's ceiling, the share of the window's requests scored at or
    under it, and the share it actually answered."""
    scored = [e for e in entries if not e.cache_hit]
    out = []
    for name, m in config.enabled().items():
        if not isinstance(m, LocalModel):
            continue
        under = sum(e.score <= m.max_score for e in scored)
        answered = sum(e.model == name for e in scored)
        out.append(
            {
                "model": name,
                "ceiling": m.max_score,
                "share_under_ceiling": under / len(scored) if scored else 0.0,
                "share_answered": answered / len(scored) if scored else 0.0,
            }
        )
    return out


def page(embedded: dict[str, Any] | None = None) -> str:
    """The dashboard page; with `embedded`, the figures are inside it (a report file)."""
    html = resources.files("router.dashboard").joinpath("page.html").read_text(encoding="utf-8")
    if embedded is None:
        return html
    # Inside <script>: "</" must not end the element early.
    data = json.dumps(embedded, ensure_ascii=False).replace("</", "<\\/")
    return html.replace(_EMBED, data, 1)
