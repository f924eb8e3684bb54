"""Waste audits over the ledger: who uses how much, on what, and what looks wrong.

Flags, each with its reason:
- `usage`: tokens at least USAGE_FACTOR × the average of the other accounts (needs a peer);
- `spike`: the last day's tokens at least SPIKE_FACTOR × the account's own daily average over
  the days before it in the window (needs two earlier days of history);
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
from router.rollups import NO_TEAM
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
            a.categories[r["category"]] = a.categories.get(r["category"], 0) + r["requests"]
    end = now if now is not None else max(r["last_ts"] for r in found)
    days = ledger.days(since, end, by, user=user, teams=teams if by == "team" else None)
    for name, a in accounts.items():
        # By count, then name: the same order whatever order the rows came in.
        a.categories = dict(sorted(a.categories.items(), key=lambda c: (-c[1], c[0])))
        peers = [p.tokens for p in accounts.values() if p.name != name]
        _flag(a, peers, days.get(name))
    return sorted(accounts.values(), key=lambda a: (-a.tokens, a.name))


UNRECORDED = "unrecorded"  # rows written before the ledger said why (migration 8)
_SUMS = ("requests", "tokens", "cost_usd", "usd_saved", "tokens_saved", "low_value", "last_ts")


def _flag(a: Account, peers: list[int], days: dict[str, int] | None) -> None:
    """Add the usage, spike and low-value flags that `a` earns; `days`: its tokens per day
    (router.rollups.select_days)."""
    if peers:
        average = sum(peers) / len(peers)
        if average > 0 and a.tokens >= USAGE_FACTOR * average:
            a.flags.append(
                f"usage: {a.tokens:,} tokens is {a.tokens / average:.1f}× the peer "
                f"average of {average:,.0f}"
            )
    if days is not None and days["active"] >= 2 and days["span"] >= 1:
        # The average over every day from the oldest to yesterday, quiet days included.
        baseline = days["earlier"] / days["span"]
        if baseline > 0 and days["today"] >= SPIKE_FACTOR * baseline:
            a.flags.append(
                f"spike: {days['today']:,} tokens in the last day is "
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
