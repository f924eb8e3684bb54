"""Hardening III (issue 34): no provider text reaches a client, on any API.

A provider's error message may quote a masked key, the organisation, the project or an
internal host. It is the operator's, for the log and the ledger. A client reads the router's
own words, in every byte it receives: the answer's headers (`x-router-routing` included), its
body, every stream event and the stream's routing comment, on each API, plain and streamed,
on each path a failure takes (a fallback to the local tier, a refusal, an outage, every model
failing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.errors import BackendError
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud, Fault
from tests.server_harness import ServerThread

# What a provider's and a worker's error text may carry, each marked for the grep.
PROVIDER = (
    "Incorrect API key sk-proj-CANARY****ABCD for org-CANARYORG, project proj_CANARYPROJ, "
    "at upstream-CANARY.internal:8443"
)
WORKER = "smollm2: worker pid 4242 died: CANARY-STDERR /home/op/CANARY-models/x.gguf"
CANARY = "CANARY"

# Each API: its path, and its body for a model, a prompt and whether to stream.
Body = Callable[[str, str, bool], dict[str, Any]]
APIS: dict[str, tuple[str, Body]] = {
    "chat": (
        "/v1/chat/completions",
        lambda m, p, s: {"model": m, "messages": [{"role": "user", "content": p}], "stream": s},
    ),
    "completions": (
        "/v1/completions",
        lambda m, p, s: {"model": m, "prompt": p, "stream": s, "max_tokens": 16},
    ),
    "responses": ("/v1/responses", lambda m, p, s: {"model": m, "input": p, "stream": s}),
    "messages": (
        "/v1/messages",
        lambda m, p, s: {
            "model": m,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": p}],
            "stream": s,
        },
    ),
    "ollama-chat": (
        "/api/chat",
        lambda m, p, s: {"model": m, "messages": [{"role": "user", "content": p}], "stream": s},
    ),
    "ollama-generate": ("/api/generate", lambda m, p, s: {"model": m, "prompt": p, "stream": s}),
}


class Local:
    """The local tier: answers, or fails with a worker's private text when told to."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, request: Any, params: Any) -> str:
        if self.failing:
            raise BackendError(WORKER, public="smollm2: the local model failed; it restarts")
        return "local answer"


@pytest.fixture
def served(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Router, str, Local]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = f"""
    [models.cloud-embed]
    tier = "cloud"
    litellm_model = "openai/text-embedding-3-small"
    api_key_env = "{CLOUD_KEY_ENV}"
    api_base = "{fake_cloud.base_url}"
    embeddings = true
    """
    config = write_config(tmp_path, fake_cloud.base_url, extra)
    local = Local()
    backends = {"smollm2": FunctionBackend("smollm2", local)}
    with Router(config, backends=backends) as router, ServerThread(create_app(router)) as server:
        yield router, server.url, local


def received(response: httpx.Response) -> str:
    """Every byte a client gets: the status line's code, each header, the whole body."""
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{head}\n\n{response.text}"


# Each path a failure takes: the model asked for, the prompt, the provider's fault, whether
# the local tier fails too, and the statuses a client may get.
PATHS = {
    "fallback": ("auto", HARD_PROMPT, Fault(500, message=PROVIDER), False, {200}),
    "refused": ("cloud", "Hi", Fault(401, message=PROVIDER), False, {502}),
    "outage": ("cloud", "Hi", Fault(503, message=PROVIDER), False, {503}),
    "all failed": ("auto", HARD_PROMPT, Fault(500, message=PROVIDER), True, {503}),
}


@pytest.mark.parametrize("api", list(APIS))
def test_provider_and_worker_text_reach_no_client(
    served: tuple[Router, str, Local], fake_cloud: FakeCloud, api: str
) -> None:
    router, url, local = served
    path, body = APIS[api]
    seen = 0
    for route, (model, prompt, fault, local_fails, statuses) in PATHS.items():
        for stream in (False, True):
            fake_cloud.faults.clear()
            fake_cloud.inject(*[fault] * 8)  # and any retries
            local.failing = local_fails
            response = httpx.post(
                url + path,
                json=body(model, prompt, stream),
                headers={"x-router-routing": "1"},
                timeout=60,
            )
            everything = received(response)
            assert response.status_code in statuses, (route, stream, everything[:600])
            assert CANARY not in everything, (route, stream, everything)
            if route == "fallback":  # the routing says what happened, in the router's words
                shown = response.headers.get("x-router-routing") or everything
                assert "answered locally" in shown or response.headers["x-router-tier"]
            seen += 1
    assert seen == 2 * len(PATHS)
    # The operator's record keeps the provider's words.
    reasons = " ".join(r.reason for r in router.ledger.entries())
    assert "sk-proj-CANARY" in reasons


def test_the_routing_a_client_reads_is_the_public_one(
    served: tuple[Router, str, Local], fake_cloud: FakeCloud
) -> None:
    """x-router-routing and the stream's routing comment: the attempts in public words."""
    _, url, _ = served
    fake_cloud.inject(*[Fault(500, message=PROVIDER)] * 8)
    body = {"model": "auto", "messages": [{"role": "user", "content": HARD_PROMPT}]}
    plain = httpx.post(
        url + "/v1/chat/completions", json=body, headers={"x-router-routing": "1"}, timeout=60
    )
    routing = json.loads(plain.headers["x-router-routing"])
    assert routing["tier"] == "local" and routing["attempts"]
    assert all("cloud-mini" in a and CANARY not in a for a in routing["attempts"])
    assert "HTTP 500" in routing["reason"] and CANARY not in routing["reason"]
    fake_cloud.faults.clear()
    fake_cloud.inject(*[Fault(500, message=PROVIDER)] * 8)
    streamed = httpx.post(
        url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers={"x-router-routing": "1"},
        timeout=60,
    )
    comment = [ln for ln in streamed.text.splitlines() if ln.startswith(": x-router-routing ")]
    assert comment and CANARY not in streamed.text
    assert json.loads(comment[0].split(" ", 2)[2])["attempts"] == routing["attempts"]


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_embeddings_errors_say_nothing_of_the_provider(
    served: tuple[Router, str, Local], fake_cloud: FakeCloud, api: str
) -> None:
    router, url, _ = served
    fake_cloud.inject(*[Fault(500, message=PROVIDER)] * 8)
    path, body = (
        ("/v1/embeddings", {"model": "cloud-embed", "input": ["a", "b"]})
        if api == "openai"
        else ("/api/embed", {"model": "cloud-embed", "input": ["a", "b"]})
    )
    response = httpx.post(url + path, json=body, headers={"x-router-routing": "1"}, timeout=60)
    assert response.status_code == 503 and CANARY not in received(response)
    # The router's 3 attempts ([retry] max_retries = 2), none added by LiteLLM (it used to
    # make 3 calls of each: 9).
    assert len(fake_cloud.requests) == 3
    # A request every model failed has its row all the same: nothing charged, and why.
    (row,) = router.ledger.entries()
    assert row.api == "embeddings" and row.model == "cloud-embed" and not row.pending
    assert "failed: " in row.reason and row.cost_usd == 0.0 and row.usd_saved == 0.0
