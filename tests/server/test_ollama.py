"""Ollama's native API on the router, driven by the official `ollama` Python client: chat with
and without streaming (NDJSON), generate, list, show, ps, version; tools; errors in Ollama's
shape; the ledger's row says `ollama`."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.server_harness import ServerThread


def client(url: str) -> ollama.Client:
    return ollama.Client(host=url)


def test_chat_streamed_and_not(served: tuple[Router, str]) -> None:
    router, url = served
    pieces = list(
        client(url).chat(model="auto", messages=[{"role": "user", "content": "Hi"}], stream=True)
    )
    assert "".join(p.message.content or "" for p in pieces) == "Hello from the router."
    assert pieces[-1].done and pieces[-1].done_reason == "stop" and pieces[-1].eval_count == 4
    assert not any(p.done for p in pieces[:-1])
    whole = client(url).chat(
        model="local:latest",  # Ollama's tag is taken off
        messages=[{"role": "user", "content": "Hello"}],
        options={"temperature": 0.2, "num_predict": 64, "top_k": 20},
    )
    assert whole.message.content == "Hello from the router." and whole.done
    rows = router.ledger.entries()
    assert [r.api for r in rows] == ["ollama", "ollama"]
    assert "dropped options.top_k" in rows[1].reason


def test_generate_and_a_load_call(served: tuple[Router, str]) -> None:
    router, url = served
    done = client(url).generate(model="auto", prompt="Say hi", system="Be brief.")
    assert done.response == "Hello from the router." and done.done
    streamed = list(client(url).generate(model="auto", prompt="Say hi again", stream=True))
    assert "".join(p.response for p in streamed) == "Hello from the router."
    loaded = client(url).generate(model="auto", prompt="")  # how clients load a model
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert len(router.ledger.entries()) == 2  # loading answers nothing


def test_tool_calls(served: tuple[Router, str]) -> None:
    _, url = served
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = client(url).chat(model="cloud", messages=ask, tools=tools)
    (call,) = first.message.tool_calls or []
    assert call.function.name == "weather" and call.function.arguments == {"city": "Paris"}
    second = client(url).chat(
        model="cloud",
        messages=[
            *ask,
            first.message,
            {"role": "tool", "content": '{"sky": "clear"}', "tool_name": "weather"},
        ],
        tools=tools,
    )
    assert second.message.content == "It is clear in Paris."


def test_the_catalogue(served: tuple[Router, str]) -> None:
    _, url = served
    names = {m.model for m in client(url).list().models}
    assert {"auto", "local", "cloud", "smollm2", "cloud-mini"} <= names
    assert {"claude-*", "gpt-5*"} <= names  # the aliases, as /v1/models lists them
    assert client(url).show("claude-opus-5").details.family == "router"  # an alias's model
    shown = client(url).show("cloud-mini")
    assert "tools" in (shown.capabilities or [])
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "router"
    assert client(url).ps().models == []  # no local worker runs in these doubles
    assert httpx.get(url + "/api/version").json()["version"]


def test_errors_come_in_ollamas_shape(served: tuple[Router, str]) -> None:
    router, url = served
    with pytest.raises(ollama.ResponseError) as missing:
        client(url).chat(model="llama9", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404 and "llama9" in missing.value.error
    r = httpx.post(url + "/api/chat", json={"model": "auto", "messages": "hi"})
    assert r.status_code == 400 and set(r.json()) == {"error"} and "messages" in r.json()["error"]
    r = httpx.post(url + "/api/show", json={"model": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.get(url + "/api/nothing")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert router.ledger.entries() == []


def test_line_separators_in_an_answer_keep_each_line_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """U+2028, U+2029 and NEL end a line for httpx's iter_lines(), which the client reads
    NDJSON with: inside JSON strings they go escaped, and the answer arrives as it was."""
    said = "one\u2028two\u2029three\x85four"
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, None)
    local = FunctionBackend("smollm2", lambda r, p: said)
    with (
        Router(config, backends={"smollm2": local}) as router,
        ServerThread(create_app(router)) as server,
    ):
        ask = [{"role": "user", "content": "Hi"}]
        pieces = list(client(server.url).chat(model="local", messages=ask, stream=True))
        generated = list(client(server.url).generate(model="local", prompt="Hi", stream=True))
    assert "".join(p.message.content or "" for p in pieces) == said
    assert "".join(p.response for p in generated) == said


def test_curl_without_a_json_content_type_is_answered_as_ollama_does(
    served: tuple[Router, str],
) -> None:
    """Ollama's docs: `curl http://localhost:11434/api/chat -d '{...}'` (curl sends a form's
    Content-Type). A program's request is read; a web page's never (it carries Origin)."""
    _, url = served
    body = '{"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "stream": false}'
    form = {"content-type": "application/x-www-form-urlencoded"}
    done = httpx.post(url + "/api/chat", content=body, headers=form, timeout=30)
    assert done.status_code == 200 and done.json()["message"]["content"] == "Hello from the router."
    page = {**form, "origin": f"{url}", "sec-fetch-site": "same-origin"}
    refused = httpx.post(url + "/api/chat", content=body, headers=page, timeout=30)
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    # The OpenAI API keeps asking for it: its clients all send it.
    chat = httpx.post(url + "/v1/chat/completions", content=body, headers=form, timeout=30)
    assert chat.status_code == 415
