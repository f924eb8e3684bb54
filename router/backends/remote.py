"""Local models served by an OpenAI-compatible server the team runs: Ollama, llama.cpp's
llama-server, vLLM, LM Studio, `python -m llama_cpp.server`, on this machine or another.

One `RemoteBackend` per configured model; its endpoints form a `Pool` (router/backends/pool.py).
A request that fails on one endpoint before any answer reached the caller (it cannot be
reached, times out, answers 5xx) goes to another; when every endpoint failed the engine tries
the next model. A 4xx (an unknown `remote_model`, a request the server refuses) is not the
endpoint's fault: it is reported, nothing is ejected. Plain httpx: no SDK to import.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from router.backends import deadline
from router.backends import hangup as hangups
from router.backends.pool import Endpoint, Pool
from router.backends.transcript import for_local
from router.config import LocalModel
from router.errors import BackendError
from router.types import SAMPLING_PARAMS, ChatRequest

PROBE_SECONDS = 3.0
T = TypeVar("T")
CONNECT_SECONDS = 5.0


class _Transient(Exception):
    """The endpoint failed: try another; eject it `at_once` (it cannot be reached), or after
    the pool's `eject_after` such failures in a row (an error answer)."""

    def __init__(self, message: str, *, at_once: bool = False) -> None:
        super().__init__(message)
        self.at_once = at_once


# A 5xx whose message is a validation error is the request's fault (llama_cpp.server answers
# 500 "Input should be 'text' or 'json_object'" to a json_schema response_format): the endpoint
# is fine and keeps its place; the request goes to the next model.
_REQUEST_FAULT = re.compile(
    r"validation error|input should be|field required|extra inputs are not permitted|"
    r"unprocessable|not supported|unsupported",
    re.I,
)


class _HungUp(Exception):
    """The client hung up, and the connection to the server was shut for it."""


class RemoteBackend:
    def __init__(self, name: str, model: LocalModel) -> None:
        assert model.remote and model.remote_model is not None
        self.name = name
        self._model = model
        self._client = httpx.Client(headers=self._headers(), follow_redirects=True)
        # For answers a hang-up must be able to stop: a connection of their own (a pooled one
        # is not known to the request), which the hang-up shuts (see _post).
        self._own = httpx.Client(
            headers=self._headers(),
            follow_redirects=True,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.pool = Pool(
            model.endpoints(),
            eject_seconds=model.eject_seconds,
            eject_after=model.eject_after,
            probe=self._probe,
        )

    # ------------------------------------------------------------------ Backend seam

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        body = self._body(request, params, stream=False)

        def attempt(endpoint: Endpoint) -> Any:
            response = self._post(endpoint, body)
            try:
                return response.json()
            except ValueError:
                raise _Transient("the answer is not JSON") from None
            finally:
                response.close()

        try:
            endpoint, raw = self._on_some_endpoint(attempt, conversation(request))
        except _HungUp:
            hangup = hangups.current()
            if hangup is not None:
                hangup.cut_short(estimated=True)  # the server stopped; it said nothing
            return {**self._completion({"choices": [{"message": {"content": ""}}]}), "usage": None}
        self.pool.succeeded(endpoint)
        return self._completion(raw)

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        body = self._body(request, params, stream=True)
        hangup = hangups.current()

        def attempt(endpoint: Endpoint) -> tuple[httpx.Response, Iterator[dict[str, Any]], Any]:
            armed: list[Callable[[], None]] = []  # a hang-up shuts the connection until the
            try:  # first chunk (a queued or long prompt); after it, the relay closes it
                response = self._post(endpoint, body, stream=True, armed=armed)
                events = self._events(response)
                try:  # a failure before any answer reached the caller: another endpoint
                    return response, events, next(events, None)
                except BaseException:
                    response.close()
                    if hangup is not None and hangup.fired:
                        raise _HungUp from None
                    raise
            finally:
                for disarm in armed:
                    disarm()

        try:
            endpoint, (response, events, first) = self._on_some_endpoint(
                attempt, conversation(request)
            )
        except _HungUp:  # nothing generated for a client that left: an empty answer
            if hangup is not None:
                hangup.cut_short(estimated=True)
            return
        yield from self._relay(endpoint, response, first, events)

    def _on_some_endpoint(
        self, attempt: Callable[[Endpoint], T], affinity: str | None = None
    ) -> tuple[Endpoint, T]:
        """`attempt` on the pool's endpoints in turn until one succeeds (its request is still
        counted on it); an endpoint that fails is ejected, and every failure is reported."""
        tried: set[str] = set()
        errors: list[str] = []
        while (endpoint := self.pool.acquire(tried, affinity)) is not None:
            tried.add(endpoint.url)
            try:
                return endpoint, attempt(endpoint)
            except _Transient as exc:
                self.pool.failed(endpoint, str(exc), at_once=exc.at_once)
                errors.append(f"{endpoint.url}: {exc}")
            except BaseException:
                self.pool.released(endpoint)
                raise
        raise self._all_failed(errors)

    # ------------------------------------------------------------------ state

    def unusable(self) -> str | None:
        if self.pool.seconds_until_usable() == 0.0:
            return None
        return f"every endpoint of {self.name} is ejected after failing: " + "; ".join(
            f"{e['url']} ({e['last_error']})" for e in self.pool.health()
        )

    def unusable_public(self) -> str | None:
        """`unusable` in words a client may read (no endpoint URL, no server's message)."""
        if self.pool.seconds_until_usable() == 0.0:
            return None
        return f"every server of {self.name} is down after failing"

    def seconds_until_usable(self) -> float:
        return self.pool.seconds_until_usable() or 0.0

    def health(self) -> dict[str, Any]:
        endpoints = self.pool.health()
        up = sum(e["state"] != "ejected" for e in endpoints)
        return {
            "state": "ready" if up else "unusable",
            "remote_model": self._model.remote_model,
            "endpoints": endpoints,
            "in_flight": sum(e["in_flight"] for e in endpoints),
            "max_queue": None,  # each server queues its own requests
            "pid": None,
            "rss_mb": None,
            "generations": {"ok": sum(e["served"] for e in endpoints)},
        }

    def close(self) -> None:
        self._client.close()
        self._own.close()

    # ------------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        key = self._model.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, request: ChatRequest, params: dict[str, Any], *, stream: bool) -> bytes:
        body: dict[str, Any] = {
            "model": self._model.remote_model,
            # An OpenAI-compatible server takes OpenAI messages; images only when it reads them
            # (the policy sends an image only to a model with supports_vision).
            "messages": request.messages
            if request.needs_vision and self._model.supports_vision
            else for_local(request.messages, tools=self._model.supports_tools),
            **{k: v for k, v in params.items() if k in SAMPLING_PARAMS},
        }
        if not self._model.supports_tools:
            for key in ("tools", "tool_choice", "parallel_tool_calls"):
                body.pop(key, None)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    def _post(
        self,
        endpoint: Endpoint,
        body: bytes,
        *,
        stream: bool = False,
        armed: list[Callable[[], None]] | None = None,
    ) -> httpx.Response:
        """The server's response with status 200, or _Transient / BackendError / _HungUp.
        While it is awaited, a hang-up shuts the connection; `armed` (a stream's): it stays
        so, until the caller calls what `armed` was given."""
        wait = deadline.timeout(self._model.timeout_seconds)
        timeout = httpx.Timeout(wait, connect=min(CONNECT_SECONDS, wait))
        hangup = hangups.current()
        client = self._client if hangup is None else self._own
        forget: list[Callable[[], None]] = [] if armed is None else armed

        def trace(event: str, info: dict[str, Any]) -> None:
            """httpcore's trace hook: the new connection, to shut when the client hangs up
            (shutdown, unlike close, wakes the thread blocked reading the answer)."""
            if event == "connection.connect_tcp.complete" and hangup is not None:
                sock = info["return_value"].get_extra_info("socket")
                forget.append(hangup.on_fire(lambda: _shut(sock)))

        request = client.build_request(
            "POST",
            f"{endpoint.url}/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            extensions={"trace": trace} if hangup is not None else None,
        )
        try:
            response = client.send(request, stream=stream)
        except httpx.HTTPError as exc:
            if hangup is not None and hangup.fired:
                raise _HungUp from None
            if isinstance(exc, httpx.TimeoutException):
                raise _Transient(f"timed out after {wait:.0f} s", at_once=True) from None
            raise _Transient(f"cannot reach it ({_reason(exc)})", at_once=True) from None
        finally:
            if armed is None:
                for done in forget:
                    done()
        if response.status_code == 200:
            return response
        try:
            detail = _error_text(response.read())
        except httpx.HTTPError:
            detail = ""
        finally:
            response.close()
        status = response.status_code
        if (status >= 500 or status == 429) and not _REQUEST_FAULT.search(detail):
            raise _Transient(f"HTTP {status}{detail}")
        raise BackendError(
            f"{self.name}: {endpoint.url} refused the request: HTTP {status}{detail}"
            + (
                f" (does it serve remote_model {self._model.remote_model!r}? "
                "'router models --probe' lists what it serves)"
                if status == 404
                else ""
            ),
            public=f"{self.name}: its server refused the request (HTTP {status})",
        )

    def _probe(self, url: str) -> None:
        response = self._client.get(f"{url}/models", timeout=PROBE_SECONDS)
        response.raise_for_status()

    def _events(self, response: httpx.Response) -> Iterator[dict[str, Any]]:
        """The stream's chunks as dicts (server-sent events), _Transient on a broken stream."""
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise _Transient("the stream is not JSON") from None
                if isinstance(event, dict) and "error" in event:
                    raise _Transient(f"error in the stream: {_error_text(data.encode())}")
                if isinstance(event, dict):
                    yield event
        except httpx.TimeoutException:
            raise _Transient(
                f"went silent for {self._model.timeout_seconds:.0f} s in the answer"
            ) from None
        except httpx.HTTPError as exc:
            raise _Transient(f"the connection broke ({_reason(exc)})", at_once=True) from None

    def _relay(
        self,
        endpoint: Endpoint,
        response: httpx.Response,
        first: dict[str, Any] | None,
        events: Iterator[dict[str, Any]],
    ) -> Iterator[dict[str, Any]]:
        """Chunks in the router's shape; the endpoint's health from how the stream ended."""
        usage: dict[str, Any] | None = None
        chunk_id = f"chatcmpl-{int(time.time() * 1000)}"
        outcome = "released"  # the consumer stopped early: nothing known about the endpoint
        try:
            pending = [first] if first is not None else []
            for event in _chain(pending, events):
                chunk_id = event.get("id") or chunk_id
                usage = _usage(event.get("usage")) or usage
                choices = [_delta_choice(c) for c in event.get("choices") or []]
                if choices:
                    yield {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": event.get("created") or int(time.time()),
                        "model": self.name,
                        "choices": choices,
                    }
            outcome = "succeeded"
        except _Transient as exc:
            outcome = "failed"
            self.pool.failed(endpoint, str(exc), at_once=exc.at_once)
            raise BackendError(
                f"{self.name}: {endpoint.url}: {exc}",
                public=f"{self.name}: its server failed mid-answer",
            ) from None
        finally:
            response.close()
            if outcome == "succeeded":
                self.pool.succeeded(endpoint)
            elif outcome == "released":
                self.pool.released(endpoint)
        final: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": [],
        }
        if usage is not None:
            final["usage"] = usage
        yield final

    def _completion(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            text = f"{self.name}: the server's answer is not a chat completion"
            raise BackendError(text, public=text)
        choices = []
        for c in raw.get("choices") or []:
            message = c.get("message") or {}
            out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
            if message.get("tool_calls"):
                out["tool_calls"] = message["tool_calls"]
            choices.append(
                {
                    "index": c.get("index", 0),
                    "message": out,
                    "finish_reason": c.get("finish_reason"),
                    "logprobs": None,
                }
            )
        return {
            "id": raw.get("id") or f"chatcmpl-{int(time.time() * 1000)}",
            "object": "chat.completion",
            "created": raw.get("created") or int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": _usage(raw.get("usage"))
            or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def _all_failed(self, errors: list[str]) -> BackendError:
        wait = self.pool.seconds_until_usable()
        if not errors:
            return BackendError(
                f"{self.unusable() or self.name + ': no endpoint available'}",
                retry_after=wait,
                public=f"{self.name}: every server is down for now",
            )
        return BackendError(
            f"{self.name}: every endpoint failed: {'; '.join(errors)}",
            retryable=True,
            retry_after=wait or None,
            public=f"{self.name}: every server failed",
        )


def conversation(request: ChatRequest) -> str:
    """What stays the same across a conversation's turns: its session, else its messages up
    to the first user message (the system prompt and the opening question)."""
    if request.session:
        return f"session:{request.session}"
    opening: list[Any] = []
    for message in request.messages:
        opening.append(message)
        if message.get("role") == "user" or len(opening) >= 4:
            break
    return json.dumps(opening, sort_keys=True, default=str)


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _chain(first: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from first
    yield from rest


def _delta_choice(c: dict[str, Any]) -> dict[str, Any]:
    delta = c.get("delta") or {}
    return {
        "index": c.get("index", 0),
        "delta": {
            k: v
            for k, v in delta.items()
            if k in ("role", "content", "tool_calls") and v is not None
        },
        "finish_reason": c.get("finish_reason"),
    }


def _usage(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    if not prompt and not completion:
        return None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _reason(exc: BaseException) -> str:
    root: BaseException = exc
    while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    text = getattr(root, "strerror", None) or str(root) or type(root).__name__
    return str(text).splitlines()[0][:160]


def _error_text(body: bytes) -> str:
    """': <the server's error message>' from an OpenAI-style error body, or ''."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return f": {text.splitlines()[0][:200]}" if text else ""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else error or data.get("detail")
    return f": {str(message)[:200]}" if message else ""
