"""Shadow judging ([quality]): the fake cloud on loopback answers the other tier's half and
plays the judge (it answers the JSON schema by a fixed rule), through LiteLLM over real HTTP;
the local tier is a FunctionBackend (the real model's part is tested in tests/backends)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends import FunctionBackend
from router.ledger import Entry
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud, Fault

LONG_LOCAL = "A thorough local answer. " * 30


def local_answer(request: Any, params: Any) -> str:
    """Short for small talk (the cloud's longer answer wins), long for hard asks (wins)."""
    return LONG_LOCAL if "Python" in request.text else "ok"


def make(tmp_path: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, quality: str) -> Router:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = f'\n[[budgets]]\nuser = "ann"\ndaily_usd = 5.0\n\n[quality]\n{quality}\n'
    config = write_config(tmp_path, cloud.base_url, extra)
    local = FunctionBackend("smollm2", local_answer)
    return Router(config, backends={"smollm2": local}, sleep=lambda s: None)


def row(router: Router, response_id: str) -> Entry:
    return next(e for e in router.ledger.entries() if e.response_id == response_id)


def judge_calls(cloud: FakeCloud) -> list[dict[str, Any]]:
    return [
        r for r in cloud.requests
        if ((r.get("response_format") or {}).get("json_schema") or {}).get("name") == "verdict"
    ]  # fmt: skip


def test_both_sides_of_the_ceiling_judged_in_both_orders_on_the_routers_own_money(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"\nmax_usd_per_day = 1.0'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        easy = router.complete([{"role": "user", "content": "Hello there!"}], user="ann")
        assert easy.routing.tier == "local" and easy.text == "ok"
        assert router.shadow.wait(60)
        hard = router.complete([{"role": "user", "content": HARD_PROMPT}], user="ann")
        assert hard.routing.tier == "cloud"
        assert router.shadow.wait(60)
        judged_easy, judged_hard = (
            row(router, easy.response["id"]),
            row(router, hard.response["id"]),
        )
        budget = router.budgets.usage("user:ann")["daily_usd"]
        counts = dict(router.shadow.counts)

    # Answered locally: the cloud's answer is clearly longer, preferred in both orders.
    assert (judged_easy.verdict, judged_easy.votes) == ("unacceptable", "lose,lose")
    assert (judged_easy.judge, judged_easy.shadow_model) == ("cloud-mini", "cloud-mini")
    # Answered by the cloud: the local model answered too, and would have done (longer).
    assert (judged_hard.verdict, judged_hard.votes) == ("acceptable", "win,win")
    assert judged_hard.shadow_model == "smollm2"
    assert counts == {"sampled": 2, "judged": 2}

    calls = judge_calls(fake_cloud)
    assert len(calls) == 4
    schema = calls[0]["response_format"]["json_schema"]
    assert schema["strict"] is True and schema["schema"]["required"] == ["better"]
    first, second = (c["messages"][-1]["content"] for c in calls[:2])
    assert first.index("[Answer A]\nok\n") < first.index("[Answer B]\ncloud answer to:")
    assert second.index("[Answer A]\ncloud answer to:") < second.index("[Answer B]\nok\n")

    # Shadow spend is the router's: on the rows' shadow_usd, not in their cost, not on ann's
    # budget (which holds exactly her one cloud answer).
    assert judged_easy.cost_usd == 0 and judged_easy.shadow_usd > 0
    assert judged_hard.shadow_usd > 0
    assert budget == pytest.approx(judged_hard.cost_usd)

    config = str(tmp_path / "models.toml")
    out = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--json", "--config", config],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["judged"], report["acceptable"]) == (1, 0)  # of the answers served locally
    assert report["judge_usd"] == pytest.approx(
        judged_easy.shadow_usd + judged_hard.shadow_usd, abs=1e-6
    )


def test_the_client_never_waits_for_the_shadow(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        router.complete([{"role": "user", "content": "Warm up, hello!"}])  # litellm imported
        assert router.shadow.wait(60)
        fake_cloud.inject(Fault(status=200, delay=2.0))  # the shadow's cloud answer is slow
        started = time.perf_counter()
        done = router.complete([{"role": "user", "content": "Good morning!"}])
        took = time.perf_counter() - started
        assert took < 1.0 and done.text == "ok"
        assert row(router, done.response["id"]).verdict == ""  # not judged yet
        assert router.shadow.wait(60)
        assert row(router, done.response["id"]).verdict == "unacceptable"


def test_a_failing_judge_loses_nothing_and_charges_no_one(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        router.complete([{"role": "user", "content": "Warm up, hello!"}])
        assert router.shadow.wait(60)
        # The other tier's answer comes; the judge then fails every retry (3 attempts).
        fake_cloud.inject(Fault(status=200), Fault(500), Fault(500), Fault(500))
        done = router.complete([{"role": "user", "content": "Hi again!"}], user="ann")
        assert done.text == "ok"
        assert router.shadow.wait(60)
        failed = row(router, done.response["id"])
        assert router.shadow.counts["failed"] == 1
        assert failed.verdict == "" and failed.cost_usd == 0
        assert failed.shadow_usd > 0  # the answer that was paid for, as the router's spend
        assert router.budgets.usage("user:ann")["daily_usd"] == 0
        again = router.complete([{"role": "user", "content": "And hello once more!"}])
        assert router.shadow.wait(60)
        assert row(router, again.response["id"]).verdict == "unacceptable"  # it recovers


def test_a_position_biased_judge_counts_as_a_tie(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cloud.judge = lambda a, b: "A"  # always the first answer shown
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        done = router.complete([{"role": "user", "content": "Hello there!"}])
        assert router.shadow.wait(60)
        judged = row(router, done.response["id"])
    assert (judged.verdict, judged.votes) == ("acceptable", "win,lose")


def test_the_sampling_rate_and_the_daily_cap(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 0.5\njudge = "cloud-mini"\nmax_usd_per_day = 1.0'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        for i in range(80):
            router.complete([{"role": "user", "content": f"Hello number {i}!"}])
            assert router.shadow.wait(60)
        sampled = router.shadow.counts["sampled"]
    assert 20 <= sampled <= 60  # binomial(80, 0.5): 40 ± 4.5 sd

    # The cap: the worst case of one job (a 512-token answer, two judge calls over both
    # answers) is about $0.0007 at gpt-4o-mini's prices; what a job really costs is far less.
    cap = 0.00075
    quality = f'shadow_rate = 1.0\njudge = "cloud-mini"\nmax_usd_per_day = {cap}'
    (tmp_path / "ledger.sqlite3").unlink()
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        for i in range(4):
            router.complete([{"role": "user", "content": f"Good evening number {i}!"}])
            assert router.shadow.wait(60)
        counts = dict(router.shadow.counts)
        spent = sum(e.shadow_usd for e in router.ledger.entries())
    assert counts["judged"] >= 1 and counts["capped"] >= 1
    assert counts["judged"] + counts["capped"] == 4
    assert 0 < spent <= cap


def test_judging_needs_a_judge_that_exists(tmp_path: Path) -> None:
    from router.config import load_config
    from router.errors import ConfigError

    config = write_config(tmp_path, None, "\n[quality]\nshadow_rate = 0.1\n")
    with pytest.raises(ConfigError, match="no judge is named"):
        load_config(config)
    config = write_config(tmp_path, None, '\n[quality]\nshadow_rate = 0.1\njudge = "gpt-5"\n')
    with pytest.raises(ConfigError, match="'gpt-5' is not a model of this file"):
        load_config(config)


def test_quality_figures_and_ceiling_what_ifs_on_a_judged_ledger_and_learning_from_it(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"\nmax_usd_per_day = 1.0'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        short = [f"Hello number {i}!" for i in range(4)]  # "ok": the cloud's answer wins
        long = [f"Please answer in Python terms, friend {i}" for i in range(4)]  # local wins
        for text in [*short, *long, HARD_PROMPT, HARD_PROMPT + " Also in Rust."]:
            router.complete([{"role": "user", "content": text}])
            assert router.shadow.wait(60)
        rows = router.ledger.entries()
    served = [e for e in rows if e.tier == "local"]
    cloud = [e for e in rows if e.tier == "cloud"]
    assert len(served) == 8 and len(cloud) == 2
    config = str(tmp_path / "models.toml")
    out = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--json", "--config", config],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["assessed"], report["judged"], report["acceptable"]) == (8, 8, 4)
    assert report["acceptable_rate"] == 0.5 and report["lower_bound"] == pytest.approx(
        0.2152, abs=1e-4
    )
    assert (report["cloud_answered_judged"], report["local_would_have_done"]) == (2, 2)
    assert report["local_ceilings"] == {"smollm2": 0.35}
    for what_if in report["ceilings"]:
        c = what_if["ceiling"]
        below = [e for e in rows if e.score <= c]
        good = [e for e in below if e.verdict == "acceptable"]
        assert what_if["local_share"] == pytest.approx(len(below) / len(rows), abs=1e-4)
        assert what_if["judged"] == len(below)
        if below:
            assert what_if["acceptable_rate"] == pytest.approx(len(good) / len(below), abs=1e-4)
    text = subprocess.run(
        [sys.executable, "-m", "router", "quality", "--by", "model", "--config", config],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "local answers acceptable: 50.0% (≥ 21.5% with 95% confidence), 8 assessed" in text
    assert "answered by the cloud, local judged good enough: 2 of 2" in text
    assert "what each ceiling would do" in text

    logs = subprocess.run(
        [sys.executable, "-m", "router", "logs", "-n", "10", "--config", config],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert logs.count("judged unacceptable against cloud-mini by cloud-mini") == 4
    assert logs.count("judged acceptable against cloud-mini by cloud-mini") == 4
    assert logs.count("smollm2's answer judged acceptable by cloud-mini") == 2

    # Verdicts are labels for `router learn`, when the prompts were stored.
    learn = subprocess.run(
        [sys.executable, "-m", "router", "learn", "--config", config],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert learn.returncode == 2 and "store_prompts = true" in learn.stderr


def test_router_learn_reads_verdicts_and_ratings_from_the_ledger(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"\nmax_usd_per_day = 1.0'
    with make(tmp_path, fake_cloud, monkeypatch, quality) as router:
        pass
    config = tmp_path / "models.toml"
    config.write_text(config.read_text().replace("[router]\n", "[router]\nstore_prompts = true\n"))
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    local = FunctionBackend("smollm2", local_answer)
    with Router(config, backends={"smollm2": local}, sleep=lambda s: None) as router:
        for i in range(6):
            router.complete([{"role": "user", "content": f"Hello number {i}!"}])
            done = router.complete([{"role": "user", "content": f"In Python terms, friend {i}"}])
            assert router.shadow.wait(60)
        router.feedback(done.response["id"], "bad")  # a person's rating wins over the judge
    out = subprocess.run(
        [sys.executable, "-m", "router", "learn", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["labels"] == 12 and report["source"] == "the ledger, last 90d"
    assert report["metric"] == "AUROC"
    assert report["adopted"] is False and "at least 100" in report["why"]


def test_the_server_answers_first_and_reports_shadow_jobs(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    import openai

    from router.server.app import create_app
    from tests.server_harness import ServerThread
    from tests.server_harness import health as details

    quality = 'shadow_rate = 1.0\njudge = "cloud-mini"'
    router = make(tmp_path, fake_cloud, monkeypatch, quality)
    with router, ServerThread(create_app(router)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            if stream:
                parts = client.chat.completions.create(
                    model="auto", stream=True,
                    messages=[{"role": "user", "content": "Hello streamed!"}],
                )  # fmt: skip
                rid = next(iter(parts)).id
                for _ in parts:
                    pass
            else:
                rid = client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "Hello!"}]
                ).id
            assert router.shadow.wait(60)
            assert row(router, rid).verdict == "unacceptable"
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        health = details(server.url)
    assert 'router_shadow_jobs_total{outcome="judged"} 2' in metrics
    assert health["shadow"] == {"rate": 1.0, "sampled": 2, "judged": 2}


@pytest.mark.slow
def test_shadow_work_on_the_real_local_model_yields_to_a_user(
    make_router: Any, fake_cloud: FakeCloud
) -> None:
    """The cloud answered; the shadow asks the real SmolLM2 for a long answer. A user's local
    request arrives meanwhile: the shadow gives the model up at its next token."""
    router = make_router(
        fake_cloud, '\n[quality]\nshadow_rate = 1.0\njudge = "cloud-mini"\nmax_tokens = 400\n'
    )
    local = router._backend("smollm2")
    hard = router.complete([{"role": "user", "content": HARD_PROMPT}])
    assert hard.routing.tier == "cloud"
    ends = time.monotonic() + 30
    while local.health()["in_flight"] == 0 and time.monotonic() < ends:
        time.sleep(0.01)  # the shadow's generation has started
    time.sleep(0.3)
    started = time.perf_counter()
    mine = router.complete([{"role": "user", "content": "Hi there!"}], max_tokens=16)
    waited = time.perf_counter() - started
    assert mine.routing.tier == "local" and mine.text
    assert router.shadow.wait(60)
    assert router.shadow.counts["local-busy"] == 1
    assert row(router, hard.response["id"]).verdict == ""  # given up: no verdict
    # 400 shadow tokens take ~5 s at this machine's 70-90 tok/s; the user waited for one.
    assert waited < 3.0
