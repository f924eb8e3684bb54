"""The local tier end to end with the real SmolLM2 GGUF model, the real cache and ledger."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from router import Router
from router.backends.local import LocalBackend
from router.ledger import SQLiteLedger
from router.ledger.pricing import lookup
from tests.conftest import EASY_PROMPT, write_config

pytestmark = pytest.mark.slow

GPT_4O = lookup("gpt-4o")
assert GPT_4O is not None


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_easy_prompt_is_answered_locally_with_honest_usage(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    done = router.complete(ask(EASY_PROMPT), max_tokens=16, temperature=0)
    assert done.text.strip()
    assert done.response["object"] == "chat.completion"
    assert done.response["model"] == "smollm2"
    r = done.routing
    assert (r.tier, r.model, r.cache_hit) == ("local", "smollm2", False)
    usage = done.response["usage"]
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["prompt_tokens"] > 5  # the chat template adds role markers
    assert (r.prompt_tokens, r.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    # Saved = what gpt-4o (the baseline here) would have cost; the local model costs nothing.
    assert r.cost_usd == 0
    assert r.usd_saved == pytest.approx(GPT_4O.cost(r.prompt_tokens, r.completion_tokens))
    assert r.tokens_saved == r.prompt_tokens + r.completion_tokens


def test_streamed_usage_matches_the_non_streamed_count(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    params = {"max_tokens": 12, "temperature": 0, "seed": 1}
    # llama-cpp-python reuses the KV cache of a repeated prompt and re-reads only its last
    # token; on some builds (AVX2) logits read alone differ slightly from logits read in a
    # batch, enough to change a greedy answer. So both compared calls repeat the prompt.
    router.complete(ask("Name three colours."), cache=False, **params)
    whole = router.complete(ask("Name three colours."), cache=False, **params)
    stream = router.stream(ask("Name three colours."), cache=False, **params)
    assert stream.routing.tier == "local"  # known before the first chunk is read
    chunks = list(stream)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole.text
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole.response["usage"]
    assert stream.routing.completion_tokens == whole.routing.completion_tokens


def test_concurrent_callers_queue_and_never_corrupt_each_other(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    prompts = ["Say hello.", "Name a fruit.", "Count to three.", "Name a colour."]
    params = {"max_tokens": 10, "temperature": 0, "seed": 7}
    sequential = [router.complete(ask(p), cache=False, **params).text for p in prompts]

    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            if i % 2:
                results[i] = router.stream(ask(prompts[i]), cache=False, **params).text()
            else:
                results[i] = router.complete(ask(prompts[i]), cache=False, **params).text
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert [results[i] for i in range(len(prompts))] == sequential


def test_repeat_prompt_is_a_cache_hit_that_costs_nothing(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    first = router.complete(ask("What is 2+2?"), max_tokens=8, temperature=0)
    second = router.complete(ask("What is 2+2?"), max_tokens=8, temperature=0)
    assert not first.routing.cache_hit and second.routing.cache_hit
    assert second.text == first.text
    assert second.response["id"] != first.response["id"]
    assert second.routing.model == "smollm2" and "cache hit" in second.routing.reason
    assert second.routing.cost_usd == 0
    assert second.routing.usd_saved == pytest.approx(first.routing.baseline_usd)
    # A different sampling parameter is a different answer, so a different key.
    third = router.complete(ask("What is 2+2?"), max_tokens=9, temperature=0)
    assert not third.routing.cache_hit
    # Per-request opt-out neither reads nor writes.
    fourth = router.complete(ask("What is 2+2?"), max_tokens=8, temperature=0, cache=False)
    assert not fourth.routing.cache_hit


def test_streamed_answers_are_cached_and_replayed_as_streams(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    params = {"max_tokens": 10, "temperature": 0}
    streamed = router.stream(ask("Name a planet."), **params)
    text = streamed.text()
    assert not streamed.routing.cache_hit
    hit = router.complete(ask("Name a planet."), **params)
    assert hit.routing.cache_hit and hit.text == text
    assert hit.response["usage"]["completion_tokens"] == streamed.routing.completion_tokens
    replay = router.stream(ask("Name a planet."), **params)
    assert replay.routing.cache_hit
    chunks = list(replay)
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == text
    )
    assert chunks[-1]["usage"]["completion_tokens"] == streamed.routing.completion_tokens


def test_ledger_has_one_row_per_request_with_savings_arithmetic(
    make_router: Callable[..., Router],
) -> None:
    router = make_router()
    router.complete(ask("Hello!"), max_tokens=8, user="ana")
    router.complete(ask("Hello!"), max_tokens=8, user="ben")  # cache hit
    router.stream(ask("Say yes."), max_tokens=4, user="ana").text()
    rows = router.ledger.entries()
    assert [(e.user, e.tier, e.cache_hit, e.stream) for e in rows] == [
        ("ana", "local", False, False),
        ("ben", "local", True, False),
        ("ana", "local", False, True),
    ]
    for e in rows:
        assert e.baseline_usd == pytest.approx(GPT_4O.cost(e.prompt_tokens, e.completion_tokens))
        assert e.usd_saved == pytest.approx(e.baseline_usd - e.cost_usd)
        assert e.tokens_saved == e.prompt_tokens + e.completion_tokens
        assert e.prompt is None  # prompts are not stored unless asked
        assert e.latency_ms > 0 and e.score >= 0 and e.reason
    totals = router.ledger.totals()
    assert totals["requests"] == 3 and totals["cache_hits"] == 1
    assert totals["by_tier"] == {"local": 3}
    assert totals["usd_saved"] == pytest.approx(sum(e.usd_saved for e in rows))
    # The file is real SQLite in WAL mode, readable by another connection.
    ledger_path = router.config.ledger_path()
    other = SQLiteLedger(ledger_path)
    assert len(other.entries()) == 3
    assert other._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_prompts_are_stored_only_when_the_config_asks(
    tmp_path: Path, smollm2: LocalBackend
) -> None:
    path = write_config(tmp_path, None)
    path.write_text(path.read_text().replace("default_max_tokens = 24", "store_prompts = true"))
    with Router(path, backends={"smollm2": smollm2}) as router:
        router.complete(ask("Remember me."), max_tokens=4)
        assert "Remember me." in (router.ledger.entries()[-1].prompt or "")


def test_closing_a_stream_early_frees_the_model_and_records_an_estimate(
    make_router: Callable[..., Router], smollm2: LocalBackend
) -> None:
    router = make_router()
    stream = router.stream(ask("Write a long story about a dragon."), max_tokens=200)
    next(iter(stream))
    stream.close()
    # The model is free again at once: a new request completes.
    assert router.complete(ask("Hi"), max_tokens=4, cache=False).text is not None
    first = router.ledger.entries()[0]
    assert "stopped before the end" in first.reason
    assert first.completion_tokens < 200
    # The partial answer was not cached.
    again = router.complete(ask("Write a long story about a dragon."), max_tokens=200)
    assert not again.routing.cache_hit


def test_json_output_is_valid_json_on_a_model_that_supports_it(
    make_router: Callable[..., Router],
) -> None:
    import json

    router = make_router(extra="")
    cfg = router.config.models["smollm2"]
    models = {**router.config.models, "smollm2": cfg.model_copy(update={"supports_json": True})}
    router.config = router.config.model_copy(update={"models": models})
    done = router.complete(
        ask("Give a JSON object with a key 'ok' set to true."),
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert done.routing.tier == "local"
    assert isinstance(json.loads(done.text), dict)


def test_a_json_schema_is_honoured_by_the_in_process_model(
    make_router: Callable[..., Router],
) -> None:
    """response_format json_schema becomes a llama.cpp grammar: the answer parses and matches
    the schema, so a JSON request does not have to leave the machine."""
    import json

    import jsonschema

    router = make_router(extra="")
    cfg = router.config.models["smollm2"]
    models = {**router.config.models, "smollm2": cfg.model_copy(update={"supports_json": True})}
    router.config = router.config.model_copy(update={"models": models})
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    done = router.complete(
        ask("A person named Ana, aged 31. Reply with a JSON object with the keys name, age."),
        model="local",
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
    )
    assert done.routing.tier == "local"
    data = json.loads(done.text)
    jsonschema.validate(data, schema)


def test_an_answer_that_loops_is_stopped_and_saves_nothing(
    make_router: Callable[..., Router],
) -> None:
    """The embedded model loops on "What is the capital of France?" ("la femme au martyre, la
    femme au martyre…"): the guard stops it long before max_tokens, the answer says it was cut
    (finish_reason length), and its row counts no saving and is not cached."""
    router = make_router()
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    done = router.complete(ask, model="local", max_tokens=400, temperature=0)
    assert done.response["choices"][0]["finish_reason"] == "length" and done.text
    assert "stopped" not in done.response  # the router's own mark never reaches a client
    assert 32 <= done.routing.completion_tokens < 200, done.text
    assert done.routing.saved_by == "looped" and "repeated itself" in done.routing.reason
    assert done.routing.tokens_saved == 0 and done.routing.usd_saved == 0
    streamed = router.stream(ask, model="local", max_tokens=400, temperature=0)
    chunks = list(streamed)
    assert all("stopped" not in c for c in chunks)
    assert streamed.routing.saved_by == "looped" and streamed.routing.completion_tokens < 200
    assert not streamed.routing.cache_hit  # the first answer was not cached
    rows = router.ledger.entries()
    assert [r.saved_by for r in rows] == ["looped", "looped"]
    assert router.ledger.totals()["saved_by"]["looped"] == {
        "requests": 2,
        "tokens_saved": 0,
        "usd_saved": 0,
    }
