"""The routing policy alone: pure decisions from a score and the models' limits."""

from __future__ import annotations

import pytest

from router import ChatRequest, NoRouteError, UnavailableError, UnknownModelError
from router.complexity import HeuristicEstimator
from router.engine.policy import ModelView, decide

LOCAL = ModelView("small", "local", 0.35, 2048, supports_tools=False, supports_json=False)
BIG_LOCAL = ModelView("phi", "local", 0.6, 4096, supports_tools=False, supports_json=True)
CLOUD = ModelView("mini", "cloud", 1.0, 128_000, supports_tools=True, supports_json=True)
NO_KEY = ModelView("mini", "cloud", 1.0, 128_000, True, True, unusable="OPENAI_API_KEY is not set")
COOLING = ModelView(
    "mini", "cloud", 1.0, 128_000, True, True, unusable="restarting after a crash", retry_after=4.0
)


def req(text: str = "hi", model: str = "auto", **params: object) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], model, dict(params))


def models(*views: ModelView) -> dict[str, ModelView]:
    return {v.name: v for v in views}


def test_low_score_stays_local_with_cloud_as_fallback() -> None:
    d = decide(req(), 0.1, models(LOCAL, CLOUD), 256)
    assert d.candidates == ("small", "mini")
    assert "0.10 ≤ small ceiling 0.35" in d.reason


def test_high_score_goes_to_cloud_and_local_is_the_last_resort() -> None:
    d = decide(req(), 0.8, models(LOCAL, CLOUD), 256)
    assert d.candidates == ("mini", "small")


def test_each_local_model_keeps_traffic_up_to_its_own_ceiling() -> None:
    d = decide(req(), 0.5, models(LOCAL, BIG_LOCAL, CLOUD), 256)
    assert d.candidates == ("phi", "mini", "small")


def test_no_cloud_configured_answers_locally_and_says_so() -> None:
    d = decide(req(), 0.9, models(LOCAL, NO_KEY), 256)
    assert d.candidates == ("small",)
    assert "no cloud model is usable" in d.reason
    assert "OPENAI_API_KEY is not set" in d.reason


def test_prompt_plus_max_tokens_over_n_ctx_goes_up_a_tier() -> None:
    long_text = "word " * 2000  # ~3,300 estimated tokens > 2048
    d = decide(req(long_text), 0.0, models(LOCAL, CLOUD), 256)
    assert d.candidates == ("mini",)
    d = decide(req(max_tokens=2048), 0.0, models(LOCAL, CLOUD), 256)
    assert d.candidates == ("mini",)


def test_tools_and_json_output_go_where_they_are_supported() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert decide(req(tools=tools), 0.0, models(LOCAL, CLOUD), 64).candidates == ("mini",)
    fmt = {"type": "json_object"}
    d = decide(req(response_format=fmt), 0.0, models(LOCAL, BIG_LOCAL, CLOUD), 64)
    assert d.candidates == ("phi", "mini")


def test_nothing_can_serve_explains_each_model() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(NoRouteError, match=r"small: does not support tools"):
        decide(req(tools=tools), 0.0, models(LOCAL, BIG_LOCAL), 64)
    # The model that could serve it has no key: that is not a wait (a retry gets the same),
    # so it is the same non-retryable refusal as tools, JSON, images or length nobody serves.
    with pytest.raises(NoRouteError, match=r"mini: OPENAI_API_KEY is not set"):
        decide(req(tools=tools), 0.0, models(LOCAL, NO_KEY), 64)
    with pytest.raises(NoRouteError, match=r"mini: OPENAI_API_KEY is not set"):
        decide(req("word " * 2000), 0.0, models(LOCAL, NO_KEY), 64)  # too long for small
    with pytest.raises(NoRouteError, match=r"mini: OPENAI_API_KEY is not set"):
        decide(req(response_format={"type": "json_object"}), 0.0, models(LOCAL, NO_KEY), 64)
    # Down for a while (retry_after known): a 503 worth retrying.
    with pytest.raises(UnavailableError, match=r"restarting after a crash") as caught:
        decide(req(tools=tools), 0.0, models(LOCAL, COOLING), 64)
    assert caught.value.retry_after == 4.0


def test_modes_force_a_tier() -> None:
    assert decide(req(model="local"), 0.9, models(LOCAL, CLOUD), 64).candidates == ("small",)
    # A forced tier never ends with the other tier: no local fallback after the cloud.
    assert decide(req(model="cloud"), 0.0, models(LOCAL, CLOUD), 64).candidates == ("mini",)
    # No usable cloud model: refused with each cloud model's reason, never local.
    with pytest.raises(NoRouteError, match=r"mini: OPENAI_API_KEY is not set.*not answered"):
        decide(req(model="cloud"), 0.0, models(LOCAL, NO_KEY), 64)
    with pytest.raises(NoRouteError, match=r"none is configured in models.toml"):
        decide(req(model="cloud"), 0.0, models(LOCAL), 64)
    # auto still answers locally when no cloud model is usable, and says why.
    d = decide(req(), 0.9, models(LOCAL, NO_KEY), 64)
    assert d.candidates == ("small",) and "no cloud model is usable" in d.reason


def test_a_model_name_forces_that_model_or_fails_clearly() -> None:
    assert decide(req(model="mini"), 0.0, models(LOCAL, CLOUD), 64).candidates == ("mini",)
    with pytest.raises(UnknownModelError, match=r"'phi3' not found in models.toml.*small, mini"):
        decide(req(model="phi3"), 0.0, models(LOCAL, CLOUD), 64)
    with pytest.raises(NoRouteError, match=r"OPENAI_API_KEY is not set"):
        decide(req(model="mini"), 0.0, models(LOCAL, NO_KEY), 64)
    with pytest.raises(UnavailableError, match=r"restarting"):
        decide(req(model="mini"), 0.0, models(LOCAL, COOLING), 64)
    with pytest.raises(NoRouteError, match=r"does not support tools"):
        decide(
            req(model="small", tools=[{"type": "function", "function": {"name": "f"}}]),
            0.0,
            models(LOCAL, CLOUD),
            64,
        )


def test_heuristic_scores_in_range_deterministic_and_ordered() -> None:
    est = HeuristicEstimator()
    easy = [req("Hello!"), req("thanks a lot"), req("What time is it in Paris?")]
    hard = [
        req("Explain step by step why quicksort is O(n log n) on average and prove the bound."),
        req(
            "Refactor this Python class and analyze the trade-offs:\n```python\nclass A: pass\n```"
        ),
    ]
    easy_scores = [est.score(r) for r in easy]
    hard_scores = [est.score(r) for r in hard]
    assert all(0.0 <= s <= 1.0 for s in easy_scores + hard_scores)
    assert max(easy_scores) < 0.35 < min(hard_scores)
    assert [est.score(r) for r in hard] == hard_scores  # deterministic


def test_heuristic_reads_the_whole_conversation() -> None:
    est = HeuristicEstimator()
    code = "```python\nimport numpy as np\ndef solve(a, b):\n    return np.linalg.solve(a, b)\n```"
    alone = ChatRequest([{"role": "user", "content": "and now?"}])
    convo = ChatRequest(
        [
            {"role": "user", "content": f"Why does this fail? {code}"},
            {"role": "assistant", "content": "The matrix is singular."},
            {"role": "user", "content": "and now?"},
        ]
    )
    assert est.score(convo) > est.score(alone) + 0.2


def test_a_model_that_takes_some_categories_is_only_a_fallback_for_the_rest() -> None:
    """The embedded 135M model takes small talk; a factual question scores as low as a
    greeting, but goes to the cloud, and without one is answered locally and says why."""
    chatty = ModelView("small", "local", 0.25, 2048, False, False, categories=("chit-chat",))
    hello = decide(req("Hello!"), 0.0, models(chatty, CLOUD), 64, "chit-chat")
    assert hello.candidates == ("small", "mini") and "≤ small ceiling" in hello.reason
    fact = decide(req("What is the capital of France?"), 0.05, models(chatty, CLOUD), 64,
                  "question-answering")  # fmt: skip
    assert fact.candidates == ("mini", "small")
    assert "question-answering is not among small's categories" in fact.reason
    alone = decide(req("Who wrote Hamlet?"), 0.01, models(chatty, NO_KEY), 64, "question-answering")
    assert alone.candidates == ("small",)
    assert alone.reason.startswith(
        "question-answering is not among small's categories but no cloud model is usable"
    )
