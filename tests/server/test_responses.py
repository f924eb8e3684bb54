"""OpenAI's Responses API on the router, driven by the official `openai` SDK: create, stream,
function calls both ways, Codex's fields, errors; one engine underneath (the ledger's row says
`responses`)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from router import Router


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_create_with_codexs_fields(served: tuple[Router, str]) -> None:
    router, url = served
    done = client(url).responses.create(
        model="gpt-5-codex",
        instructions="Be brief.",
        input=[
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Hi"}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello!"}],
            },
        ],  # type: ignore[list-item]
        store=False,
        include=["reasoning.encrypted_content"],
        reasoning={"summary": "auto"},
        prompt_cache_key="k",
        extra_body={"client_metadata": {"x": "y"}},
    )
    assert done.status == "completed" and done.output_text == "Hello from the router."
    assert done.id.startswith("resp_") and done.usage and done.usage.output_tokens == 4
    (row,) = router.ledger.entries()
    assert row.api == "responses" and row.tier == "local"
    assert "dropped reasoning" in row.reason and "reasoning items" in row.reason
    router.feedback(done.id, "bad")  # the id the client saw
    assert router.ledger.entries()[0].rating == "bad"


def test_a_string_input_streams_every_event(served: tuple[Router, str]) -> None:
    _, url = served
    with client(url).responses.stream(model="gpt-5", input="Say hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds, kind
    assert final.output_text == "Hello from the router."


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_both_ways(served: tuple[Router, str], stream: bool) -> None:
    router, url = served
    tools: list[Any] = [
        {
            "type": "function",
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"type": "web_search"},  # a built-in tool: dropped, and said so
    ]
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        with client(url).responses.stream(model="gpt-5", input=ask, tools=tools) as events:
            deltas = [e.type for e in events if "function_call_arguments" in e.type]
            first = events.get_final_response()
        assert deltas[0] == "response.function_call_arguments.delta"
    else:
        first = client(url).responses.create(model="gpt-5", input=ask, tools=tools)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "weather" and json.loads(call.arguments) == {"city": "Paris"}
    follow = [
        *ask,
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "weather",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "grey"}'},
    ]
    second = client(url).responses.create(model="gpt-5", input=follow, tools=tools)
    assert second.output_text == "It is grey in Paris."
    assert "dropped web_search tools" in router.ledger.entries()[0].reason


def test_refusals_name_the_field(served: tuple[Router, str]) -> None:
    router, url = served
    with pytest.raises(openai.BadRequestError) as state:
        client(url).responses.create(model="gpt-5", input="Hi", previous_response_id="resp_x")
    assert state.value.param == "previous_response_id"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as empty:
        client(url).responses.create(model="gpt-5", input=[])
    assert empty.value.param == "input"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client(url).responses.create(model="gemini-9", input="Hi")  # no alias covers it
    assert router.ledger.entries() == []
