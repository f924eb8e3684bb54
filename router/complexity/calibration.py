"""Routing thresholds from real traffic: `router calibrate`.

A local model serves every request whose score is at or below its `max_score` ceiling. Given
the scores of a sample of requests (the ledger's, or a prompt file scored now), a target share
of local answers or a daily cloud budget fixes that ceiling. The result is written into
models.toml in place, comments and layout kept.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.config import parse_toml
from router.errors import ConfigError, RequestError

MIN_REQUESTS = 20  # fewer scores than this say little about the traffic


@dataclass(frozen=True)
class Threshold:
    ceiling: float
    local_share: float  # share of the sample at or below the ceiling
    cloud_usd_per_day: float | None = None  # with costs: what the rest would cost per day


def _between(low: float, high: float) -> float:
    """A ceiling between two adjacent scores, rounded to 4 places but kept in [low, high)."""
    mid = round((low + high) / 2, 4)
    return mid if low <= mid < high else low


def _below(lowest: float) -> float:
    """A ceiling under the lowest score (0 when the lowest score is 0 already)."""
    return max(0.0, math.floor(lowest * 10_000 - 1) / 10_000)


def _check(scores: Sequence[float]) -> list[float]:
    if len(scores) < MIN_REQUESTS:
        raise RequestError(
            f"only {len(scores)} scored requests to calibrate on (at least {MIN_REQUESTS} "
            "needed): widen --since, or pass a prompt file with --prompts"
        )
    return sorted(scores)


def for_local_share(scores: Sequence[float], share: float) -> Threshold:
    """The ceiling that keeps at most `share` of the requests local (ties never overshoot)."""
    if not 0.0 <= share <= 1.0:
        raise RequestError(f"--local-share {share}: expected a fraction from 0 to 1 (e.g. 0.7)")
    s = _check(scores)
    n = len(s)
    k = math.floor(share * n + 1e-9)  # requests to keep local
    while 0 < k < n and s[k - 1] == s[k]:  # a tie straddles the cut: keep fewer local
        k -= 1
    if k == 0:
        ceiling = _below(s[0])
    elif k == n:
        ceiling = 1.0
    else:
        ceiling = _between(s[k - 1], s[k])
    return Threshold(ceiling, sum(1 for v in s if v <= ceiling) / n)


def for_cloud_budget(
    scores: Sequence[float], cloud_usd: Sequence[float], days: float, usd_per_day: float
) -> Threshold:
    """The lowest ceiling whose cloud traffic (every request scoring above it, at its cloud
    price) costs at most `usd_per_day` over `days` days: as much cloud as the budget buys."""
    if usd_per_day < 0:
        raise RequestError(f"--max-cloud-usd-per-day {usd_per_day}: expected 0 or more")
    _check(scores)
    if not any(c > 0 for c in cloud_usd):
        raise RequestError(
            "the ledger prices none of these requests (baseline cost 0): set [router] baseline "
            "to a priced cloud model or give baseline_price in models.toml"
        )
    pairs = sorted(zip(scores, cloud_usd, strict=True), key=lambda p: -p[0])
    budget = usd_per_day * days
    spent, j = 0.0, 0  # the top j requests go to the cloud
    while j < len(pairs) and spent + pairs[j][1] <= budget + 1e-12:
        spent += pairs[j][1]
        j += 1
    while 0 < j < len(pairs) and pairs[j - 1][0] == pairs[j][0]:  # don't split a tie
        j -= 1
        spent -= pairs[j][1]
    n = len(pairs)
    if j == n:
        ceiling = _below(pairs[-1][0])
    elif j == 0:
        ceiling = 1.0
    else:
        ceiling = _between(pairs[j][0], pairs[j - 1][0])
    local = sum(1 for s, _ in pairs if s <= ceiling) / n
    return Threshold(ceiling, local, spent / days)


def days_covered(timestamps: Sequence[float]) -> float:
    """Days the sample spans (at least one): distinct local calendar days with traffic."""
    return float(max(1, len({time.strftime("%Y-%m-%d", time.localtime(t)) for t in timestamps})))


_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
_MAX_SCORE = re.compile(r"^(\s*max_score\s*=\s*)([^#\n]*?)(\s*#.*)?$")


def set_max_score(
    text: str, model: str, value: float, note: str, source: Path | None = None
) -> str:
    """models.toml text with `max_score = value` in `[models.<model>]`, everything else kept.

    The result is parsed and validated (relative paths against `source`) before it is
    returned."""
    lines = text.splitlines(keepends=True)
    headers = {f"models.{model}", f'models."{model}"', f"models.'{model}'"}
    start = next(
        (i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and m.group(1) in headers),
        None,
    )
    if start is None:
        raise ConfigError(
            f"no [models.{model}] table in the file: add `max_score = {value}` there by hand"
        )
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    new_line = f"max_score = {value}  # {note}\n"
    for i in range(start + 1, end):
        m = _MAX_SCORE.match(lines[i].rstrip("\n"))
        if m:
            lines[i] = m.group(1) + f"{value}  # {note}\n"
            break
    else:
        lines.insert(start + 1, new_line)
    out = "".join(lines)
    parse_toml(out, source)  # never write a file the router cannot load
    return out


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
