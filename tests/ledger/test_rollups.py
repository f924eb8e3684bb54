"""The ledger's figures come from SQL rollups (router/rollups.py): they must equal the same
figures counted by hand, row by row, and the longest window on a large ledger must answer
within a stated memory and time budget (one GET of `since=1000000d` used to take 557 MB and
2.8 s on a small ledger; `100000000d` took a machine down)."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from router import dashboard, load_config
from router.config import Config
from router.governance.audit import audit
from router.governance.budgets import BudgetStore
from router.governance.quality import CEILINGS, quality, wilson_lower
from router.ledger import _COLUMNS, MAX_WINDOW_DAYS, Entry, Ledger, SQLiteLedger
from tests.conftest import write_config

TEAMS = '\n[teams.red]\nusers = ["ana", "dan"]\n[teams.blue]\nusers = ["ben", "ana"]\n'


def random_entries(n: int, now: float, days: float, seed: int = 7) -> list[Entry]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tier = rng.choice(["local", "cloud"])
        out.append(
            Entry(
                ts=now - rng.random() * days * 86400,
                user=rng.choice(["ana", "ben", "cal", "dan", None]),
                tier=tier,
                model="smollm2" if tier == "local" else "cloud-mini",
                prompt_tokens=rng.randrange(1, 400),
                completion_tokens=rng.randrange(0, 400),
                cost_usd=rng.random() / 1000 if tier == "cloud" else 0.0,
                baseline_usd=rng.random() / 500,
                tokens_saved=rng.randrange(0, 800),
                usd_saved=rng.random() / 1000,
                cache_hit=rng.random() < 0.2,
                latency_ms=10.0,
                # Boundaries included: a tenth exactly, 0.9 and 1.0 share the last bucket.
                score=rng.choice([0.0, 0.1, 0.3, 0.35, 0.9, 1.0, rng.random()]),
                reason="r",
                category=rng.choice(["chit-chat", "code", "writing"]),
                flags=rng.choice(["", "", "", "repeat", "trivial-document"]),
                estimator=rng.choice(["structure-v1", "structure-v1", "learned"]),
                response_id=f"r{i}",
                rating=rng.choice(["", "", "good", "bad"]),
                verdict=rng.choice(["", "acceptable", "unacceptable"]),
                judge=rng.choice(["", "judge"]),
                shadow_usd=rng.choice([0.0, 0.001]),
            )
        )
    return out


# ---------------------------------------------------------------- the same figures by hand


def audit_by_hand(entries: list[Entry], config: Config, by: str, end: float) -> dict[str, Any]:
    """The audit as it was counted before rollups: one pass over every row."""
    accounts: dict[str, dict[str, Any]] = {}
    daily: dict[str, Counter[int]] = defaultdict(Counter)
    for e in entries:
        names = [e.user or "(anonymous)"] if by == "user" else config.teams_of(e.user)
        for name in names or ["(no team)"]:
            a = accounts.setdefault(name, {"requests": 0, "tokens": 0, "low_value": 0})
            a["requests"] += 1
            a["tokens"] += e.prompt_tokens + e.completion_tokens
            a["low_value"] += bool(e.flags)
            a.setdefault("categories", Counter())[e.category] += 1
            daily[name][int((end - e.ts) // 86400)] += e.prompt_tokens + e.completion_tokens
    for name, a in accounts.items():
        days = daily[name]
        earlier = [days[d] for d in range(1, max(days) + 1)]
        a["spike_baseline"] = (
            sum(earlier) / len(earlier) if len([d for d in earlier if d]) >= 2 else None
        )
        a["today"] = days[0]
        a["categories"] = dict(a["categories"])
    return accounts


def quality_by_hand(entries: list[Entry], by: str) -> dict[str, Any]:
    def ok(e: Entry) -> bool | None:
        if e.tier != "local":
            return None
        if e.rating in ("good", "bad"):
            return e.rating == "good"
        return None if e.verdict == "" else e.verdict == "acceptable"

    groups: dict[str, list[bool]] = defaultdict(list)
    for e in entries:
        if (verdict := ok(e)) is not None:
            key = e.category if by == "category" else e.model
            if by == "score":
                low = min(int(e.score * 10), 9) / 10
                key = f"{low:.1f}-{low + 0.1:.1f}"
            groups[key].append(verdict)
    current = entries[-1].estimator
    rows = [e for e in entries if e.estimator == current and not e.cache_hit]
    judged = [(e.score, e.verdict == "acceptable") for e in rows if e.verdict]
    return {
        "groups": {k: (len(v), sum(v)) for k, v in groups.items()},
        "ceilings": [
            {
                "ceiling": c,
                "local_share": round(sum(e.score <= c for e in rows) / len(rows), 4),
                "judged": len(below),
                "acceptable_rate": round(sum(below) / len(below), 4) if below else None,
                "lower_bound": round(wilson_lower(sum(below), len(below)), 4) if below else None,
            }
            for c in CEILINGS
            for below in [[g for s, g in judged if s <= c]]
        ],
        "judge_failures": sum(1 for e in entries if e.judge and not e.verdict),
        "cloud_judged": sum(1 for e in entries if e.tier == "cloud" and e.verdict),
    }


def check_against_hand_counts(ledger: Ledger, config: Config, entries: list[Entry]) -> None:
    """Every figure of the audit and quality reports equals the count by hand."""
    end = max(e.ts for e in entries)
    for by in ("user", "team"):
        expected = audit_by_hand(entries, config, by, end)
        got = {a.name: a for a in audit(ledger, config, by)}
        assert set(got) == set(expected)
        for name, want in expected.items():
            a = got[name]
            assert (a.requests, a.tokens, a.low_value) == (
                want["requests"],
                want["tokens"],
                want["low_value"],
            )
            assert a.categories == want["categories"]
            spike = [f for f in a.flags if f.startswith("spike")]
            base = want["spike_baseline"]
            assert bool(spike) == (base is not None and base > 0 and want["today"] >= 4 * base)
    for by in ("category", "model", "score"):
        figures = quality(ledger, by)
        want = quality_by_hand(entries, by)
        got = {g["group"]: (g["assessed"], g["acceptable"]) for g in figures["groups"]}
        assert got == want["groups"]
        total, good = (sum(v[i] for v in want["groups"].values()) for i in (0, 1))
        assert (figures["assessed"], figures["acceptable"]) == (total, good)
        assert figures["lower_bound"] == pytest.approx(wilson_lower(good, total), abs=1e-4)
        assert figures["judge_failures"] == want["judge_failures"]
        assert figures["cloud_answered_judged"] == want["cloud_judged"]
        assert figures["ceilings"] == want["ceilings"]


def test_rollups_equal_the_figures_counted_row_by_row(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, None, TEAMS))
    entries = random_entries(3000, time.time(), days=12)
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        for e in sorted(entries, key=lambda e: e.ts):
            ledger.record(e)
        check_against_hand_counts(ledger, config, sorted(entries, key=lambda e: e.ts))


# ---------------------------------------------------------------- a year on a large ledger

ROWS = 200_000
SECONDS = 30.0  # measured here: ~2 s for 200,000 rows (9 s for 1,000,000)
PYTHON_MB = 32.0  # measured here: ~3 MB; one object per row took ~1 KB a row before


def fill(path: Path, n: int, days: float) -> None:
    """`n` rows spread over `days`, written in one transaction (the pipeline would take
    hours)."""
    entries = random_entries(n, time.time(), days)
    with SQLiteLedger(path) as ledger, ledger._db:
        ledger._db.executemany(
            f"INSERT INTO requests ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
            [[getattr(e, c) for c in _COLUMNS] for e in entries],
        )


@pytest.mark.slow
def test_the_longest_window_on_a_large_ledger_stays_within_its_budget(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, None, TEAMS))
    fill(tmp_path / "ledger.sqlite3", ROWS, days=MAX_WINDOW_DAYS - 1)
    with (
        SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger,
        BudgetStore(tmp_path / "budgets.sqlite3", config) as budgets,
    ):
        tracemalloc.start()
        started = time.perf_counter()
        try:
            body = dashboard.summary(config, ledger, budgets, f"{MAX_WINDOW_DAYS}d")
            took = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    assert body["headline"]["requests"] == ROWS
    assert len(body["over_time"]["buckets"]) <= MAX_WINDOW_DAYS + 1
    assert took < SECONDS, f"{took:.1f} s"
    assert peak < PYTHON_MB, f"{peak:.1f} MB"
