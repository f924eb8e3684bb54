"""`router export`: the ledger's stored conversations as a clean fine-tuning set.

A company that later fine-tunes on its prompt logs wants the work people did, not the
greetings, the repeats and the answers that broke off. With `[router] store_prompts = true`
each row keeps its messages and its answer; `export` turns the rows that pass every filter
into chat-format training records (one JSON object per line, OpenAI's fine-tuning shape):

    {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}

The filters run in this order, and each says how many of the rows still in hand it removed:

    unfinished        a paid call the router did not see end (a pending row)
    refused           a refusal (budget, rate limit, guardrail): no answer
    not stored        no messages or no answer kept (store_prompts was off; an embedding)
    other users       --user / --team
    cache hits        a repeat answered from the cache (kept with --include-cache-hits)
    flagged           low-value or repeat (`router audit`'s flags; kept with --include-flagged)
    cut               the answer broke off: the client left, the stream or the model failed,
                      the local model repeated itself
    other categories  --category
    rating            rated bad, or with --min-rating good: not rated good
    verdict           judged unacceptable by shadow judging, or with --judged-acceptable:
                      not judged acceptable
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.config import Config
from router.errors import RequestError
from router.ledger import Entry, Ledger, parse_since
from router.types import check_category

RATINGS = ("unrated", "good")  # --min-rating: "unrated" drops the bad, "good" keeps the good
CUT = ("answer cut", "client disconnected", "stream stopped", "answer stopped")
STEPS = (
    "unfinished",
    "refused",
    "not stored",
    "other users",
    "cache hits",
    "flagged",
    "cut",
    "other categories",
    "rating",
    "verdict",
)


@dataclass(frozen=True)
class Filters:
    users: frozenset[str] | None = None  # --user / --team: None keeps everyone
    categories: frozenset[str] | None = None
    min_rating: str = "unrated"
    judged_acceptable: bool = False
    include_flagged: bool = False
    include_cache_hits: bool = False

    def __post_init__(self) -> None:
        if self.min_rating not in RATINGS:
            raise RequestError(
                f"min rating {self.min_rating!r}: choose unrated (leave out answers rated bad) "
                "or good (only answers rated good)",
                param="min_rating",
            )


@dataclass
class Export:
    records: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0  # the rows the ledger gave (those since --since)
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))

    def summary(self) -> dict[str, Any]:
        return {"read": self.read, "removed": self.removed, "exported": len(self.records)}

    def lines(self) -> Iterable[str]:
        for record in self.records:
            yield json.dumps(record, ensure_ascii=False) + "\n"


def export(rows: Iterable[Entry], filters: Filters, *, metadata: bool = False) -> Export:
    """The records of `rows` that pass `filters` (see the module), oldest first."""
    out = Export()
    for row in sorted(rows, key=lambda r: r.ts):
        out.read += 1
        step = _removed_by(row, filters)
        if step is not None:
            out.removed[step] += 1
            continue
        record = _record(row)
        if record is None:  # stored text that is not a conversation (a row hand-edited)
            out.removed["not stored"] += 1
            continue
        if metadata:
            record["metadata"] = {
                "id": row.response_id,
                "user": row.user,
                "ts": row.ts,
                "model": row.model,
                "tier": row.tier,
                "category": row.category,
                "rating": row.rating,
                "verdict": row.verdict,
            }
        out.records.append(record)
    return out


def _removed_by(row: Entry, f: Filters) -> str | None:
    checks: Sequence[tuple[str, bool]] = (
        ("unfinished", row.pending),
        ("refused", bool(row.refusal)),
        ("not stored", not row.prompt or not row.answer),
        ("other users", f.users is not None and row.user not in f.users),
        ("cache hits", row.cache_hit and not f.include_cache_hits),
        ("flagged", bool(row.flags) and not f.include_flagged),
        ("cut", row.saved_by == "looped" or any(word in row.reason for word in CUT)),
        ("other categories", f.categories is not None and row.category not in f.categories),
        ("rating", row.rating == "bad" or (f.min_rating == "good" and row.rating != "good")),
        (
            "verdict",
            row.verdict == "unacceptable" or (f.judged_acceptable and row.verdict != "acceptable"),
        ),
    )
    return next((step for step, removed in checks if removed), None)


def stored_answer(message: Mapping[str, Any]) -> str:
    """An answer's assistant message as the ledger keeps it: its text and its tool calls
    (not a provider's other fields: refusal, annotations, audio...)."""
    kept: dict[str, Any] = {"content": message.get("content") or ""}
    if message.get("tool_calls"):
        kept["tool_calls"] = message["tool_calls"]
        kept["content"] = message.get("content") or None
    return json.dumps(kept, ensure_ascii=False)


def _record(row: Entry) -> dict[str, Any] | None:
    try:
        messages = json.loads(row.prompt or "")
        answer = json.loads(row.answer or "")
    except ValueError:
        return None
    if not isinstance(messages, list) or not isinstance(answer, dict):
        return None
    return {"messages": [*messages, {"role": "assistant", **answer}]}


def filters(
    config: Config,
    *,
    users: Sequence[str] = (),
    teams: Sequence[str] = (),
    categories: Sequence[str] = (),
    min_rating: str = "unrated",
    judged_acceptable: bool = False,
    include_flagged: bool = False,
    include_cache_hits: bool = False,
) -> Filters:
    """The Filters `router export` and the admin API's /export name, checked against
    `config` (a team must be one of its [teams]; a category one of CATEGORIES)."""
    for team in teams:
        if team not in config.teams:
            known = ", ".join(config.teams) or "none defined"
            raise RequestError(f"team {team[:60]!r} is not in models.toml ({known})", param="team")
    who: set[str] | None = None
    if users or teams:
        who = set(users) | {u for team in teams for u in config.teams[team].users}
    return Filters(
        users=None if who is None else frozenset(who),
        categories=frozenset(check_category(c) for c in categories) if categories else None,
        min_rating=min_rating,
        judged_acceptable=judged_acceptable,
        include_flagged=include_flagged,
        include_cache_hits=include_cache_hits,
    )


def read(ledger: Ledger, since: str, chosen: Filters, *, metadata: bool = False) -> Export:
    """Export the rows `ledger` holds since `since` ('30d')."""
    return export(ledger.entries(parse_since(since)), chosen, metadata=metadata)
