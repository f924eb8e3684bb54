"""How often local answers were good enough, with how much confidence: `router quality`.

Two kinds of evidence, both in the ledger:
- people's ratings (`/good`, `/bad`, `POST /v1/feedback`, `Router.feedback`);
- the judge's verdicts from shadow judging ([quality], router.shadow), on both sides of the
  ceiling: on answers served locally, and on what the local model would have answered to
  requests the cloud served.
A served local answer is *assessed* by its rating when a person gave one (people know best),
else by its verdict. The acceptable rate gets a Wilson score interval's lower bound at 95%
confidence, which stays honest for small counts: 9 good of 10 reads "≥ 60%", not "90%".

Ceiling what-ifs: for each ceiling c, the share of requests scoring ≤ c (they would be local),
and the acceptable rate of the local answers judged among them, served or shadowed: what
moving a local ceiling would do to the local share and to quality.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from router.config import Config
from router.ledger import Entry

Z95 = 1.959964  # the two-sided 95% normal quantile
GROUPINGS = ("category", "model", "score")
CEILINGS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def wilson_lower(good: int, total: int, z: float = Z95) -> float:
    """The lower bound of the Wilson score interval for good / total (0 for no data)."""
    if total <= 0:
        return 0.0
    p = good / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z * z / total))


def served_ok(entry: Entry) -> bool | None:
    """Was this locally served answer acceptable: the person's rating, else the judge's."""
    if entry.tier != "local":
        return None
    if entry.rating in ("good", "bad"):
        return entry.rating == "good"
    return local_ok(entry)


def local_ok(entry: Entry) -> bool | None:
    """The judge's verdict on the local answer (served, or shadowed for a cloud answer)."""
    if entry.verdict in ("acceptable", "unacceptable"):
        return entry.verdict == "acceptable"
    return None


@dataclass
class Tally:
    group: str
    assessed: int = 0
    acceptable: int = 0
    rated: int = 0  # of the assessed, by a person
    judged: int = 0  # with a judge's verdict

    def add(self, entry: Entry, ok: bool) -> None:
        self.assessed += 1
        self.acceptable += ok
        self.rated += entry.rating in ("good", "bad")
        self.judged += local_ok(entry) is not None

    @property
    def acceptable_rate(self) -> float:
        return self.acceptable / self.assessed if self.assessed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "acceptable_rate": round(self.acceptable_rate, 4),
            "lower_bound": round(wilson_lower(self.acceptable, self.assessed), 4),
        }


def _group(entry: Entry, by: str) -> str:
    if by == "score":
        low = min(int(entry.score * 10), 9) / 10
        return f"{low:.1f}-{low + 0.1:.1f}"
    return str(getattr(entry, by))


def ceilings(entries: list[Entry], points: tuple[float, ...] = CEILINGS) -> list[dict[str, Any]]:
    """For each ceiling: the local share of the requests, and the judged acceptable rate of
    the local answers (served or shadowed) below it. Only rows scored by the estimator of the
    latest row count: another estimator's scores mean something else."""
    if not entries:
        return []
    current = entries[-1].estimator
    rows = [e for e in entries if e.estimator == current and not e.cache_hit]
    judged = [(e.score, ok) for e in rows if (ok := local_ok(e)) is not None]
    out = []
    for c in points:
        below = [ok for score, ok in judged if score <= c]
        good = sum(below)
        out.append(
            {
                "ceiling": c,
                "local_share": round(sum(e.score <= c for e in rows) / len(rows), 4)
                if rows
                else 0.0,
                "judged": len(below),
                "acceptable_rate": round(good / len(below), 4) if below else None,
                "lower_bound": round(wilson_lower(good, len(below)), 4) if below else None,
            }
        )
    return out


def report(entries: list[Entry], config: Config, by: str = "category") -> dict[str, Any]:
    """`router quality --json` (without its window): `quality` and the local ceilings now."""
    current = {n: m.max_score for n, m in config.enabled().items() if m.tier == "local"}
    return {"local_ceilings": current, **quality(entries, by)}


def quality(entries: list[Entry], by: str = "category") -> dict[str, Any]:
    """Local answers assessed acceptable, overall and per group; ratings, verdicts, the judge's
    spend and the ceiling what-ifs."""
    if by not in GROUPINGS:
        raise ValueError(f"group by {by!r}: choose one of {', '.join(GROUPINGS)}")
    total = Tally("all")
    groups: dict[str, Tally] = defaultdict(lambda: Tally(""))
    for e in entries:
        ok = served_ok(e)
        if ok is None:
            continue
        total.add(e, ok)
        tally = groups[name := _group(e, by)]
        tally.group = name
        tally.add(e, ok)
    rated = [e for e in entries if e.rating in ("good", "bad")]
    feedback = {
        tier: {
            "good": sum(e.rating == "good" and e.tier == tier for e in rated),
            "bad": sum(e.rating == "bad" and e.tier == tier for e in rated),
        }
        for tier in ("local", "cloud")
    }
    shadowed = [ok for e in entries if e.tier == "cloud" and (ok := local_ok(e)) is not None]
    outcomes = Counter(e.verdict for e in entries if e.judge)
    head = total.to_dict()
    return {
        "source": "judge+feedback",
        "assessed": head["assessed"],
        "rated": head["rated"],
        "judged": head["judged"],
        "acceptable": head["acceptable"],
        "acceptable_rate": head["acceptable_rate"],
        "lower_bound": head["lower_bound"],
        # Requests the cloud answered, judged against what the local model said to them.
        "cloud_answered_judged": len(shadowed),
        "local_would_have_done": sum(shadowed),
        "judge_failures": outcomes.get("", 0),
        "judge_usd": round(sum(e.shadow_usd for e in entries), 6),
        "feedback": feedback,
        "by": by,
        "groups": [t.to_dict() for t in sorted(groups.values(), key=lambda t: -t.assessed)],
        "ceilings": ceilings(entries),
    }
