"""How often local answers were good enough, with how much confidence: `router quality`.

Two kinds of evidence, both in the ledger:
- people's ratings (`/good`, `/bad`, `POST /v1/feedback`, `Router.feedback`);
- the judge's verdicts from shadow judging ([quality], router.engine.shadow), on both sides of the
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
from typing import Any

from router.config import Config
from router.ledger import Sums, rollups

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


MIN_ASSESSED = 10  # fewer assessed answers than this: "too few to say" (stats, dashboard)


def headline(ledger: Sums, since: float | None, user: str | None = None) -> dict[str, Any]:
    """The acceptable rate of the local answers assessed since `since`, with its lower bound:
    what `router stats` shows beside the savings."""
    found = ledger.rollup(since or 0.0, (), sums=rollups.QUALITY, user=user)
    head = _tally("all", {name: rollups.total(found, name) for name in rollups.QUALITY})
    return {k: head[k] for k in ("assessed", "acceptable", "acceptable_rate", "lower_bound")}


def describe(head: dict[str, Any]) -> str:
    """`80.0% (≥ 49.0%) of 10 local answers judged or rated acceptable`, or too few to say."""
    n, good = head["assessed"], head["acceptable"]
    if n < MIN_ASSESSED:
        return f"too few to say ({good} of {n} local answers judged or rated acceptable)"
    return (
        f"{head['acceptable_rate']:.1%} (≥ {head['lower_bound']:.1%}) of {n} local answers "
        "judged or rated acceptable"
    )


def _tally(group: str, row: dict[str, Any]) -> dict[str, Any]:
    """A group's assessed local answers, from its rollup row."""
    assessed, acceptable = row["assessed"], row["acceptable"]
    return {
        "group": group,
        "assessed": assessed,
        "acceptable": acceptable,
        "rated": row["assessed_rated"],  # of the assessed, by a person
        "judged": row["assessed_judged"],  # with a judge's verdict
        "acceptable_rate": round(acceptable / assessed, 4) if assessed else 0.0,
        "lower_bound": round(wilson_lower(acceptable, assessed), 4),
    }


def _group_name(key: str, value: Any) -> str:
    if key == "score_tenth":
        low = int(value) / 10
        return f"{low:.1f}-{low + 0.1:.1f}"
    return str(value)


def ceilings(
    ledger: Sums,
    since: float,
    points: tuple[float, ...] = CEILINGS,
    user: str | None = None,
) -> list[dict[str, Any]]:
    """For each ceiling: the local share of the requests, and the judged acceptable rate of
    the local answers (served or shadowed) below it. Only rows scored by the estimator of the
    latest row count: another estimator's scores mean something else."""
    found = ledger.rollup(
        since, ["estimator", "cache_hit"], sums=("last_id",), user=user, ceilings=points
    )
    if not found:
        return []
    current = max(found, key=lambda r: r["last_id"])["estimator"]
    rows = next(
        (r for r in found if r["estimator"] == current and not r["cache_hit"]),
        {"requests": 0} | {f"{k}_{i}": 0 for i in range(len(points)) for k in rollups.UNDER},
    )
    out = []
    for i, c in enumerate(points):
        judged, good = rows[f"judged_under_{i}"], rows[f"good_under_{i}"]
        out.append(
            {
                "ceiling": c,
                "local_share": round(rows[f"under_{i}"] / rows["requests"], 4)
                if rows["requests"]
                else 0.0,
                "judged": judged,
                "acceptable_rate": round(good / judged, 4) if judged else None,
                "lower_bound": round(wilson_lower(good, judged), 4) if judged else None,
            }
        )
    return out


def report(
    ledger: Sums,
    config: Config,
    by: str = "category",
    *,
    since: float = 0.0,
    user: str | None = None,
) -> dict[str, Any]:
    """`router quality --json` (without its window): `quality` and the local ceilings now."""
    current = {
        n: m.max_score
        for n, m in config.enabled().items()
        if m.tier == "local" and not m.embeddings
    }
    return {"local_ceilings": current, **quality(ledger, by, since=since, user=user)}


def quality(
    ledger: Sums, by: str = "category", *, since: float = 0.0, user: str | None = None
) -> dict[str, Any]:
    """Local answers assessed acceptable, overall and per group; ratings, verdicts, the judge's
    spend and the ceiling what-ifs, over the rows since `since` (of `user` only, when given)."""
    if by not in GROUPINGS:
        raise ValueError(f"group by {by!r}: choose one of {', '.join(GROUPINGS)}")
    key = "score_tenth" if by == "score" else by
    found = ledger.rollup(since, ["tier", key], sums=rollups.QUALITY, user=user)

    def summed(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {name: rollups.total(rows, name) for name in rollups.QUALITY}

    everything = summed(found)
    head = _tally("all", everything)
    names = sorted({r[key] for r in found})
    groups = [
        _tally(_group_name(key, name), summed([r for r in found if r[key] == name]))
        for name in names
    ]
    tiers = {t: summed([r for r in found if r["tier"] == t]) for t in ("local", "cloud")}
    feedback = {t: {"good": tiers[t]["rated_good"], "bad": tiers[t]["rated_bad"]} for t in tiers}
    # Requests the cloud answered, judged against what the local model said to them.
    cloud = tiers["cloud"]
    return {
        "source": "judge+feedback",
        "assessed": head["assessed"],
        "rated": head["rated"],
        "judged": head["judged"],
        "acceptable": head["acceptable"],
        "acceptable_rate": head["acceptable_rate"],
        "lower_bound": head["lower_bound"],
        "cloud_answered_judged": cloud["verdict_ok"] + cloud["verdict_bad"],
        "local_would_have_done": cloud["verdict_ok"],
        "judge_failures": everything["judge_failures"],
        "judge_usd": round(everything["shadow_usd"], 6),
        "feedback": feedback,
        "by": by,
        "groups": sorted((g for g in groups if g["assessed"]), key=lambda g: -g["assessed"]),
        "ceilings": ceilings(ledger, since, user=user),
    }
