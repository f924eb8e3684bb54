"""Local tier: GGUF models run in-process by llama-cpp-python.

Each model is loaded once, on first use. A llama.cpp context is not re-entrant, so one
generation runs per model at a time: concurrent callers queue on the model's lock (also a
stream holds it until it is exhausted or closed). Running two generations at once on a small
CPU would also make both slower (thread oversubscription).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from router.config import Config, LocalModel, local_path
from router.errors import BackendError, BusyError, ModelLoadError
from router.types import ChatRequest

_PASSTHROUGH = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    # Only reach here when models.toml says supports_tools = true for this model (its
    # chat_format must then handle them, e.g. "chatml-function-calling").
    "tools",
    "tool_choice",
)


def resolve_gguf(config: Config, name: str, model: LocalModel) -> Path:
    """The GGUF file on disk, downloading it from the Hugging Face hub first if needed."""
    path = local_path(config, model)
    if path is not None:
        if not path.is_file():
            raise ModelLoadError(f"models.{name}: GGUF file {path} not found")
        return path
    assert model.hf_repo is not None and model.hf_file is not None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=model.hf_repo, filename=model.hf_file))
    except Exception as exc:  # network, auth, missing file: all end the same way for the user
        raise ModelLoadError(
            f"models.{name}: could not download {model.hf_repo}/{model.hf_file} from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}); download the file yourself and "
            'set path = "/path/to/file.gguf" instead'
        ) from exc


def _counting_llama() -> type:
    """A Llama subclass that counts the tokens of every generation, streamed ones too
    (llama-cpp-python reports usage only for non-streamed completions)."""
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        last_prompt_tokens = 0
        last_completion_tokens = 0

        def generate(  # type: ignore[override]
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            self.last_prompt_tokens = len(tokens)
            self.last_completion_tokens = 0
            vocab = self._model.vocab
            for token in super().generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.last_completion_tokens += 1
                yield token

    return CountingLlama


class LocalBackend:
    """One GGUF model behind the Backend seam."""

    tier = "local"

    def __init__(
        self,
        config: Config,
        name: str,
        model: LocalModel,
        loading: Callable[[str], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.name = name
        self._loading = loading or (lambda _name: nullcontext())
        self._config = config
        self._model_config = model
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._in_flight = 0  # running + waiting for the model
        self._seconds_per_request = 2.0  # moving average, for Retry-After

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Wait for this model, or refuse at once when `max_queue` requests already wait."""
        with self._queue_lock:
            if self._in_flight >= self._model_config.max_queue:
                wait = self._in_flight * self._seconds_per_request
                raise BusyError(
                    f"local model {self.name!r} has {self._in_flight} requests in flight "
                    f"(max_queue = {self._model_config.max_queue}); retry in {wait:.0f} s",
                    retry_after=max(1.0, wait),
                )
            self._in_flight += 1
        try:
            with self._generate_lock:
                started = time.monotonic()
                try:
                    yield
                finally:
                    took = time.monotonic() - started
                    self._seconds_per_request += 0.2 * (took - self._seconds_per_request)
        finally:
            with self._queue_lock:
                self._in_flight -= 1

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                with self._loading(self.name):
                    self._llm = self._load(self._model_config)
            return self._llm

    def _load(self, cfg: LocalModel) -> Any:
        path = resolve_gguf(self._config, self.name, cfg)
        try:
            return _counting_llama()(
                model_path=str(path),
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads,
                n_threads_batch=cfg.n_threads,
                n_gpu_layers=cfg.n_gpu_layers,
                chat_format=cfg.chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"models.{self.name}: llama.cpp could not load {path}: {exc}"
            ) from exc

    def _kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: params[k] for k in _PASSTHROUGH if k in params}
        fmt = params.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            kwargs["response_format"] = {"type": "json_object", "schema": schema or {}}
        return kwargs

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        llm = self.load()
        with self._turn():
            try:
                out: dict[str, Any] = llm.create_chat_completion(
                    messages=request.messages, **self._kwargs(params)
                )
            except ValueError as exc:  # e.g. prompt longer than n_ctx
                raise BackendError(f"{self.name}: {exc}", retryable=False) from exc
        out["model"] = self.name
        return out

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        llm = self.load()
        with self._turn():
            chunks = llm.create_chat_completion(
                messages=request.messages, stream=True, **self._kwargs(params)
            )
            last: dict[str, Any] | None = None
            try:
                for chunk in chunks:
                    chunk["model"] = self.name
                    last = chunk
                    yield chunk
            except ValueError as exc:
                raise BackendError(f"{self.name}: {exc}", retryable=False) from exc
            finally:
                # Closing stops llama.cpp before the next caller gets the model.
                chunks.close()
            prompt, completion = llm.last_prompt_tokens, llm.last_completion_tokens
        yield {
            "id": last["id"] if last else f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
