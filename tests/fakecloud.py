"""A small OpenAI-compatible chat server on 127.0.0.1 that stands in for a cloud provider.

It speaks the real wire protocol (JSON and SSE streaming with `data: [DONE]`), so LiteLLM and
the official `openai` client talk to it exactly as to the real thing, and it injects faults on
demand: queue `Fault`s and the next requests get them in order (429 with Retry-After, 5xx, a
delay longer than the client's timeout), then normal answers resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    status: int = 500  # 200: a normal answer, after `delay` (a slow provider)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (for timeouts)
    message: str = "injected fault"
    chunk_delay: float = 0.0  # status 200, streamed: seconds between chunks (a slow model)
    words: int = 0  # status 200: an answer of this many words ("w0 w1 ..."), not answer_for's


def answer_for(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content") or ""
    return f"cloud answer to: {content[:60]}"


def longer_wins(a: str, b: str) -> str:
    """The stand-in judge's rule: the clearly longer answer is better (within 20%: a tie)."""
    if abs(len(a) - len(b)) <= 0.2 * max(len(a), len(b)):
        return "tie"
    return "A" if len(a) > len(b) else "B"


def judged(messages: list[dict[str, Any]], rule: Callable[[str, str], str]) -> str | None:
    """The JSON verdict for a judging prompt (router.engine.shadow's), else None."""
    text = str(messages[-1].get("content") or "") if messages else ""
    match = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich answer", text, re.S)
    if match is None:
        return None
    return json.dumps({"better": rule(match.group(1), match.group(2))})


def fake_vector(text: str, size: int = 8) -> list[float]:
    """A vector that depends on the text only: the same text, the same vector."""
    digest = hashlib.sha256(text.encode()).digest() * (size // 32 + 1)
    return [round(b / 255 - 0.5, 4) for b in digest[:size]]


# The tools a stand-in agent turn calls (the first one offered), with their input: read-only
# ones, which Claude Code runs without asking (`caching(tools=...)` gives Read its file).
AGENT_TOOLS: dict[str, dict[str, Any]] = {"Glob": {"pattern": "*.txt"}, "LS": {"path": "."}}


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out hang up mid-answer; that is the point of the test


class FakeCloud:
    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hangups = 0  # streams whose client went away before the end
        self.connections = 0  # TCP connections accepted (a kept-alive one counts once)
        # How it judges (requests with response_format named "verdict"): "A", "B" or "tie".
        self.judge: Callable[[str, str], str] = longer_wins
        # Anthropic's API (native Messages): `prompt_cache` reports usage as a provider with
        # prompt caching does (each turn reads the prefix the turn before wrote, writes the
        # rest; 10 fresh tokens); `agent_steps` tool calls after each user message before a
        # text answer, on requests that carry tools (the first of AGENT_TOOLS they offer, as
        # Claude Code's loop runs).
        self.prompt_cache = False
        self.agent_steps = 0
        self.agent_tools: dict[str, dict[str, Any]] = {}
        self._cached: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeCloud:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @contextmanager
    def caching(
        self, agent_steps: int = 0, tools: dict[str, dict[str, Any]] | None = None
    ) -> Iterator[None]:
        """Within: Anthropic answers with prompt caching (empty at the start) and
        `agent_steps` tool calls (`tools`: more tools it may call, first, with their input);
        as before after it (the stand-in is shared by tests)."""
        with self._lock:
            self._cached.clear()
            self.prompt_cache, self.agent_steps = True, agent_steps
            self.agent_tools = dict(tools or {})
        try:
            yield
        finally:
            with self._lock:
                self._cached.clear()
                self.prompt_cache, self.agent_steps, self.agent_tools = False, 0, {}

    def _openai_cached(self, messages: list[dict[str, Any]], total: int) -> int:
        """OpenAI's prompt caching: the prompt tokens the last request with the same first
        message had (in 128-token steps past the first 1,024, as OpenAI caches)."""
        key = json.dumps(messages[:1])
        with self._lock:
            before = self._cached.get(key, 0)
            self._cached[key] = total
        cached = min(before, total)
        return 0 if cached < 1024 else 1024 + (cached - 1024) // 128 * 128

    def _anthropic_usage(self, body: dict[str, Any], output: int) -> dict[str, Any]:
        """Anthropic's usage for `body`: 11 input tokens; with `prompt_cache`, the whole
        prompt's tokens, of which what the last request with the same system prompt and tools
        wrote is read from the cache, the rest written to it but 10 fresh ones."""
        if not self.prompt_cache:
            return {"input_tokens": 11, "output_tokens": output}
        total = count_tokens(json.dumps([body.get("system"), body.get("tools"), body["messages"]]))
        first = json.dumps([body.get("system"), body.get("tools")])  # the cached prefix
        with self._lock:
            read = min(self._cached.get(first, 0), max(0, total - 10))
            self._cached[first] = max(0, total - 10)
        return {
            "input_tokens": min(10, total),
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": max(0, total - 10 - read),
            "output_tokens": output,
        }

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with cloud._lock:
                    cloud.connections += 1

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.endswith("/models"):  # what a pool probes, and `models --probe`
                    data = [{"id": m, "object": "model"} for m in ("gpt-4o-mini", "gpt-4o")]
                    self._json(200, {"object": "list", "data": data}, {})
                else:
                    self._json(404, {"error": {"message": "not found"}}, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with cloud._lock:
                    cloud.requests.append(body)
                    cloud.headers.append({k.lower(): v for k, v in self.headers.items()})
                path = self.path.split("?")[0]
                if not path.endswith("/chat/completions") and self._failed():
                    return
                if path.endswith("/messages"):  # Anthropic's API, for native passthrough
                    self._anthropic(body)
                    return
                if path.endswith("/responses"):  # OpenAI's Responses API
                    self._responses(body)
                    return
                if self.path.endswith("/embeddings"):
                    texts = body.get("input") or []
                    texts = [texts] if isinstance(texts, str) else texts
                    size = body.get("dimensions") or 8  # as text-embedding-3 shortens its own
                    data = [
                        {"object": "embedding", "index": i, "embedding": fake_vector(t, size)}
                        for i, t in enumerate(texts)
                    ]
                    tokens = sum(count_tokens(t) for t in texts)
                    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
                    reply = {
                        "object": "list",
                        "data": data,
                        "model": body.get("model"),
                        "usage": usage,
                    }
                    self._json(200, reply, {})
                    return
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}}, {})
                    return
                fault = cloud._next_fault()
                chunk_delay, words = 0.0, 0
                if fault is not None and fault.status == 200:
                    time.sleep(fault.delay)
                    chunk_delay, words = fault.chunk_delay, fault.words
                    fault = None
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    self._json(
                        fault.status,
                        {
                            "error": {
                                "message": fault.message,
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        },
                        fault.headers,
                    )
                    return
                messages = body.get("messages", [])
                schema = (body.get("response_format") or {}).get("json_schema") or {}
                verdict = judged(messages, cloud.judge) if schema.get("name") == "verdict" else None
                text = verdict if verdict is not None else answer_for(messages)
                if words:
                    text = " ".join(f"w{i}" for i in range(words))
                prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in messages)
                usage: dict[str, Any] = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": count_tokens(text),
                    "total_tokens": prompt_tokens + count_tokens(text),
                }
                if cloud.prompt_cache:  # OpenAI's: the cached share of the prompt tokens
                    usage["prompt_tokens_details"] = {
                        "cached_tokens": cloud._openai_cached(messages, prompt_tokens)
                    }
                base = {
                    "id": "chatcmpl-fake",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                }
                if not body.get("stream"):
                    self._json(
                        200,
                        {
                            **base,
                            "object": "chat.completion",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": usage,
                        },
                        {},
                    )
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                words = text.split(" ")
                pieces = [{"role": "assistant", "content": ""}] + [
                    {"content": w if i == 0 else " " + w} for i, w in enumerate(words)
                ]
                for delta in pieces:
                    time.sleep(chunk_delay)
                    try:
                        self._event(
                            {
                                **base,
                                "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                            }
                        )
                    except OSError:  # the client closed the stream: stop generating
                        with cloud._lock:
                            cloud.hangups += 1
                        self.close_connection = True
                        return
                self._event(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    }
                )
                if (body.get("stream_options") or {}).get("include_usage"):
                    self._event(
                        {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    )
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _failed(self) -> bool:
                """A queued fault for a request other than chat's (embeddings, Messages,
                Responses): answered as an OpenAI error; False when none is queued (or it is
                a slow normal answer, which has waited its delay)."""
                fault = cloud._next_fault()
                if fault is None:
                    return False
                time.sleep(fault.delay)
                if fault.status == 200:
                    return False
                error = {"message": fault.message, "type": "server_error", "code": None}
                self._json(fault.status, {"error": error}, fault.headers)
                return True

            def _event(self, payload: dict[str, Any], name: str | None = None) -> None:
                head = f"event: {name}\n" if name else ""
                self.wfile.write(f"{head}data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def _stream_head(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

            def _anthropic(self, body: dict[str, Any]) -> None:
                """A Messages answer: 'native answer to: <the last user text>', or a tool call
                (`agent_steps`)."""
                messages = body.get("messages", [])
                last = next(m for m in reversed(messages) if m["role"] == "user")
                content = last["content"]
                asked = content if isinstance(content, str) else content[-1].get("text", "")
                text = f"native answer to: {asked}"
                block: dict[str, Any] = {"type": "text", "text": text}
                offered = [t.get("name") for t in body.get("tools") or []]
                calls = {**AGENT_TOOLS, **cloud.agent_tools}
                tool = next((t for t in calls if t in offered), None)
                # Tool results since the user's last words: this turn's steps so far.
                results = 0
                for m in messages:
                    blocks = m["content"] if isinstance(m["content"], list) else []
                    if m["role"] == "user" and (
                        isinstance(m["content"], str)
                        or any(isinstance(b, dict) and b.get("type") == "text" for b in blocks)
                    ):
                        results = 0
                    results += sum(
                        1 for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"
                    )
                if tool is not None and results < cloud.agent_steps:
                    block = {
                        "type": "tool_use", "id": f"toolu_fake{results}", "name": tool,
                        "input": calls[tool],
                    }  # fmt: skip
                output = count_tokens(text) if block["type"] == "text" else 12
                usage = cloud._anthropic_usage(body, output)
                stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
                message = {
                    "id": "msg_fake", "type": "message", "role": "assistant",
                    "model": body.get("model"), "stop_reason": stop,
                    "stop_sequence": None, "usage": usage, "content": [block],
                }  # fmt: skip
                if not body.get("stream"):
                    self._json(200, message, {})
                    return
                self._stream_head()
                start = {**message, "content": [], "stop_reason": None}
                start["usage"] = {**usage, "output_tokens": 0}
                self._event({"type": "message_start", "message": start}, "message_start")
                empty = {**block, "input": {}} if stop == "tool_use" else {**block, "text": ""}
                self._event(
                    {"type": "content_block_start", "index": 0, "content_block": empty},
                    "content_block_start",
                )
                if stop == "tool_use":
                    parts = [
                        {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                    ]
                else:
                    parts = [
                        {"type": "text_delta", "text": word if i == 0 else " " + word}
                        for i, word in enumerate(text.split(" "))
                    ]
                for delta in parts:
                    self._event(
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                        "content_block_delta",
                    )
                self._event({"type": "content_block_stop", "index": 0}, "content_block_stop")
                end = {"stop_reason": stop, "stop_sequence": None}
                self._event(
                    {
                        "type": "message_delta",
                        "delta": end,
                        "usage": {"output_tokens": usage["output_tokens"]},
                    },
                    "message_delta",
                )
                self._event({"type": "message_stop"}, "message_stop")

            def _responses(self, body: dict[str, Any]) -> None:
                """A Responses answer: 'native answer to: <the input>'."""
                given = body.get("input")
                asked = given if isinstance(given, str) else json.dumps(given)[-40:]
                text = f"native answer to: {asked}"
                item = {
                    "type": "message", "id": "msg_fake", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }  # fmt: skip
                usage = {
                    "input_tokens": 9, "output_tokens": count_tokens(text),
                    "total_tokens": 9 + count_tokens(text),
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                }  # fmt: skip
                response = {
                    "id": "resp_fake", "object": "response", "created_at": int(time.time()),
                    "status": "completed", "model": body.get("model"), "output": [item],
                    "usage": usage, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "error": None, "incomplete_details": None,
                }  # fmt: skip
                if not body.get("stream"):
                    self._json(200, response, {})
                    return
                self._stream_head()
                seq = iter(range(1, 1000))
                head = {**response, "status": "in_progress", "output": [], "usage": None}
                self._event(
                    {"type": "response.created", "sequence_number": next(seq), "response": head},
                    "response.created",
                )
                adding = {**item, "status": "in_progress", "content": []}
                self._event(
                    {
                        "type": "response.output_item.added",
                        "sequence_number": next(seq),
                        "output_index": 0,
                        "item": adding,
                    },
                    "response.output_item.added",
                )
                for i, word in enumerate(text.split(" ")):
                    piece = word if i == 0 else " " + word
                    self._event(
                        {
                            "type": "response.output_text.delta",
                            "sequence_number": next(seq),
                            "item_id": "msg_fake",
                            "output_index": 0,
                            "content_index": 0,
                            "delta": piece,
                        },
                        "response.output_text.delta",
                    )
                self._event(
                    {
                        "type": "response.output_item.done",
                        "sequence_number": next(seq),
                        "output_index": 0,
                        "item": item,
                    },
                    "response.output_item.done",
                )
                self._event(
                    {
                        "type": "response.completed",
                        "sequence_number": next(seq),
                        "response": response,
                    },
                    "response.completed",
                )

        return Handler
