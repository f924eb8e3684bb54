"""Cloud tier: provider models called through LiteLLM.

The only module that imports litellm, and only on the first cloud call (it takes seconds and
hundreds of MB). LiteLLM's own retries are switched off: retries and fallback belong to the
router (backends/retry.py, engine.py) so they are the same for every backend.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

from router.backends import deadline, native
from router.backends import hangup as hangups
from router.backends.hangup import Hangup
from router.chunks import collect
from router.config import CloudModel
from router.errors import CloudError
from router.types import SAMPLING_PARAMS, ChatRequest
from router.units import Tokens

log = logging.getLogger("router.cloud")

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_import_lock = threading.Lock()
_imported = threading.Event()
_started = False
_litellm: Any = None
_import_error: BaseException | None = None
_warm_first_call = False  # warm_litellm: make LiteLLM's first-call work part of the import
# 401/403: the key is wrong or lacks access; 404: no such model or deployment. Repeating the
# call, or answering with a weaker model instead, would hide a setting to fix.
CONFIGURATION_STATUS = frozenset({401, 403, 404})


def _import_litellm() -> None:
    global _litellm, _import_error
    try:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        # Its bundled list of Anthropic beta headers, not a fetch from GitHub at the first
        # Anthropic call (seconds of DNS and retries offline, a request to a third party).
        os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        # Its success logging feeds callbacks, which the router (with its own ledger) never
        # registers, at the price of a thread-pool task per streamed chunk and an event loop
        # per stream, in the GIL the event loop needs (about 2 ms of time to first token).
        litellm.disable_streaming_logging = True
        # Retries are the router's (backends/retry.py). LiteLLM's OpenAI embedding reads
        # `max_retries or DEFAULT_MAX_RETRIES`, so max_retries=0 still gave 2 retries (9 calls
        # where the router meant 3).
        setattr(litellm, "DEFAULT_MAX_RETRIES", 0)  # noqa: B010 (not in its exported names)
        if _warm_first_call:
            _first_call(litellm)
        _litellm = litellm
    except BaseException as exc:  # re-raised in the caller's thread
        _import_error = exc
    finally:
        _imported.set()


_WARM_CHUNKS = (
    b'data: {"id":"w","object":"chat.completion.chunk","created":0,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"ok"},"finish_reason":null}]}'
    b'\n\ndata: {"id":"w","object":"chat.completion.chunk","created":0,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"w","object":"chat.completion.chunk","created":0,"model":"gpt-4o-mini",'
    b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,'
    b'"prompt_tokens_details":{"cached_tokens":0}}}\n\ndata: [DONE]\n\n'
)
_WARM_ANSWER = (
    b'{"id":"w","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{'
    b'"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


def _first_call(litellm: Any) -> None:
    """What LiteLLM and the OpenAI SDK do on their first call only, done ahead: LiteLLM's
    request and stream machinery, the tokenizer a stream's usage may be counted with
    (tiktoken's), the SDK's lazily imported resources, and the pydantic schemas of its answer
    types, built on the first answer parsed (tens of ms, 150 on a slower Intel Xeon). One
    streamed and one whole call through LiteLLM's real OpenAI path, answered by an httpx
    transport in this process: no network."""
    try:
        import httpx
        import openai

        def answer(request: httpx.Request) -> httpx.Response:
            if json.loads(request.content or b"{}").get("stream"):
                headers = {"content-type": "text/event-stream"}
                return httpx.Response(200, content=_WARM_CHUNKS, headers=headers)
            return httpx.Response(200, content=_WARM_ANSWER)

        http = httpx.Client(transport=httpx.MockTransport(answer))
        client = openai.OpenAI(api_key="warm", base_url="http://warm.invalid/v1", http_client=http)
        messages = [{"role": "user", "content": "warm"}]
        for _ in litellm.completion(
            model="openai/gpt-4o-mini", messages=messages, client=client, stream=True,
            stream_options={"include_usage": True},
        ):  # fmt: skip
            pass
        litellm.completion(model="openai/gpt-4o-mini", messages=messages, client=client)
        _ = client.embeddings
        http.close()
        # The HTTP client every OpenAI-compatible model's calls go through (LiteLLM's
        # `client_session`: one connection pool, its TLS context built now), else LiteLLM
        # builds one, TLS context and certificates included, on each model's first call.
        if litellm.client_session is None:
            from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

            litellm.client_session = httpx.Client(
                verify=get_ssl_configuration(),
                follow_redirects=True,
                # As many connections as the server takes requests ([server] max_connections'
                # default): LiteLLM's own gave each model and timeout a pool of 100.
                limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128),
            )
    except Exception:  # warming is an optimisation: a failure here costs the first call time
        log.debug("warming LiteLLM's first call failed", exc_info=True)


def warm_litellm(first_call: bool = True) -> None:
    """Start importing litellm in the background, if it has not started, and with
    `first_call` warm what its first call does: `router serve` does so at start-up, so that
    no request pays the import (seconds) on its clock."""
    global _started, _warm_first_call
    with _import_lock:
        if not _started:
            _started, _warm_first_call = True, first_call
            threading.Thread(target=_import_litellm, name="router-litellm", daemon=True).start()


def litellm_state() -> str:
    """Where LiteLLM's import is, as /health says: not loaded, warming, ready or failed."""
    if not _started:
        return "not loaded"
    if not _imported.is_set():
        return "warming"
    return "failed" if _import_error is not None else "ready"


def litellm_module() -> Any:
    """Import litellm once, offline-safe (its cost map from the package, no telemetry).

    The import (seconds) runs in a thread of its own: Ctrl-C while the caller waits stops the
    wait, never the import half-way, which would leave a broken module in sys.modules for
    every later call (the interactive chat asks again after a Ctrl-C)."""
    warm_litellm(first_call=False)
    while not _imported.wait(0.1):  # a short wait: the main thread sees Ctrl-C at once
        pass
    if _import_error is not None:
        raise _import_error
    return _litellm


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from Retry-After (delta seconds or HTTP date) or retry-after-ms, if present."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return float(lowered["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own backoff
    return max(0.0, parsed.timestamp() - time.time())


def _base_llm_exception() -> type[Exception]:
    from litellm.llms.base_llm.chat.transformation import BaseLLMException

    return BaseLLMException


def _headers_of(exc: Exception) -> Mapping[str, str] | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    if headers and hasattr(headers, "items"):
        return dict(headers)
    response = getattr(exc, "response", None)
    found = getattr(response, "headers", None)
    return dict(found) if found else None


def to_cloud_error(name: str, exc: Exception, api_base: str | None = None) -> CloudError:
    """A LiteLLM failure as a CloudError: the provider's status and message, which say what
    went wrong upstream. Anything else (a bug inside LiteLLM or here) is logged, and the
    error only says where to look: internal exception text never reaches a client."""
    import httpx
    import openai  # LiteLLM's exceptions derive from the OpenAI SDK's (a LiteLLM dependency)

    litellm = litellm_module()
    unreachable = _unreachable(exc)
    if unreachable is not None:  # LiteLLM reports a refused connection as HTTP 500
        return CloudError(
            f"{name}: cannot reach {api_base or 'the provider'} ({unreachable})",
            retryable=True,
            public=f"{name}: the provider cannot be reached",
        )
    # What a provider's answer or a timeout raises: LiteLLM's OpenAI-style exceptions, and
    # the BaseLLMException its Anthropic passthrough raises (router.backends.native).
    known = (openai.OpenAIError, litellm.exceptions.OpenAIError, _base_llm_exception())
    if not isinstance(exc, known) and not isinstance(exc, httpx.TimeoutException):
        log.error("%s: unexpected error in the cloud call", name, exc_info=exc)
        return CloudError(
            f"{name}: the cloud call failed (the server log has the details)",
            public=f"{name}: the cloud call failed",
        )
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = str(getattr(exc, "message", exc)).splitlines()[0][:300]
    timed_out = isinstance(exc, (litellm.Timeout, httpx.TimeoutException))
    transient = timed_out or isinstance(exc, litellm.APIConnectionError)
    retryable = transient or (status in _RETRYABLE_STATUS)
    label = "timed out" if timed_out else (f"HTTP {status}" if status else type(exc).__name__)
    # The provider's message (which may quote the key, the organisation, a host) and
    # LiteLLM's class names are the operator's: a client reads the status alone.
    shown = "timed out" if timed_out else f"HTTP {status or 'error'}"
    return CloudError(
        f"{name}: {label}: {message}",
        status=status,
        retryable=retryable,
        retry_after=parse_retry_after(_headers_of(exc)),
        configuration=status in CONFIGURATION_STATUS,
        public=f"{name}: the provider answered {shown}" if status else f"{name}: {shown}",
    )


def _unreachable(exc: BaseException) -> str | None:
    """Why the provider could not be reached (refused, unknown host), from the exception's
    chain; None when it was reached (or the call timed out, which reads as a timeout)."""
    import httpx

    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, httpx.ConnectError):
            root: BaseException = found
            while root.__cause__ or root.__context__:
                root = root.__cause__ or root.__context__  # type: ignore[assignment]
            text = getattr(root, "strerror", None) or str(root)
            return str(text).splitlines()[0][:200] or "connection failed"
        found = found.__cause__ or found.__context__
    return None


def _clean_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": message.get("role") or "assistant",
        "content": message.get("content"),
    }
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def _clean_usage(usage: Any) -> dict[str, Any] | None:
    """A provider's usage as chat's: the totals and its prompt cache's reads and writes."""
    if not usage:
        return None
    if hasattr(usage, "model_dump"):
        usage = usage.model_dump()
    return Tokens.of(dict(usage)).usage()


class CloudBackend:
    """One LiteLLM model behind the Backend seam."""

    def __init__(self, name: str, model: CloudModel) -> None:
        self.name = name
        self._model = model

    def _call(self, request: ChatRequest, params: dict[str, Any], **extra: Any) -> Any:
        litellm = litellm_module()
        kwargs = {k: v for k, v in params.items() if k in SAMPLING_PARAMS}
        return litellm.completion(
            model=self._model.litellm_model,
            messages=request.messages,
            api_key=self._model.api_key(),
            api_base=self._model.resolved_api_base(),
            timeout=deadline.timeout(self._model.timeout_seconds),
            max_retries=0,
            num_retries=0,
            drop_params=True,  # a provider without `seed` etc. still answers
            **kwargs,
            **extra,
        )

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        if request.native is not None and self._model.speaks(request.api):
            try:
                return native.complete(
                    litellm_module(), request, params, self._model, self.name, self._timeout()
                )
            except Exception as exc:
                raise to_cloud_error(self.name, exc, self._model.resolved_api_base()) from exc
        hangup = hangups.current()
        if hangup is not None:
            return self._complete_streamed(request, params, hangup)
        try:
            raw = self._call(request, params).model_dump()
        except Exception as exc:
            raise to_cloud_error(self.name, exc, self._model.resolved_api_base()) from exc
        return {
            "id": raw.get("id"),
            "object": "chat.completion",
            "created": raw.get("created") or int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": c.get("index", 0),
                    "message": _clean_message(c.get("message") or {}),
                    "finish_reason": c.get("finish_reason"),
                    "logprobs": None,
                }
                for c in raw.get("choices", [])
            ],
            "usage": _clean_usage(raw.get("usage"))
            or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def embed(
        self, texts: list[str], dimensions: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """LiteLLM's embedding() for an embedding model (`embeddings = true`); `dimensions`
        goes to the provider, which shortens the vectors or refuses (as it refuses a text
        longer than its model reads: `truncate` is the local models')."""
        litellm = litellm_module()
        sized = {} if dimensions is None else {"dimensions": dimensions}
        try:
            done = litellm.embedding(
                model=self._model.litellm_model,
                input=texts,
                api_key=self._model.api_key(),
                api_base=self._model.resolved_api_base(),
                timeout=deadline.timeout(self._model.timeout_seconds),
                max_retries=0,  # retries are the router's (backends/retry.py), not on top
                num_retries=0,
                **sized,
            )
        except Exception as exc:
            raise to_cloud_error(self.name, exc, self._model.resolved_api_base()) from exc
        data = sorted(done.data, key=lambda d: d["index"])
        usage = getattr(done, "usage", None)
        return [list(d["embedding"]) for d in data], int(getattr(usage, "prompt_tokens", 0) or 0)

    def _complete_streamed(
        self, request: ChatRequest, params: dict[str, Any], hangup: Hangup
    ) -> dict[str, Any]:
        """A non-streamed answer for a client that may hang up, asked for as a stream: a
        blocking call cannot be stopped, and a provider stops generating (and charging) when
        its stream is closed, which happens at the next token after the hang-up."""
        chunks = self.stream(request, params)
        taken: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                taken.append(chunk)
                if hangup.fired:
                    break
        finally:
            chunks.close()  # closes the connection when the answer was cut
        done = collect(taken, self.name)
        if hangup.fired and not (taken and "usage" in taken[-1]):
            hangup.cut_short(estimated=True)  # what arrived, counted by LiteLLM's tokenizer
            done["usage"] = self._count(request, done["choices"][0]["message"]["content"] or "")
        return done

    def _timeout(self) -> float:
        return deadline.timeout(self._model.timeout_seconds)

    def stream(
        self, request: ChatRequest, params: dict[str, Any]
    ) -> Generator[dict[str, Any], None, None]:
        if request.native is not None and self._model.speaks(request.api):
            yield from native.stream(
                litellm_module(),
                request,
                params,
                self._model,
                self.name,
                self._timeout(),
                lambda exc: to_cloud_error(self.name, exc, self._model.resolved_api_base()),
            )
            return
        response = None
        try:
            response = self._call(
                request, params, stream=True, stream_options={"include_usage": True}
            )
            chunk_id, usage, text = None, None, list[str]()
            for chunk in response:
                raw = chunk.model_dump()
                chunk_id = chunk_id or raw.get("id")
                usage = _clean_usage(raw.get("usage")) or usage
                choices = [
                    {
                        "index": c.get("index", 0),
                        "delta": {
                            k: v
                            for k, v in (c.get("delta") or {}).items()
                            if k in ("role", "content", "tool_calls") and v is not None
                        },
                        "finish_reason": c.get("finish_reason"),
                    }
                    for c in raw.get("choices", [])
                ]
                text.extend(c["delta"].get("content") or "" for c in choices)
                if choices:
                    yield {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": raw.get("created") or int(time.time()),
                        "model": self.name,
                        "choices": choices,
                    }
        except Exception as exc:
            raise to_cloud_error(self.name, exc, self._model.resolved_api_base()) from exc
        finally:
            _close(response)  # a consumer that stops early closes the provider's stream
        yield {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": [],
            "usage": usage or self._count(request, "".join(text)),
        }

    def _count(self, request: ChatRequest, completion: str) -> dict[str, int]:
        """Usage from LiteLLM's local tokenizers, for providers that stream without it."""
        litellm = litellm_module()
        model = self._model.litellm_model
        prompt = int(litellm.token_counter(model=model, messages=request.messages))
        done = int(litellm.token_counter(model=model, text=completion)) if completion else 0
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _close(response: Any) -> None:
    """Close a LiteLLM stream's HTTP response (the OpenAI SDK's Stream has `close`; other
    providers' streams are generators, which close too)."""
    inner = getattr(response, "completion_stream", None)
    close = getattr(inner, "close", None)
    if callable(close):
        close()


def complexity_peer() -> Callable[[str], float]:
    """LiteLLM's own rule-based ComplexityRouter, as a scorer (for `router eval`)."""
    litellm_module()
    from litellm.router_strategy.complexity_router.complexity_router import ComplexityRouter

    peer = ComplexityRouter(model_name="eval", litellm_router_instance=None)  # type: ignore[arg-type]
    return lambda prompt: float(peer.classify(prompt)[1])
