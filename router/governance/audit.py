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
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from router.config import Config
from router.ledger import Entry
from router.units import money

USAGE_FACTOR = 4.0
SPIKE_FACTOR = 4.0
LOW_VALUE_SHARE = 0.25
LOW_VALUE_MIN = 3
DAY = 86400.0
ANONYMOUS = "(anonymous)"
NO_TEAM = "(no team)"


@dataclass
class Account:
    name: str
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    usd_saved: float = 0.0
    tokens_saved: int = 0
    low_value: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # "kind: reason"

    @property
    def low_value_share(self) -> float:
        return self.low_value / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "low_value_share": round(self.low_value_share, 4)}


def _accounts_of(entry: Entry, by: str, config: Config) -> list[str]:
    user = entry.user or ANONYMOUS
    if by == "user":
        return [user]
    return config.teams_of(entry.user) or [NO_TEAM]


def audit(
    entries: list[Entry], config: Config, by: str = "user", now: float | None = None
) -> list[Account]:
    if by not in ("user", "team"):
        raise ValueError(f"audit by {by!r}: choose user or team")
    accounts: dict[str, Account] = {}
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    daily: dict[str, Counter[int]] = defaultdict(Counter)
    end = now if now is not None else max((e.ts for e in entries), default=0.0)
    for e in entries:
        tokens = e.prompt_tokens + e.completion_tokens
        for name in _accounts_of(e, by, config):
            a = accounts.setdefault(name, Account(name))
            a.requests += 1
            a.tokens += tokens
            a.cost_usd += e.cost_usd
            a.usd_saved += e.usd_saved
            a.tokens_saved += e.tokens_saved
            a.low_value += bool(e.flags)
            categories[name][e.category] += 1
            daily[name][int((end - e.ts) // DAY)] += tokens  # 0 = the last 24 hours
    for name, a in accounts.items():
        a.categories = dict(categories[name].most_common())
        peers = [p.tokens for p in accounts.values() if p.name != name]
        if peers:
            average = sum(peers) / len(peers)
            if average > 0 and a.tokens >= USAGE_FACTOR * average:
                a.flags.append(
                    f"usage: {a.tokens:,} tokens is {a.tokens / average:.1f}× the peer "
                    f"average of {average:,.0f}"
                )
        days = daily[name]
        earlier = [days[d] for d in range(1, max(days) + 1)] if days else []
        if len([d for d in earlier if d]) >= 2:
            baseline = sum(earlier) / len(earlier)
            if baseline > 0 and days[0] >= SPIKE_FACTOR * baseline:
                a.flags.append(
                    f"spike: {days[0]:,} tokens in the last day is "
                    f"{days[0] / baseline:.1f}× its own daily average of {baseline:,.0f}"
                )
        if a.low_value >= LOW_VALUE_MIN and a.low_value_share >= LOW_VALUE_SHARE:
            a.flags.append(
                f"low-value: {a.low_value} of {a.requests} requests "
                f"({a.low_value_share:.0%}) were low-value"
            )
    return sorted(accounts.values(), key=lambda a: (-a.tokens, a.name))


COLUMNS = (
    "account",
    "requests",
    "tokens",
    "cost_usd",
    "usd_saved",
    "low_value_share",
    "top_categories",
    "flags",
)


def _row(a: Account, raw: bool = False) -> list[str]:
    """A report row; `raw` keeps numbers plain (CSV, for spreadsheets)."""
    top = ", ".join(f"{c} {n}" for c, n in list(a.categories.items())[:3])
    usd = (lambda v: repr(v)) if raw else money
    return [
        a.name,
        str(a.requests),
        str(a.tokens),
        usd(a.cost_usd),
        usd(a.usd_saved),
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
        writer.writerow(COLUMNS)
        writer.writerows(_row(a, raw=True) for a in accounts)
        return out.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|") for c in _row(a)) + " |" for a in accounts
        ]
        return "\n".join(lines)
    raise ValueError(f"format {fmt!r}: choose table, markdown, json or csv")
