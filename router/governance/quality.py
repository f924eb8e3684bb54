"""How often answers were good enough, with how much confidence: `router quality`.

The evidence today is people's feedback (`/good`, `/bad`, `POST /v1/feedback`,
`Router.feedback`). The acceptable rate of local answers gets a Wilson score interval's lower
bound at 95% confidence, which stays honest for small counts: 9 good of 10 reads "≥ 60%", not
"90%".
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from router.ledger import Entry

Z95 = 1.959964  # the two-sided 95% normal quantile
GROUPINGS = ("category", "model", "score")


def wilson_lower(good: int, total: int, z: float = Z95) -> float:
    """The lower bound of the Wilson score interval for good / total (0 for no data)."""
    if total <= 0:
        return 0.0
    p = good / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z * z / total))


@dataclass
class Tally:
    group: str
    rated: int = 0
    acceptable: int = 0

    @property
    def acceptable_rate(self) -> float:
        return self.acceptable / self.rated if self.rated else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "acceptable_rate": round(self.acceptable_rate, 4),
            "lower_bound": round(wilson_lower(self.acceptable, self.rated), 4),
        }


def _group(entry: Entry, by: str) -> str:
    if by == "score":
        low = min(int(entry.score * 10), 9) / 10
        return f"{low:.1f}-{low + 0.1:.1f}"
    return str(getattr(entry, by))


def quality(entries: list[Entry], by: str = "category") -> dict[str, Any]:
    """Local answers rated acceptable (good) out of those rated, overall and per group, with
    the feedback counts of both tiers."""
    if by not in GROUPINGS:
        raise ValueError(f"group by {by!r}: choose one of {', '.join(GROUPINGS)}")
    rated = [e for e in entries if e.rating in ("good", "bad")]
    local = [e for e in rated if e.tier == "local"]
    total = Tally("all", len(local), sum(e.rating == "good" for e in local))
    groups: dict[str, Tally] = defaultdict(lambda: Tally(""))
    for e in local:
        name = _group(e, by)
        tally = groups[name]
        tally.group = name
        tally.rated += 1
        tally.acceptable += e.rating == "good"
    feedback = {
        tier: {
            "good": sum(e.rating == "good" and e.tier == tier for e in rated),
            "bad": sum(e.rating == "bad" and e.tier == tier for e in rated),
        }
        for tier in ("local", "cloud")
    }
    head = total.to_dict()
    return {
        "source": "feedback",
        "rated": head["rated"],
        "judged": 0,  # shadow judging (a judge model's verdicts) is not built yet
        "judge_usd": 0.0,
        "acceptable": head["acceptable"],
        "acceptable_rate": head["acceptable_rate"],
        "lower_bound": head["lower_bound"],
        "feedback": feedback,
        "by": by,
        "groups": [t.to_dict() for t in sorted(groups.values(), key=lambda t: -t.rated)],
    }
