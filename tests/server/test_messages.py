"""Anthropic's Messages API on the router, driven by the official `anthropic` SDK: create,
stream, count_tokens, tools both ways, errors in Anthropic's shape; one engine underneath
(the ledger's row says `messages`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from router import Router
from router.server.app import create_app
from router.server.keys import KeyStore
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread


def client(url: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-none", max_retries=0, **kwargs)


def test_create_and_the_ledger_row(served: tuple[Router, str]) -> None:
    router, url = served
    message = client(url).messages.create(
        model="claude-opus-5-5",
        max_tokens=20_000,  # agents send their largest: a ceiling, each model takes what it holds
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi there!"}],
        metadata={"user_id": "ana"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the router."
    assert message.stop_reason == "end_turn" and message.model == "claude-opus-5-5"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 4
    (row,) = router.ledger.entries()
    assert row.api == "messages" and row.user == "ana" and row.tier == "local"
    assert "dropped cache_control" in row.reason
    assert message.id.startswith("msg_") and row.response_id.endswith(message.id[4:])
    router.feedback(message.id, "good")  # an answer's id as the client saw it
    assert router.ledger.entries()[0].rating == "good"


def test_streaming_events_in_order(served: tuple[Router, str]) -> None:
    _, url = served
    with client(url).messages.stream(
        model="claude-haiku-5", max_tokens=64, messages=[{"role": "user", "content": "Hey"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert kinds[-2] == "message_delta"
    assert final.content[0].text == "Hello from the router."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4


def test_tools_round_trip(served: tuple[Router, str]) -> None:
    """tool_use out, tool_result back in: the client runs the tool, the model answers."""
    router, url = served
    tools = [
        {
            "name": "weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client(url).messages.create(
        model="claude-sonnet-5",
        max_tokens=256,
        tools=tools,
        messages=ask,  # type: ignore[arg-type]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "weather" and use.input == {"city": "Paris"}
    with client(url).messages.stream(
        model="claude-sonnet-5",
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=[
            *ask,  # type: ignore[list-item]
            {"role": "assistant", "content": [use.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": '{"sky": "sunny"}'}
                ],
            },
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    assert [r.tier for r in router.ledger.entries()] == ["cloud", "cloud"]  # tools: cloud


def test_a_tool_call_streams_as_input_json_deltas(served: tuple[Router, str]) -> None:
    _, url = served
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    with client(url).messages.stream(
        model="claude-sonnet-5",
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas and final.stop_reason == "tool_use"
    assert final.content[-1].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_count_tokens(served: tuple[Router, str]) -> None:
    router, url = served
    counted = client(url).messages.count_tokens(
        model="claude-opus-5-5", messages=[{"role": "user", "content": "Hello, world " * 30}]
    )
    assert 100 < counted.input_tokens < 400
    assert router.ledger.entries() == []  # nothing answered, nothing recorded


def test_errors_come_in_anthropics_shape(served: tuple[Router, str], tmp_path: Path) -> None:
    router, url = served
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(url).messages.create(
            model="gemini-9", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "gemini-9" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(url).messages.create(model="claude-x", max_tokens=0, messages=[])  # type: ignore[arg-type]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    r = httpx.post(url + "/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert router.ledger.entries() == []
    # An x-api-key is the router's key where keys are required.
    with KeyStore(tmp_path / "keys.sqlite3") as keys:
        key, _ = keys.create("ana")
        app = create_app(router, keys=keys, require_keys=True, loopback=False)
        with ServerThread(app) as secured:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                client(secured.url).messages.create(
                    model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
                )
            assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
            ok = anthropic.Anthropic(base_url=secured.url, api_key=key, max_retries=0)
            done = ok.messages.create(
                model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
            )
            assert done.content and router.ledger.entries()[-1].user == "ana"


# ---------------------------------------------------------------- passed as it came


def test_an_anthropic_model_gets_the_request_as_it_came(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the chosen model speaks the request's API, nothing is translated: `thinking`,
    `cache_control` and `context_management` reach it; the router still records the call."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = f"""
    [models.haiku]
    tier = "cloud"
    litellm_model = "anthropic/claude-haiku-4-5"
    api_key_env = "{CLOUD_KEY_ENV}"
    api_base = "{fake_cloud.base_url.removesuffix("/v1")}"
    """
    config = write_config(tmp_path, fake_cloud.base_url, extra)
    with Router(config) as router, ServerThread(create_app(router)) as server:
        body: dict[str, Any] = {
            "model": "haiku",
            "max_tokens": 20_000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "Hello there"}],
        }
        beta = {"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}}
        whole = client(server.url).messages.create(**body, extra_body=beta)  # a beta field
        sent = fake_cloud.requests[-1]
        assert sent["thinking"] == body["thinking"]
        assert sent["context_management"] == beta["context_management"]
        assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert sent["max_tokens"] == 20_000 and sent["model"] == "claude-haiku-4-5"
        assert whole.content[0].text == "native answer to: Hello there"  # type: ignore[union-attr]
        assert whole.id.startswith("msg_") and whole.id != "msg_fake"
        with client(server.url).messages.stream(
            **{**body, "messages": [{"role": "user", "content": "Hi again"}]}
        ) as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert final.content[0].text == "native answer to: Hi again"  # type: ignore[union-attr]
        rows = router.ledger.entries()
    assert [(r.api, r.tier, r.model) for r in rows] == [("messages", "cloud", "haiku")] * 2
    assert all("as it came" in r.reason and "dropped" not in r.reason for r in rows)
    assert rows[1].prompt_tokens == 11 and rows[1].completion_tokens == 5 and rows[1].cost_usd > 0
