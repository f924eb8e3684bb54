"""Rate limits through the real server ([[limits]]): a burst gets exactly its rpm, the rest a
retryable 429 `rate_limited` with Retry-After in each API's shape, each refusal a ledger row;
tokens counted as answers end (tpm), streamed or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.server_harness import ServerThread

LIMITS = (
    '\n[aliases]\n"gpt-*" = "cloud-mini"\n'
    "\n[[limits]]\nrpm = 10\n"  # each user (the anonymous together)
    '\n[[limits]]\nuser = "tok"\ntpm = 1\n'  # one answer's tokens fill it
    '\n[[limits]]\nuser = "cheap"\nmodel = "cloud-mini"\nrpm = 1\n'
)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Router, str]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", LIMITS)
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "Hello from the router."),
        "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "Hello from the cloud."),
    }
    with Router(config, backends=backends) as router, ServerThread(create_app(router)) as s:
        yield router, s.url


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "local", "messages": [{"role": "user", "content": text}], **extra}


def test_a_burst_gets_exactly_its_rpm_and_every_api_a_429_in_its_shape(
    served: tuple[Router, str],
) -> None:
    router, url = served
    with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda i: http.post("/v1/chat/completions", json=chat(f"q {i}")), range(100))
        )
        statuses = [r.status_code for r in answers]
        assert statuses.count(200) == 10 and statuses.count(429) == 90, statuses
        refused = next(r for r in answers if r.status_code == 429)
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
        assert error["message"].startswith("rate limit anonymous rpm = 10 reached: 10 requests")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-router-exit-code"] == "3"

        # Every API, streamed or not: a 429 in its own shape, with Retry-After.
        asks = {
            "/v1/completions": {"model": "local", "prompt": "Hi", "max_tokens": 8},
            "/v1/messages": {
                "model": "claude-x", "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": "Hi"}],
            },
            "/v1/responses": {"model": "local", "input": "Hi"},
            "/api/chat": {"model": "local", "messages": [{"role": "user", "content": "Hi"}]},
            "/api/generate": {"model": "local", "prompt": "Hi", "stream": False},
        }  # fmt: skip
        shapes = {}
        for path, body in asks.items():
            r = http.post(path, json=body)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, (path, r.text)
            shapes[path] = r.json()
        streamed = http.post("/v1/chat/completions", json=chat("Hi", stream=True))
        assert streamed.status_code == 429 and streamed.json()["error"]["code"] == "rate_limited"
        assert shapes["/v1/messages"]["type"] == "error"
        assert shapes["/v1/messages"]["error"]["type"] == "rate_limit_error"
        assert shapes["/v1/responses"]["error"]["code"] == "rate_limited"
        assert shapes["/v1/completions"]["error"]["code"] == "rate_limited"
        assert "rate limit anonymous rpm = 10" in shapes["/api/chat"]["error"]
        assert "rate limit anonymous rpm = 10" in shapes["/api/generate"]["error"]

        # Another user has a window of their own.
        assert http.post("/v1/chat/completions", json=chat("Hi", user="bob")).status_code == 200

        # Each refusal is a ledger row (who, why), and /metrics counts them.
        rows = router.ledger.entries()
        limited = [r for r in rows if r.refusal == "rate_limited"]
        assert len(limited) == 90 + len(asks) + 1
        assert {r.user for r in limited} == {None} and limited[0].tier == "none"
        assert "rate limit anonymous rpm = 10 reached" in limited[0].reason
        assert sum(1 for r in rows if not r.refusal) == 11
        metrics = http.get("/metrics").text
        assert f'router_refusals_total{{kind="rate_limited"}} {len(limited)}' in metrics
        assert f'router_rate_limited_total{{limit="anonymous rpm"}} {len(limited)}' in metrics


def test_tpm_counts_each_answers_tokens_streamed_or_not(served: tuple[Router, str]) -> None:
    router, url = served
    with httpx.Client(base_url=url, timeout=60) as http:
        # tpm = 1: the first answer's tokens fill the window; the next is refused.
        assert http.post("/v1/chat/completions", json=chat("One", user="tok")).status_code == 200
        r = http.post("/v1/chat/completions", json=chat("Two", user="tok"))
        assert r.status_code == 429, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("rate limit user:tok tpm = 1 reached")
        assert 55 <= int(r.headers["retry-after"]) <= 61
        # A streamed answer's tokens count when its stream ends.
        router._limits = type(router._limits)()  # a fresh window
        body = chat("Three", user="tok", stream=True)
        with http.stream("POST", "/v1/chat/completions", json=body) as s:
            assert s.status_code == 200
            assert any(line.startswith("data: [DONE]") for line in s.iter_lines())
        assert http.post("/v1/chat/completions", json=chat("Four", user="tok")).status_code == 429


def test_a_model_limit_counts_the_requests_for_that_model_its_aliases_included(
    served: tuple[Router, str],
) -> None:
    _, url = served
    with httpx.Client(base_url=url, timeout=60) as http:
        to_cloud = {"messages": [{"role": "user", "content": "Hi"}], "user": "cheap"}
        first = http.post("/v1/chat/completions", json={**to_cloud, "model": "cloud-mini"})
        assert first.status_code == 200, first.text
        again = http.post("/v1/chat/completions", json={**to_cloud, "model": "gpt-5"})
        assert again.status_code == 429, again.text  # "gpt-*" is cloud-mini
        assert "user:cheap model:cloud-mini rpm = 1" in json.loads(again.text)["error"]["message"]
        # Other models are not this rule's.
        assert (
            http.post("/v1/chat/completions", json={**to_cloud, "model": "local"}).status_code
            == 200
        )
