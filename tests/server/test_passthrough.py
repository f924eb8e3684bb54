"""Hardening III (issue 34): no request body and no client header steers a provider call.

A Messages request to a model that speaks Anthropic's API goes to LiteLLM as it came, and its
body used to reach `litellm.anthropic_messages(**body)` whole: `custom_llm_provider` and
`aws_bedrock_runtime_endpoint` sent the operator's key to a listener of the client's choosing,
`mock_response` planted a cached (and charged) answer, `extra_headers` smuggled headers. Here
every keyword argument LiteLLM has is sent in a body, to a stand-in Anthropic on loopback with
a second listener standing in for the attacker: the attacker hears nothing, the canary key
reaches only the configured provider, and every answer is the provider's.
"""

from __future__ import annotations

import gc
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router
from router.backends.cloud import litellm_module
from router.backends.native import NATIVE
from router.engine.cache import CachePolicy, answered
from router.server.app import create_app
from router.types import SAMPLING_PARAMS, ChatRequest, Decision
from tests.conftest import write_config
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread

CANARY_ENV = "ROUTER_TEST_ANTHROPIC_KEY"
CANARY = "sk-ant-CANARY-operator-key-0123456789"
PLANTED = "PLANTED ANSWER from the request body"


@pytest.fixture
def attacker() -> Iterator[FakeCloud]:
    listener = FakeCloud().start()
    yield listener
    listener.stop()


@pytest.fixture
def served(
    tmp_path: Path, fake_cloud: FakeCloud, attacker: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Router, str]]:
    """A router whose `haiku` speaks Anthropic's API (the stand-in provider), with every
    provider default LiteLLM reads from the environment pointed at the attacker: a call that
    left the configured provider would be heard there."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    for var in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OLLAMA_API_BASE", "ANTHROPIC_API_BASE"):
        monkeypatch.setenv(var, attacker.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-from-env-not-the-operators")
    extra = f"""
    [models.haiku]
    tier = "cloud"
    litellm_model = "anthropic/claude-haiku-4-5"
    api_key_env = "{CANARY_ENV}"
    api_base = "{fake_cloud.base_url.removesuffix("/v1")}"
    timeout_seconds = 10
    """
    config = write_config(tmp_path, None, extra)
    with Router(config) as router, ServerThread(create_app(router)) as server:
        yield router, server.url


def litellm_arguments() -> set[str]:
    """Every keyword argument name LiteLLM's entry points and its passthrough take."""
    litellm = litellm_module()
    from litellm.llms.anthropic.experimental_pass_through.messages import handler
    from litellm.types.router import GenericLiteLLMParams

    names: set[str] = set()
    for function in (
        litellm.completion,
        litellm.acompletion,
        litellm.embedding,
        litellm.responses,
        handler.anthropic_messages,
        handler.anthropic_messages_handler,
    ):
        names |= {
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    names |= set(GenericLiteLLMParams.model_fields)
    names |= set(getattr(litellm.types.utils, "all_litellm_params", ()))
    return names


# Anthropic request fields that LiteLLM's passthrough also takes under the same name, as that
# field: the only names the allow-list and LiteLLM's arguments may share.
SHARED = {
    "model", "messages", "max_tokens", "metadata", "stop_sequences", "system", "temperature",
    "thinking", "tool_choice", "tools", "top_k", "top_p",
}  # fmt: skip
# The names the hostile probe used, each tried alone as well.
PROBED = (
    "custom_llm_provider", "api_base", "base_url", "aws_bedrock_runtime_endpoint",
    "aws_access_key_id", "vertex_project", "vertex_location", "extra_headers", "headers",
    "extra_body", "mock_response", "litellm_params", "num_retries", "timeout", "client",
    "api_key", "litellm_metadata", "provider_specific_header", "mock_tool_calls",
)  # fmt: skip


def hostile(name: str, attacker: str) -> Any:
    """What an attacker would put under `name`."""
    if name == "custom_llm_provider":
        return "bedrock"
    if "header" in name:
        return {
            "x-api-key": "sk-ant-attacker",
            "authorization": "Bearer sk-ant-attacker",
            "host": "attacker.invalid",
            "anthropic-version": "1999-01-01",
            "transfer-encoding": "chunked",
        }
    if name.startswith("mock"):
        return PLANTED
    if name in ("metadata", "litellm_metadata", "litellm_params", "extra_body"):
        return {"api_base": attacker, "mock_response": PLANTED, "callbacks": ["langfuse"]}
    if "retries" in name:
        return 50
    if "timeout" in name:
        return 0.000001
    return attacker


def ask(url: str, text: str, extra: dict[str, Any], stream: bool = False) -> httpx.Response:
    body = {
        "model": "haiku",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **extra,
    }
    headers = {"x-api-key": "sk-ant-client-key", "anthropic-version": "2023-06-01"}
    return httpx.post(url + "/v1/messages", json=body, headers=headers, timeout=30)


def text_of(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        deltas = [
            json.loads(line[5:]).get("delta", {}).get("text", "")
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]
        return "".join(deltas)
    return str(response.json()["content"][0]["text"])


def test_no_litellm_argument_is_on_the_allow_list() -> None:
    """Structural: what the body may carry never names one of LiteLLM's own arguments, bar
    the Anthropic fields it takes under their own names."""
    arguments = litellm_arguments()
    assert len(arguments) > 100  # the enumeration found LiteLLM's arguments
    assert {"custom_llm_provider", "api_base", "mock_response", "extra_headers"} <= arguments
    assert set(NATIVE) & arguments <= SHARED
    # Every other API reaches LiteLLM as a chat request: its checked messages and these
    # OpenAI parameters (router.types.schema.ChatParams), each one LiteLLM passes on as itself
    # and none of LiteLLM's own settings.
    from litellm.types.router import GenericLiteLLMParams

    completion = set(inspect.signature(litellm_module().completion).parameters)
    assert set(SAMPLING_PARAMS) <= completion
    assert not set(SAMPLING_PARAMS) & set(GenericLiteLLMParams.model_fields)
    # An image URL in a message is fetched by LiteLLM itself for some providers: its own
    # check (no private, loopback or link-local address, each redirect checked) stays on.
    assert litellm_module().user_url_validation is True


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_litellm_argument_in_a_body_is_inert(
    served: tuple[Router, str], fake_cloud: FakeCloud, attacker: FakeCloud, stream: bool
) -> None:
    router, url = served
    names = sorted((litellm_arguments() | set(PROBED)) - set(NATIVE) - {"stream"})
    everything = {name: hostile(name, attacker.base_url) for name in names}
    tries = [everything, *({name: value} for name, value in everything.items())]  # each alone
    for i, extra in enumerate(tries):
        question = f"question {i} {stream}"
        sent = len(fake_cloud.requests)
        answer = ask(url, question, extra, stream)
        assert answer.status_code == 200, (sorted(extra)[:3], answer.text[:300])
        assert text_of(answer) == f"native answer to: {question}"  # the provider's words
        assert CANARY not in answer.text
        assert len(fake_cloud.requests) == sent + 1  # one call, no retries added
        body, headers = fake_cloud.requests[-1], fake_cloud.headers[-1]
        assert set(body) <= {*NATIVE, "stream"}, sorted(set(body) - {*NATIVE, "stream"})
        assert headers["x-api-key"] == CANARY and "authorization" not in headers
        assert headers["anthropic-version"] == "2023-06-01"
        assert headers["host"].startswith("127.0.0.1")
    assert attacker.requests == [] and attacker.connections == 0
    rows = router.ledger.entries()
    assert len(rows) == len(tries) and all(r.model == "haiku" for r in rows)
    assert "not passed on: " in rows[0].reason and " more (not a request field" in rows[0].reason
    alone = rows[1 + names.index("mock_response")].reason
    assert "not passed on: mock_response (" in alone


def test_a_body_supplied_answer_is_never_served_charged_or_cached(
    served: tuple[Router, str], fake_cloud: FakeCloud
) -> None:
    router, url = served
    planted = ask(url, "What is 2+2?", {"mock_response": PLANTED})
    assert text_of(planted) == "native answer to: What is 2+2?"
    paid = router.ledger.entries()[-1]
    assert paid.tier == "cloud" and paid.prompt_tokens == 11  # the provider's own usage
    again = ask(url, "What is 2+2?", {})
    assert again.headers["x-router-cache"] == "hit"
    assert text_of(again) == "native answer to: What is 2+2?"
    hit = router.ledger.entries()[-1]
    assert hit.cache_hit and paid.response_id in hit.reason  # the call that answered it
    assert len(fake_cloud.requests) == 1
    # Through OpenAI's chat API the same question is not a hit on anything planted.
    chat = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "haiku", "messages": [{"role": "user", "content": "What is 2+2?"}]},
        timeout=30,
    )
    assert PLANTED not in chat.text


def test_a_cache_entry_that_names_no_model_call_is_never_served(tmp_path: Path) -> None:
    """An entry of an older router (no `row`), or one written by anything but a model call,
    is a miss."""
    from router.engine.cache import DiskResponseCache

    disk = DiskResponseCache(tmp_path / "c", ttl_seconds=60, size_limit_mb=8)
    policy = CachePolicy(disk)
    request = ChatRequest([{"role": "user", "content": "What is 2+2?"}])
    answer = {"choices": [{"message": {"role": "assistant", "content": PLANTED}}]}
    disk.set("k1", {"response": answer, "tier": "cloud", "model": "haiku"})
    disk.set("k2", {"response": answer, "tier": "cloud", "model": "haiku", "row": "r-1"})
    assert policy.get(request, "k1") is None and answered(disk.get("k1")) is None
    hit = policy.get(request, "k2")
    assert hit is not None
    # The row that answered first is the operator's to read; with a shared cache it is
    # another user's answer id.
    _, routing = policy.replay(hit, Decision(0.1, ("haiku",), "score 0.10"))
    assert "r-1" in routing.reason and "r-1" not in json.dumps(routing.public_dict())
    disk.close()


def test_the_clients_anthropic_headers_reach_the_provider_only_as_checked_values(
    served: tuple[Router, str], fake_cloud: FakeCloud, attacker: FakeCloud
) -> None:
    _, url = served
    beta = "context-management-2025-06-27, interleaved-thinking-2025-05-14"
    body = {"model": "haiku", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": "sk-ant-client", "anthropic-beta": beta}
    ok = httpx.post(url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert ok.status_code == 200, ok.text
    sent = fake_cloud.headers[-1]
    assert "context-management-2025-06-27" in sent["anthropic-beta"]
    assert sent["x-api-key"] == CANARY and sent["host"].startswith("127.0.0.1")
    for bad in ("oauth 2025", "x" * 65, ",".join(["a"] * 17), "beta;drop=1"):
        refused = httpx.post(
            url + "/v1/messages",
            json=body,
            headers={"anthropic-beta": bad},
            timeout=30,
        )
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert "anthropic-beta" in refused.json()["error"]["message"]
    version = httpx.post(
        url + "/v1/messages", json=body, headers={"anthropic-version": "latest"}, timeout=30
    )
    assert version.status_code == 400 and "anthropic-version" in version.text
    assert attacker.connections == 0


def test_advisor_tools_and_unknown_metadata_are_not_passed(
    served: tuple[Router, str], fake_cloud: FakeCloud, attacker: FakeCloud
) -> None:
    """LiteLLM runs an `advisor_*` tool itself, calling the model, key and base URL it names;
    `metadata` other than `user_id` is LiteLLM's to read, not Anthropic's."""
    router, url = served
    advisor = {
        "type": "advisor_20260301",
        "name": "advisor",
        "model": "openai/gpt-4o",
        "api_base": attacker.base_url,
        "api_key": "sk-attacker",
    }
    tool = {"name": "weather", "input_schema": {"type": "object"}}
    extra = {"tools": [advisor, tool], "metadata": {"user_id": "ana", "callbacks": ["x"]}}
    answer = ask(url, "Plan my trip", extra)
    assert answer.status_code == 200, answer.text
    sent = fake_cloud.requests[-1]
    assert sent["tools"] == [tool] and sent["metadata"] == {"user_id": "ana"}
    assert attacker.connections == 0
    reason = router.ledger.entries()[-1].reason
    assert "advisor tools" in reason and "metadata other than user_id" in reason


def test_a_passed_through_call_leaves_nothing_behind_to_print(
    served: tuple[Router, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM's success logging started tasks on each call's own event loop, which was closed
    under them: each one printed a 2 KB traceback ("Event loop is closed") when collected."""
    _, url = served
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    for i in range(5):
        for stream in (False, True):
            assert ask(url, f"tidy {i}", {}, stream).status_code == 200
    gc.collect()
    assert seen == []
