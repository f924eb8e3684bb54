"""`router serve` for real: uvicorn on 127.0.0.1, driven by the official openai client (sync and
async, streamed and not) and by raw HTTP for bad input; the cloud tier through LiteLLM to the
loopback stand-in."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router import Router
from router.complexity import StructureEstimator
from router.server import create_app
from router.server.keys import KeyStore
from router.types import ChatRequest
from tests.conftest import EASY_PROMPT, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud, answer_for
from tests.server_harness import ServerThread
from tests.server_harness import health as details

pytestmark = pytest.mark.slow

Serve = Callable[..., ServerThread]


@pytest.fixture
def serve(
    make_router: Callable[..., Router], fake_cloud: FakeCloud, tmp_path: Path
) -> Iterator[Serve]:
    started: list[ServerThread] = []

    def start(
        extra: str = "", require_keys: bool = False, key: bool = True, **app_kwargs: Any
    ) -> ServerThread:
        router = make_router(fake_cloud, extra=extra, key=key)
        keys = KeyStore(tmp_path / "keys.sqlite3")
        server = ServerThread(
            create_app(router, keys=keys, require_keys=require_keys, **app_kwargs)
        )
        server.router = router  # type: ignore[attr-defined]
        server.keys = keys  # type: ignore[attr-defined]
        started.append(server.__enter__())
        return server

    yield start
    for s in started:
        s.__exit__()


def client(server: ServerThread, key: str = "sk-placeholder") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


JSON = {"content-type": "application/json"}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_openai_client_non_streamed_with_routing_headers(serve: Serve) -> None:
    server = serve()
    raw = client(server).chat.completions.with_raw_response.create(
        model="auto", messages=ask(EASY_PROMPT), max_tokens=8, user="ana"
    )
    assert raw.headers["x-router-tier"] == "local"
    assert raw.headers["x-router-model"] == "smollm2"
    assert float(raw.headers["x-router-score"]) < 0.35
    # the default estimator (v1) scored it
    v1 = StructureEstimator().score(ChatRequest(ask(EASY_PROMPT)))
    assert raw.headers["x-router-score"] == f"{v1:.4f}"
    assert raw.headers["x-router-cache"] == "miss"
    done = raw.parse()
    assert done.choices[0].message.content
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 8
    again = client(server).chat.completions.with_raw_response.create(
        model="auto", messages=ask(EASY_PROMPT), max_tokens=8
    )
    assert again.headers["x-router-cache"] == "hit"
    assert again.parse().choices[0].message.content == done.choices[0].message.content
    bypass = client(server).chat.completions.with_raw_response.create(
        model="auto",
        messages=ask(EASY_PROMPT),
        max_tokens=8,
        extra_headers={"Cache-Control": "no-cache"},
    )
    assert bypass.headers["x-router-cache"] == "miss"
    users = [e.user for e in server.router.ledger.entries()]  # type: ignore[attr-defined]
    assert users == ["ana", None, None]


def test_openai_client_streaming_with_and_without_usage(serve: Serve) -> None:
    server = serve()
    c = client(server)
    with c.chat.completions.with_streaming_response.create(
        model="local",
        messages=ask("Name a colour."),
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-router-tier"] == "local"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 6
    plain = list(
        c.chat.completions.create(
            model="local", messages=ask("Name a colour."), max_tokens=6, stream=True
        )
    )
    assert all(ch.choices for ch in plain)  # no usage chunk unless asked for
    assert "".join(ch.choices[0].delta.content or "" for ch in plain) == text  # cache replay


def test_async_client_and_the_cloud_tier_through_litellm(
    serve: Serve, fake_cloud: FakeCloud
) -> None:
    server = serve()

    async def go() -> tuple[str, str]:
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        done = await c.chat.completions.create(
            model="auto", messages=ask(HARD_PROMPT), max_tokens=30
        )
        stream = await c.chat.completions.create(
            model="cloud", messages=ask("Hello cloud"), max_tokens=30, stream=True
        )
        parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        await c.close()
        return done.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(go())
    assert whole == answer_for(ask(HARD_PROMPT))
    assert streamed == answer_for(ask("Hello cloud"))
    assert [r["model"] for r in fake_cloud.requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    tiers = [e.tier for e in server.router.ledger.entries()]  # type: ignore[attr-defined]
    assert tiers == ["cloud", "cloud"]


def test_models_health_and_metrics(serve: Serve) -> None:
    server = serve()
    c = client(server)
    ids = [m.id for m in c.models.list()]
    assert ids == ["auto", "local", "cloud", "smollm2", "cloud-mini"]
    assert c.models.retrieve("smollm2").owned_by == "local"
    c.chat.completions.create(model="auto", messages=ask("Hi"), max_tokens=4)
    c.chat.completions.create(model="auto", messages=ask("Hi"), max_tokens=4)
    httpx.post(server.url + "/v1/chat/completions", content=b"{", headers=JSON)
    public = httpx.get(server.url + "/health").json()  # no details
    assert set(public) == {"status", "config", "cloud_client"} and public["status"] == "ok"
    health = details(server.url)
    assert health["status"] == "ok" and health["models"]["smollm2"]["usable"] is True
    text = httpx.get(server.url + "/metrics").text
    assert 'router_requests_total{api="chat",tier="local",status="200"} 2' in text
    assert 'router_requests_total{api="chat",tier="none",status="400"} 1' in text
    assert "router_cache_hits_total 1" in text
    assert 'router_request_duration_seconds_count{tier="local"} 2' in text
    saved = float(text.split("\nrouter_tokens_saved_total ")[1].split()[0])
    assert saved > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_a_backend_changed_never_answers_a_later_repeat(
    tmp_path: Path, stream: bool
) -> None:
    """Repeated bodies are not parsed again when the cache answers them (Parsed), streamed or
    not; a request a backend saw (and may change in place, as LiteLLM does to messages) is
    never the one a later repeat is answered with: every repeat is keyed and answered as it
    was sent."""
    from router.backends import FunctionBackend

    seen: list[int] = []

    def meddling(request: Any, params: Any) -> str:
        seen.append(len(request.messages))
        request.messages.append({"role": "system", "content": "changed by the backend"})
        return "local answer"

    config = write_config(tmp_path, None, '[cache]\ndir = "cache"\nttl_seconds = 1\n')
    body = {
        "model": "local",
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi, are you there?"}],
    }
    with (
        Router(config, backends={"smollm2": FunctionBackend("smollm2", meddling)}) as router,
        ServerThread(create_app(router)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):

        def ask() -> str:
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            if stream:
                events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e[6:7] == "{"]
                text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
                assert text == "local answer" and r.text.endswith("data: [DONE]\n\n")
            else:
                assert r.json()["choices"][0]["message"]["content"] == "local answer"
            return r.headers["x-router-cache"]

        caches = [ask(), ask(), ask()]  # answered, then hits (the last one's parse remembered)
        time.sleep(1.1)  # the entry expires
        caches += [ask(), ask(), ask()]  # the remembered call finds no entry: parsed afresh
        assert caches == ["miss", "hit", "hit", "miss", "hit", "hit"]
        assert seen == [1, 1]  # each backend call got the request as sent
        assert len(router.ledger.entries()) == 6


def test_the_latency_histogram_is_cumulative_as_prometheus_reads_it() -> None:
    """Each `le` bucket counts every request at or below it; +Inf and _count all of them."""
    from router.server.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.003, 0.01, 0.02, 0.4, 100.0):
        metrics.observe(200, seconds)
    text = metrics.render()

    def bucket(le: str) -> int:
        line = f'router_request_duration_seconds_bucket{{tier="none",le="{le}"}} '
        return int(text.split(line)[1].split()[0])

    assert [bucket(le) for le in ("0.005", "0.01", "0.025", "0.5", "60.0", "+Inf")] == [
        1, 2, 3, 4, 4, 5
    ]  # fmt: skip
    assert 'router_request_duration_seconds_count{tier="none"} 5' in text


BAD_INPUTS: list[tuple[Any, int, str | None, str]] = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"model": "auto"}, 400, "messages", "non-empty list"),
    ({"model": "auto", "messages": []}, 400, "messages", "non-empty list"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "one of"),
    ({"messages": [{"role": "user", "content": {"a": 1}}]}, 400, "messages[0].content", "string"),
    ({"messages": ask("hi"), "temperature": "hot"}, 400, "temperature", "number"),
    ({"messages": ask("hi"), "max_tokens": -5}, 400, "max_tokens", "positive integer"),
    ({"messages": ask("hi"), "max_tokens": 10**9}, 400, None, "needs ~"),
    ({"messages": ask("hi"), "stream": "yes"}, 400, "stream", "true or false"),
    ({"messages": ask("hi"), "n": 3}, 400, "n", "must be 1"),
    ({"messages": ask("hi"), "logprobs": True}, 400, "logprobs", "not return log probabilities"),
    ({"messages": ask("hi"), "top_logprobs": 5}, 400, "top_logprobs", "not return log prob"),
    ({"messages": ask("hi"), "frobnicate": 1}, 400, "frobnicate", "Unrecognized"),
    ({"messages": ask("hi"), "model": 7}, 400, "model", "non-empty string"),
    ({"messages": ask("hi"), "model": "gpt-9"}, 404, "model", "not found in models.toml"),
    ({"messages": ask("   ")}, 400, "messages", "nothing to answer"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD_INPUTS)
def test_bad_input_gets_an_openai_error_and_changes_nothing(
    serve: Serve, body: Any, status: int, param: str | None, message: str
) -> None:
    server = serve()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"]
    assert server.router.ledger.entries() == []  # type: ignore[attr-defined]
    assert httpx.get(server.url + "/health").status_code == 200


def test_oversized_body_is_413_and_no_tier_is_503(serve: Serve) -> None:
    server = serve(max_body_bytes=2048, key=False)
    big = {"messages": ask("x" * 5000)}
    r = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and "larger than 2048 bytes" in r.json()["error"]["message"]
    # The cloud model has no key: forcing it, or a shape only it could serve (tools), is the
    # same non-retryable 400 naming the setting: a retry would get the same.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for body in (
        {"model": "cloud-mini", "messages": ask("hi")},
        {"model": "auto", "messages": ask("hi"), "tools": tools},
    ):
        r = httpx.post(server.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "no_model_can_serve"
        assert "ROUTER_TEST_CLOUD_KEY is not set" in r.json()["error"]["message"]
    # The openai client surfaces the same error as its own exception type.
    with pytest.raises(openai.NotFoundError, match="model_not_found"):
        client(server).chat.completions.create(model="phi3", messages=ask("hi"))
    assert server.router.ledger.entries() == []  # type: ignore[attr-defined]


def _local_stream(server: ServerThread, prompt: str, max_tokens: int) -> Any:
    """A long streamed local generation, read line by line by the caller."""
    return httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        timeout=60,
        json={
            "model": "local",
            "messages": ask(prompt),
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": 0,
        },
    )


def _slow_stream(
    server: ServerThread, started: threading.Event, done: threading.Event, out: dict[str, Any]
) -> None:
    with _local_stream(server, "Write a long story about a dragon and a knight.", 120) as r:
        lines = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines += 1
                started.set()
        out["lines"] = lines
    done.set()


def test_cache_hits_and_cloud_calls_are_served_while_the_local_model_is_busy(
    serve: Serve,
) -> None:
    server = serve()
    c = client(server)
    c.chat.completions.create(model="local", messages=ask("Hi"), max_tokens=4)  # prime cache
    started, done, out = threading.Event(), threading.Event(), {}
    worker = threading.Thread(target=_slow_stream, args=(server, started, done, out))
    worker.start()
    assert started.wait(30)
    timings = []
    for _ in range(5):
        t = time.perf_counter()
        raw = c.chat.completions.with_raw_response.create(
            model="local", messages=ask("Hi"), max_tokens=4
        )
        timings.append(time.perf_counter() - t)
        assert raw.headers["x-router-cache"] == "hit"
    t = time.perf_counter()
    cloud = c.chat.completions.create(model="cloud", messages=ask("quick one"), max_tokens=5)
    cloud_time = time.perf_counter() - t
    still_generating = not done.is_set()
    worker.join(60)
    assert still_generating, "the long generation finished before the checks; make it longer"
    assert max(timings) < 0.5, timings
    assert cloud.choices[0].message.content == answer_for(ask("quick one"))
    assert cloud_time < 2.0
    assert out["lines"] > 20


def test_full_local_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    # max_queue = 1: one request may hold the model, the next is refused at once. This test
    # loads its own copy of the model, configured the way a user would.
    path = write_config(tmp_path, None)
    path.write_text(path.read_text().replace("max_score = 0.35", "max_score = 0.35\nmax_queue = 1"))
    with Router(path) as router, ServerThread(create_app(router)) as server:
        started, done, out = threading.Event(), threading.Event(), {}
        worker = threading.Thread(target=_slow_stream, args=(server, started, done, out))
        worker.start()
        try:
            assert started.wait(30)
            r = httpx.post(
                server.url + "/v1/chat/completions",
                timeout=30,
                json={"model": "local", "messages": ask("Hello there"), "max_tokens": 4},
            )
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            assert "max_queue = 1" in r.json()["error"]["message"]
        finally:
            worker.join(60)
        assert out["lines"] > 20  # the request holding the model was unaffected


def test_client_disconnect_stops_the_generation(serve: Serve) -> None:
    server = serve()
    with _local_stream(server, "Write a very long essay about the sea.", 400) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break  # leaving the block closes the connection mid-stream
    ledger = server.router.ledger  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while not ledger.entries() and time.monotonic() < deadline:
        time.sleep(0.1)
    row = ledger.entries()[0]
    assert "answer cut: client disconnected" in row.reason
    assert row.completion_tokens < 100
    # The model is free again: a new local request is answered promptly.
    t = time.perf_counter()
    client(server).chat.completions.create(model="local", messages=ask("Hi"), max_tokens=4)
    assert time.perf_counter() - t < 5


def test_keys_required_off_loopback(serve: Serve, tmp_path: Path) -> None:
    server = serve(require_keys=True)
    keys: KeyStore = server.keys  # type: ignore[attr-defined]
    key, key_id = keys.create("carol")
    with pytest.raises(openai.AuthenticationError, match="invalid_api_key"):
        client(server, "sk-wrong").chat.completions.create(model="auto", messages=ask("Hi"))
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": ask("Hi")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    done = client(server, key).chat.completions.create(
        model="auto", messages=ask("Hi"), max_tokens=4, user="mallory"
    )
    assert done.choices[0].message.content is not None
    # The key's owner is recorded, not what the body claims.
    assert [e.user for e in server.router.ledger.entries()] == ["carol"]  # type: ignore[attr-defined]
    # Only the hash is stored; the key appears nowhere on disk.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert keys.revoke(key_id)
    with pytest.raises(openai.AuthenticationError):
        client(server, key).chat.completions.create(model="auto", messages=ask("Hi"))


def test_on_loopback_placeholder_keys_work_but_a_bad_router_key_does_not(serve: Serve) -> None:
    server = serve()
    assert client(server, "EMPTY").models.list().data
    with pytest.raises(openai.AuthenticationError):
        client(server, "rk-not-a-real-key").models.list()
