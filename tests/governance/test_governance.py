"""Governance: budgets that hold under concurrency, task categories, low-value guardrails and
waste audits, on ledgers filled through the real pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from router import ChatRequest, RequestError, Router
from router.cli import app
from router.config import Budget
from router.engine.policy import worst_prompt_tokens
from router.errors import BudgetExceededError
from router.governance.audit import audit, render
from router.governance.budgets import BudgetStore, period
from router.governance.categories import classify
from router.ledger import Entry, SQLiteLedger
from router.server import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread, at_once

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
NO_REPEATS = "\n[guardrails]\nrepeat_window_seconds = 0\n"


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------ budgets


def test_budget_store_reserves_settles_and_releases(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    from router import load_config

    cfg = load_config(config)
    store = BudgetStore(tmp_path / "gov.sqlite3", cfg)
    store.set(Budget(user="ana", daily_tokens=100, monthly_usd=1.0))
    now = time.time()
    # Nothing used, but this one request is bigger than the whole budget: it would exceed it.
    too_big = r"daily_tokens = 100 tokens would be exceeded: 0 tokens used, .* up to 146 tokens"
    with pytest.raises(BudgetExceededError, match=too_big):
        store.reserve("ana", 146, 0.1, now)
    first = store.reserve("ana", 60, 0.1, now)
    # Only a request still running stands in the way: retry in seconds, not at midnight.
    held = r"user:ana daily_tokens = 100 tokens is held by requests still running"
    with pytest.raises(BudgetExceededError, match=held) as info:
        store.reserve("ana", 60, 0.1, now)
    assert info.value.in_flight and info.value.retry_after() == 2.0
    store.settle(first, 30, 0.05)  # the real usage was lower: room again
    second = store.reserve("ana", 60, 0.1, now)
    assert store.usage("user:ana", now)["daily_tokens"] == 90
    store.release(second)
    assert store.usage("user:ana", now)["daily_tokens"] == 30
    assert store.usage("user:ana", now)["monthly_usd"] == pytest.approx(0.05)
    store.settle(store.reserve("ana", 70, 0.1, now), 70, 0.1)
    with pytest.raises(BudgetExceededError, match="tokens is spent: 100 tokens used;") as info:
        store.reserve("ana", 1, 0.0, now)
    assert not info.value.in_flight and info.value.retry_after() > 2.0  # the UTC midnight
    assert store.reserve("nobody", 10**9, 10**9, now) is None  # no budget, no limit
    store.close()


def test_a_budget_nearly_spent_shortens_a_default_length_call_instead_of_refusing(
    tmp_path: Path,
) -> None:
    from router import load_config

    store = BudgetStore(tmp_path / "gov.sqlite3", load_config(write_config(tmp_path, None)))
    store.set(Budget(user="bo", daily_tokens=200, daily_usd=1.0))
    now = time.time()
    # 600 tokens wanted, of which up to 500 (the completion) may be left out: 400 are.
    cut = store.reserve("bo", 600, 0.6, now, flexible_tokens=500, usd_per_token=0.001)
    assert cut is not None and cut.cut == 400
    assert store.usage("user:bo", now)["daily_tokens"] == 200
    assert store.usage("user:bo", now)["daily_usd"] == pytest.approx(0.2)
    with pytest.raises(BudgetExceededError):  # nothing left, nothing flexible enough
        store.reserve("bo", 100, 0.0, now, flexible_tokens=50)
    store.close()


def test_periods_are_utc_days_and_months() -> None:
    t = 1795879528.0  # 2026-11-28T...Z
    day, day_reset = period("day", t)
    month, month_reset = period("month", t)
    assert day == "day:2026-11-28" and day_reset.isoformat() == "2026-11-29T00:00:00+00:00"
    assert month == "month:2026-11" and month_reset.isoformat() == "2026-12-01T00:00:00+00:00"


@pytest.mark.slow
def test_fifty_concurrent_requests_never_overrun_a_budget(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    prompts = [f"Please answer question number {i:02d} about the weather." for i in range(50)]
    worst = worst_prompt_tokens(ChatRequest(ask(prompts[0]))) + 40
    budget = int(worst * 10.5)  # room for about ten worst cases
    # strict: each call reserves its worst case, so the budget is never overrun at all.
    extra = NO_REPEATS + f'\n[[budgets]]\nuser = "load"\ndaily_tokens = {budget}\nstrict = true\n'
    path = write_config(tmp_path, fake_cloud.base_url, extra)
    with Router(path) as router, ServerThread(create_app(router)) as server:
        results = at_once(server.url, prompts, "load")
        rows = [e for e in router.ledger.entries() if e.user == "load"]
        used = router.budgets.usage("user:load")["daily_tokens"]
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code in (400, 429)]
    assert len(results) == 50 and len(ok) + len(refused) == 50
    assert 10 <= len(ok) < 50 and refused
    answered = [e for e in rows if not e.refusal]
    ledger_tokens = sum(e.prompt_tokens + e.completion_tokens for e in answered)
    assert len(answered) == len(ok) and len(rows) - len(answered) == len(refused)
    assert ledger_tokens <= budget and used == ledger_tokens
    for r in refused:
        error = r.json()["error"]
        limit = f"user:load daily_tokens = {budget:,} tokens"
        if error["code"] == "budget_in_use":  # refused while others' reservations were open
            assert r.status_code == 429 and error["type"] == "budget_exceeded_error"
            assert f"{limit} is held by requests still running" in error["message"]
            assert r.headers["retry-after"] == "2"
        else:  # spent until the reset: final, no Retry-After
            assert r.status_code == 400 and error["code"] == "insufficient_quota"
            assert f"{limit} is spent" in error["message"] or (
                f"{limit} would be exceeded" in error["message"]
                and "this request needs up to" in error["message"]
            )
            assert "resets at" in error["message"]
            assert "retry-after" not in r.headers and r.headers["x-should-retry"] == "false"


@pytest.mark.slow
def test_local_only_budget_keeps_answering_locally(
    tmp_path: Path, fake_cloud: FakeCloud, smollm2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = (
        '\n[teams.research]\nusers = ["ana", "ben"]\n'
        '\n[[budgets]]\nteam = "research"\ndaily_tokens = 10\non_exceed = "local-only"\n'
    )
    with Router(
        write_config(tmp_path, fake_cloud.base_url, extra), backends={"smollm2": smollm2}
    ) as router:
        done = router.complete(ask(HARD_PROMPT), max_tokens=8, user="ben")
        assert done.routing.tier == "local"
        assert "team:research daily_tokens = 10 tokens would be exceeded: 0 tokens used" in (
            done.routing.reason
        )
        assert "answered locally by smollm2" in done.routing.reason
        # Someone outside the team is not limited.
        assert router.complete(ask(HARD_PROMPT), max_tokens=8, user="cy").routing.tier == "cloud"
    assert len(fake_cloud.requests) == 1


def test_budget_config_errors_and_cli(tmp_path: Path) -> None:
    from router import ConfigError, load_config

    bad = write_config(tmp_path, None, '\n[[budgets]]\nteam = "ghosts"\ndaily_tokens = 5\n')
    with pytest.raises(ConfigError, match=r"budgets\[0\]\.team 'ghosts' is not defined"):
        load_config(bad)
    none = write_config(tmp_path, None, '\n[[budgets]]\nuser = "a"\n')
    with pytest.raises(ConfigError, match="at least one limit"):
        load_config(none)
    config = str(write_config(tmp_path, None, '\n[teams.ops]\nusers = ["zoe"]\n'))
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["budget", "set", "ana", "--daily-tokens", "500", "--config", config]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app,
            [
                "budget",
                "set",
                "--team",
                "ops",
                "--monthly-usd",
                "2.5",
                "--on-exceed",
                "local-only",
                "--config",
                config,
            ],
        ).exit_code
        == 0
    )
    shown = json.loads(runner.invoke(app, ["budget", "show", "--json", "--config", config]).output)
    assert {r["scope"]: r["limits"] for r in shown} == {
        "team:ops": {"monthly_usd": 2.5},
        "user:ana": {"daily_tokens": 500},
    }
    wrong = runner.invoke(
        app, ["budget", "set", "--team", "nope", "--daily-tokens", "1", "--config", config]
    )
    assert isinstance(wrong.exception, RequestError)


# ------------------------------------------------------------------------------ categories


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Hello there!", "chit-chat"),
        ("What is the capital of Peru?", "question-answering"),
        ("Write a short poem about the sea.", "writing"),
        ("Rewrite this paragraph so it sounds more formal: we gonna be late", "rewrite"),
        ("Summarize the following: The meeting covered budgets and hiring plans.", "summarise"),
        ("Translate 'good morning' into German", "translate"),
        ("Why does my Python function raise a KeyError?", "code"),
        ("Solve 3x + 5 = 20", "math/reasoning"),
    ],
)
def test_classifier_on_clear_cases(text: str, category: str) -> None:
    assert classify(ChatRequest(ask(text))) == category


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside the checkout")
def test_classifier_accuracy_on_public_clinc150() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from eval_categories import accuracy, clinc

    acc, _ = accuracy(clinc(SHARED))
    assert acc >= 0.80, f"CLINC150 accuracy fell to {acc:.1%} (measured 82.2%)"


@pytest.mark.slow
def test_category_override_header_and_metadata(
    tmp_path: Path, smollm2: Any, fake_cloud: FakeCloud
) -> None:
    with (
        Router(write_config(tmp_path, None, NO_REPEATS), backends={"smollm2": smollm2}) as router,
        ServerThread(create_app(router)) as server,
    ):
        url = server.url + "/v1/chat/completions"
        body = {"messages": ask("Hi!"), "max_tokens": 4}
        plain = httpx.post(url, json=body)
        assert plain.headers["x-router-category"] == "chit-chat"
        header = httpx.post(
            url, json=body, headers={"x-router-category": "code", "Cache-Control": "no-cache"}
        )
        assert header.headers["x-router-category"] == "code"
        meta = httpx.post(
            url,
            json={**body, "metadata": {"category": "writing"}},
            headers={"Cache-Control": "no-cache"},
        )
        assert meta.headers["x-router-category"] == "writing"
        # Cache hits of the first request (its score and category remembered, not recomputed):
        # the same score and category, and an override still wins.
        again = httpx.post(url, json=body)
        hit = httpx.post(url, json=body, headers={"x-router-category": "translate"})
        assert [again.headers["x-router-cache"], hit.headers["x-router-cache"]] == ["hit", "hit"]
        assert again.headers["x-router-score"] == plain.headers["x-router-score"]
        assert again.headers["x-router-category"] == "chit-chat"
        assert hit.headers["x-router-category"] == "translate"
        bad = httpx.post(url, json=body, headers={"x-router-category": "gossip"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "category"
        assert [e.category for e in router.ledger.entries()] == [
            "chit-chat",
            "code",
            "writing",
            "chit-chat",
            "translate",
        ]
        by_cat = router.ledger.summary(by="category")
        assert {g["group"]: g["requests"] for g in by_cat} == {
            "chit-chat": 2,
            "code": 1,
            "writing": 1,
            "translate": 1,
        }


# ------------------------------------------------------------------------------ low value


@pytest.mark.slow
def test_low_value_requests_are_kept_local_flagged_or_blocked(
    tmp_path: Path, fake_cloud: FakeCloud, smollm2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with Router(
        write_config(tmp_path, fake_cloud.base_url), backends={"smollm2": smollm2}
    ) as router:
        done = router.complete(ask("Summarize this:\n\n"), max_tokens=8)
        assert done.routing.tier == "local" and done.routing.flags == ["trivial-document"]
        assert "kept local" in done.routing.reason
        with pytest.raises(RequestError, match=r"kept off the cloud.*ask with model 'auto'"):
            router.complete(ask("Summarize this:\n\n"), model="cloud", max_tokens=8)
        # A retry storm: the third identical request within the window is flagged.
        for _ in range(3):
            last = router.complete(ask("What is 7 times 6?"), max_tokens=4, cache=False)
        assert last.routing.flags == ["repeat"]
        rows = router.ledger.entries()
        assert [(e.flags, e.refusal) for e in rows] == [
            ("trivial-document", ""),
            ("", "guardrail"),  # the refusal, a row of its own with no tokens
            ("", ""),
            ("", ""),
            ("repeat", ""),
        ]
        assert rows[1].prompt_tokens == 0 and "kept off the cloud" in rows[1].reason
        # A real document is not low-value.
        real = router.complete(
            ask("Summarize: The committee met on Monday and agreed to fund two new parks."),
            max_tokens=8,
        )
        assert real.routing.flags == [] and real.routing.category == "summarise"
    assert fake_cloud.requests == []

    block = write_config(tmp_path, None, '\n[guardrails]\nlow_value = "block"\n')
    with Router(block, backends={"smollm2": smollm2}) as router:
        before = len(router.ledger.entries())  # the same ledger file as above
        with pytest.raises(RequestError, match=r"low-value request \(trivial-document\) refused"):
            router.complete(ask("Please rewrite the following text:"))
        after = router.ledger.entries()
        assert len(after) == before + 1 and after[-1].refusal == "guardrail"
        assert after[-1].cost_usd == 0 and "guardrails.low_value = block" in after[-1].reason


# ------------------------------------------------------------------------------ audits


@pytest.mark.slow
def test_audit_flags_heavy_users_and_blank_document_summaries(
    tmp_path: Path, fake_cloud: FakeCloud, smollm2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = (
        NO_REPEATS
        + '\n[teams.red]\nusers = ["ana", "dan"]\n[teams.blue]\nusers = ["ben", "cal", "eve"]\n'
    )
    path = write_config(tmp_path, fake_cloud.base_url, extra)
    question = "Give me one fact about the history of the Roman empire please."
    with Router(path, backends={"smollm2": smollm2}) as router:
        for user, n in (("ana", 2), ("ben", 2), ("cal", 2), ("dan", 20)):
            for i in range(n):
                router.complete(
                    ask(f"{question} ({user} {i})"), model="cloud", max_tokens=20, user=user
                )
        for i in range(3):
            router.complete(ask(f"Summarize this document:{' ' * i}"), max_tokens=4, user="eve")
        router.complete(ask(f"{question} (eve)"), model="cloud", max_tokens=20, user="eve")
        config = router.config
        accounts = {a.name: a for a in audit(router.ledger, config, "user")}
        teams = {a.name: a for a in audit(router.ledger, config, "team")}
    kinds = {name: sorted(f.split(":")[0] for f in a.flags) for name, a in accounts.items()}
    assert kinds == {"ana": [], "ben": [], "cal": [], "dan": ["usage"], "eve": ["low-value"]}
    assert "× the peer average" in accounts["dan"].flags[0]
    assert accounts["eve"].low_value == 3 and accounts["eve"].low_value_share == 0.75
    assert accounts["eve"].categories == {"summarise": 3, "question-answering": 1}
    assert accounts["dan"].requests == 20
    assert set(teams) == {"red", "blue"} and teams["red"].requests == 22

    runner = CliRunner()
    out = runner.invoke(app, ["audit", "--format", "json", "--config", str(path)])
    data = {a["account"] if "account" in a else a["name"]: a for a in json.loads(out.output)}
    assert data["dan"]["flags"] and data["eve"]["low_value_share"] == 0.75
    md = runner.invoke(app, ["audit", "--format", "markdown", "--config", str(path)]).output
    assert md.startswith("| account | requests |") and "| dan | 20 |" in md
    csv_out = runner.invoke(
        app, ["audit", "--format", "csv", "--by", "team", "--config", str(path)]
    ).output
    assert csv_out.splitlines()[0].startswith("account,requests,tokens")
    failing = runner.invoke(app, ["audit", "--fail-on-flags", "--config", str(path)])
    assert failing.exit_code == 4
    calm = runner.invoke(
        app, ["audit", "--fail-on-flags", "--since", "1m", "--by", "team", "--config", str(path)]
    )
    assert calm.exit_code in (0, 4)


def test_audit_spike_against_own_history(tmp_path: Path) -> None:
    from router import load_config

    config = load_config(write_config(tmp_path, None))
    now = 1_800_000_000.0

    def entry(user: str, days_ago: float, tokens: int) -> Entry:
        return Entry(
            ts=now - days_ago * 86400,
            user=user,
            tier="cloud",
            model="m",
            prompt_tokens=tokens,
            completion_tokens=0,
            cost_usd=0.0,
            baseline_usd=0.0,
            tokens_saved=0,
            usd_saved=0.0,
            cache_hit=False,
            latency_ms=1.0,
            score=0.5,
            reason="r",
        )

    history = [entry(u, d + 0.5, 100) for u in ("fay", "gus") for d in range(1, 6)]
    today = [entry("fay", 0.1, 1000), entry("gus", 0.1, 100)]
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        for e in history + today:
            ledger.record(e)
        accounts = {a.name: a for a in audit(ledger, config, "user", now=now)}
    assert [f.split(":")[0] for f in accounts["fay"].flags] == ["spike"]
    assert accounts["gus"].flags == []
    assert "1,000 paid tokens in the last day" in accounts["fay"].flags[0]
    assert render(list(accounts.values()), "csv").count("\n") == 3


def test_library_category_override_and_validation(tmp_path: Path) -> None:
    with Router(write_config(tmp_path, None)) as router:
        assert router.decide(ChatRequest(ask("Hi!"))).category == "chit-chat"
        assert router.decide(ChatRequest(ask("Hi!"), category="code")).category == "code"
        with pytest.raises(RequestError, match="is not one of: chit-chat"):
            router.complete(ask("Hi!"), category="gossip")
