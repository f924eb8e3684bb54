"""Waste audits over the ledger: who uses how much, on what, and what looks wrong.

The flags are about cost without value, not free tokens: `usage` and `spike` compare paid use
(dollars; cloud tokens where nothing has a price), and the local tokens are shown beside it.
Refused requests (a spent budget, a guardrail) are counted per account.

Flags, each with its reason:
- `usage`: paid dollars (or cloud tokens) at least USAGE_FACTOR × the average of the other
  accounts (needs a peer);
- `spike`: the last day's paid tokens at least SPIKE_FACTOR × the account's own daily average
  over the days before it in the window (needs two earlier days of history);
- `low-value`: at least LOW_VALUE_SHARE of the account's requests were flagged low-value
  (trivial documents, retry storms), with at least LOW_VALUE_MIN of them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from router.config import Config
from router.ledger import Sums
from router.ledger.rollups import NO_TEAM
from router.types import SAVED_BY
from router.units import money

USAGE_FACTOR = 4.0
SPIKE_FACTOR = 4.0
LOW_VALUE_SHARE = 0.25
LOW_VALUE_MIN = 3


@dataclass
class Account:
    name: str
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    usd_saved: float = 0.0
    tokens_saved: int = 0
    low_value: int = 0
    paid_tokens: int = 0  # cloud tokens that were not cache hits: what cost money
    local_tokens: int = 0  # answered on the local tier: free
    cache_read_tokens: int = 0  # of the paid prompts: read from the provider's prompt cache
    refusals: int = 0  # requests refused: a spent budget, a guardrail
    # Dollars saved, by why the answer cost less (router.types.SAVED_BY): only "routed" is the
    # estimator's doing; "fallback" is money saved because the cloud failed or could not be used.
    saved_by: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SAVED_BY, 0.0))
    categories: dict[str, int] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # "kind: reason"

    @property
    def low_value_share(self) -> float:
        return self.low_value / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "low_value_share": round(self.low_value_share, 4)}


def memberships(config: Config) -> dict[str, list[str]]:
    """Each user named in a team, and their teams."""
    users = {u for team in config.teams.values() for u in team.users}
    return {u: config.teams_of(u) for u in sorted(users)}


def audit(
    ledger: Sums,
    config: Config,
    by: str = "user",
    *,
    since: float = 0.0,
    now: float | None = None,
    user: str | None = None,
) -> list[Account]:
    """Every account's figures and flags over the ledger's rows since `since` (of `user` only,
    when given), from two SQL rollups: per user and category, and per account and day."""
    if by not in ("user", "team"):
        raise ValueError(f"audit by {by!r}: choose user or team")
    found = ledger.rollup(since, ["user", "category", "saved_by"], sums=_SUMS, user=user)
    if not found:
        return []
    teams = memberships(config)
    accounts: dict[str, Account] = {}
    for r in found:
        names = [r["user"]] if by == "user" else teams.get(r["user"], [NO_TEAM])
        for name in names:
            a = accounts.setdefault(name, Account(name))
            a.requests += r["requests"]
            a.tokens += r["tokens"]
            a.cost_usd += r["cost_usd"]
            a.usd_saved += r["usd_saved"]
            a.tokens_saved += r["tokens_saved"]
            why = r["saved_by"] or UNRECORDED
            a.saved_by[why] = a.saved_by.get(why, 0.0) + r["usd_saved"]
            a.low_value += r["low_value"]
            a.paid_tokens += r["paid_tokens"] or 0
            a.local_tokens += r["local_tokens"] or 0
            a.cache_read_tokens += r["cache_read_tokens"] or 0
            a.refusals += r["refusals"] or 0
            a.categories[r["category"]] = a.categories.get(r["category"], 0) + r["requests"]
    end = now if now is not None else max(r["last_ts"] for r in found)
    days = ledger.days(since, end, by, user=user, teams=teams if by == "team" else None)
    for name, a in accounts.items():
        # By count, then name: the same order whatever order the rows came in.
        a.categories = dict(sorted(a.categories.items(), key=lambda c: (-c[1], c[0])))
        priced = any(p.cost_usd > 0 for p in accounts.values())
        peers = [_paid(p, priced) for p in accounts.values() if p.name != name]
        _flag(a, priced, peers, days.get(name))
    return sorted(accounts.values(), key=lambda a: (-a.tokens, a.name))


UNRECORDED = "unrecorded"  # rows written before the ledger said why (migration 8)
_SUMS = (
    "requests", "tokens", "cost_usd", "usd_saved", "tokens_saved", "low_value", "last_ts",
    "paid_tokens", "local_tokens", "cache_read_tokens", "refusals",
)  # fmt: skip


def _paid(a: Account, priced: bool) -> float:
    """What `a` used that cost money: dollars, or cloud tokens where nothing has a price."""
    return a.cost_usd if priced else float(a.paid_tokens)


def _flag(a: Account, priced: bool, peers: list[float], days: dict[str, int] | None) -> None:
    """Add the usage, spike and low-value flags that `a` earns; `days`: its paid tokens per
    day (router.ledger.rollups.select_days)."""
    if peers:
        average = sum(peers) / len(peers)
        mine = _paid(a, priced)
        if average > 0 and mine >= USAGE_FACTOR * average:
            said = (
                (money(mine), money(average))
                if priced
                else (f"{mine:,.0f} cloud tokens", f"{average:,.0f}")
            )
            a.flags.append(
                f"usage: {said[0]} paid is {mine / average:.1f}× the peer average of "
                f"{said[1]} (local tokens: {a.local_tokens:,})"
            )
    if days is not None and days["active"] >= 2 and days["span"] >= 1:
        # The average over every day from the oldest to yesterday, quiet days included.
        baseline = days["earlier"] / days["span"]
        if baseline > 0 and days["today"] >= SPIKE_FACTOR * baseline:
            a.flags.append(
                f"spike: {days['today']:,} paid tokens in the last day is "
                f"{days['today'] / baseline:.1f}× its own daily average of {baseline:,.0f}"
            )
    if a.low_value >= LOW_VALUE_MIN and a.low_value_share >= LOW_VALUE_SHARE:
        a.flags.append(
            f"low-value: {a.low_value} of {a.requests} requests "
            f"({a.low_value_share:.0%}) were low-value"
        )


COLUMNS = (
    "account",
    "requests",
    "tokens",
    "cost_usd",
    "paid_tokens",
    "local_tokens",
    "refusals",
    "usd_saved",
    "saved_by",  # CSV: one usd_saved_<why> column per reason instead
    "low_value_share",
    "top_categories",
    "flags",
)
CSV_COLUMNS = tuple(
    c2 for c in COLUMNS for c2 in ([f"usd_saved_{w}" for w in SAVED_BY] if c == "saved_by" else [c])
)


def _row(a: Account, raw: bool = False) -> list[str]:
    """A report row; `raw` keeps numbers plain, one column per reason saved (CSV, for
    spreadsheets)."""
    top = ", ".join(f"{c} {n}" for c, n in list(a.categories.items())[:3])
    usd = (lambda v: repr(v)) if raw else money
    saved_by = (
        [usd(a.saved_by.get(w, 0.0)) for w in SAVED_BY]
        if raw
        else [", ".join(f"{why} {money(v)}" for why, v in a.saved_by.items() if v)]
    )
    return [
        a.name,
        str(a.requests),
        str(a.tokens),
        usd(a.cost_usd),
        str(a.paid_tokens),
        str(a.local_tokens),
        str(a.refusals),
        usd(a.usd_saved),
        *saved_by,
        f"{a.low_value_share:.0%}",
        top,
        "; ".join(a.flags),
    ]


def render(accounts: list[Account], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([a.to_dict() for a in accounts], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(_row(a, raw=True) for a in accounts)
        return out.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|") for c in _row(a)) + " |" for a in accounts
        ]
        return "\n".join(lines)
    raise ValueError(f"format {fmt!r}: choose table, markdown, json or csv")
