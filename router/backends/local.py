"""Local tier: GGUF models, each run by llama.cpp in a supervised worker process.

The worker (router/backends/llama_process.py, started through router/backends/worker.py) owns
the llama.cpp state, as Ollama's runners do, so a native crash costs the request being answered
and never the process using the router. This module is the supervisor behind the Backend seam:

- one generation per model at a time: callers queue on the model's turn (a llama.cpp context
  is not re-entrant, and two generations on a small CPU slow each other down); when
  `max_queue` requests are already in flight the next one is refused at once (BusyError);
- a worker that dies or goes silent fails its request with a BackendError naming the cause
  (the engine then falls back to the next candidate) and is started again on the next request,
  at once after one failure, after a backoff after two, and not for `cooldown` seconds after
  `limit` failures within `window` seconds (the model is then unusable, and says why);
- closing a stream cancels the generation inside the worker before the next caller's turn.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from router.backends import batching
from router.backends import hangup as hangups
from router.backends.batching import EMBED_GROUP
from router.backends.restarts import RestartPolicy
from router.backends.transcript import for_local, llama_kwargs
from router.backends.turns import Turns
from router.backends.worker import Worker, WorkerFailure, WorkerLoadError, describe_exit
from router.config import Config, LocalModel
from router.config.model_files import hub_cached, local_path, local_problem
from router.errors import (
    BackendError,
    ClientGoneError,
    ModelLoadError,
    RequestError,
    RouterError,
)
from router.types import ChatRequest

log = logging.getLogger("router.local")


def resolve_gguf(config: Config, name: str, model: LocalModel) -> Path:
    """The GGUF file on disk (a hub model must have been downloaded: `router pull`)."""
    path = local_path(config, model) if model.hf_repo is None else hub_cached(model)
    if path is None or not path.is_file():
        raise ModelLoadError(
            f"{name}: {local_problem(config, name, model)}",
            public=f"{name}: the local model's file is missing",
        )
    return path


class LocalBackend:
    """One GGUF model behind the Backend seam, answered by a supervised worker process."""

    def __init__(
        self,
        config: Config,
        name: str,
        model: LocalModel,
        loading: Callable[[str], AbstractContextManager[object]] | None = None,
        *,
        restarts: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._loading = loading or (lambda _name: nullcontext())
        self._config = config
        self._model_config = model
        self._restarts = restarts or RestartPolicy()
        self._clock = clock
        self._worker: Worker | None = None
        self._state_lock = threading.Lock()  # _worker, _restarts and the counters
        self._turns = Turns(name, model)  # the model's turns: max_queue, max_parallel
        self._turn = self._turns.turn
        self._starts = 0
        self._starting = False
        self._outcomes = {"completed": 0, "cancelled": 0, "failed": 0}
        self._last_info: dict[str, Any] = {}
        self._kv: dict[str, Any] | None = None  # the worker's saved conversations, last seen

    # ---------------------------------------------------------------- the Backend seam

    def complete(self, request: ChatRequest, params: dict[str, Any]) -> dict[str, Any]:
        hangup = hangups.current()
        with self._turn(chat=request):
            if hangup is not None and hangup.fired:  # gave up while queued: generate nothing
                raise ClientGoneError(f"{self.name}: the client hung up while queued")
            worker = self._ready_worker()
            rid = self._send(worker, request, params, stream=False)
            # A hang-up sends the worker the cancel a closed stream sends: it stops at the next
            # token and answers with what it has, and the model is free for the next caller.
            forget = hangup.on_fire(lambda: worker.request_cancel(rid)) if hangup else None
            try:
                event = self._event(worker, rid)
            finally:
                if forget is not None:
                    forget()
            cut = bool(event.get("cancelled"))
            self._finished("cancelled" if cut else "completed", event.get("kv"))
        if cut and hangup is not None:
            hangup.cut_short()
        out: dict[str, Any] = event["response"]
        out["model"] = self.name
        return out

    def stream(self, request: ChatRequest, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self._turn(chat=request):
            worker = self._ready_worker()
            rid = self._send(worker, request, params, stream=True)
            last: dict[str, Any] | None = None
            ended = False
            try:
                while True:
                    event = self._event(worker, rid)
                    if event["ev"] == "end":
                        usage: dict[str, Any] = event["usage"]
                        stopped = event.get("stopped")  # "repetition": the guard cut it
                        kv = event.get("kv")
                        break
                    chunk: dict[str, Any] = event["chunk"]
                    chunk["model"] = self.name
                    last = chunk
                    yield chunk
                ended = True
                self._finished("completed", kv)
            except BackendError:
                ended = True  # the worker is gone or said the generation failed
                raise
            finally:
                if not ended:  # the consumer stopped early: stop the generation too
                    self._cancel(worker, rid)
        yield {
            "id": last["id"] if last else f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": [],
            "usage": usage,
            **({"stopped": stopped} if stopped else {}),
        }

    def embed(
        self, texts: list[str], dimensions: int | None = None, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """One vector a text from a model loaded in embedding mode (`embeddings = true`), of
        the model's own size: another `dimensions` is refused before any work.

        The texts are counted first: one longer than the model reads in a batch (its n_ctx) is
        refused, as OpenAI refuses it, unless the client asked for it to be cut (`truncate`);
        a request of more than `max_embedding_tokens` is a 413. They are then read in groups
        of about EMBED_GROUP tokens, each group a turn of the model's own, so that a small
        request queued behind a large one is answered between two groups. A hang-up stops the
        decode under way (llama.cpp's abort callback) and every later group."""
        hangup = hangups.current()
        with self._turn():
            worker = self._ready_worker()
            size = worker.info.get("n_embd")
            if dimensions is not None and size is not None and dimensions != size:
                raise RequestError(
                    f"'dimensions' must be {size}, the size of {self.name}'s vectors (a local "
                    "model does not shorten them); leave it out to get that size",
                    param="dimensions",
                )
            counted = self._embedding_event(worker, worker.count, texts, hangup)
        if counted.get("cancelled"):
            raise batching.gone(self.name, 0, len(texts), 0)
        each = int(worker.info.get("n_batch") or self._model_config.n_ctx)
        counts = [min(int(n), each) if truncate else int(n) for n in counted["tokens"]]
        batching.check_sizes(self.name, counts, each, self._model_config.max_embedding_tokens)
        vectors: list[list[float]] = []
        used = 0
        for start, end in batching.groups(counts, EMBED_GROUP):
            if hangup is not None and hangup.fired:
                raise batching.gone(self.name, start, len(texts), used)
            with self._turn(admitted=True):
                worker = self._ready_worker()
                event = self._embedding_event(
                    worker, partial(worker.embed, truncate=truncate), texts[start:end], hangup
                )
            if event.get("cancelled"):
                raise batching.gone(self.name, start, len(texts), used)
            vectors += event["vectors"]
            used += int(event["tokens"])
        return vectors, used

    def _embedding_event(
        self,
        worker: Worker,
        start: Callable[[list[str]], int],
        texts: list[str],
        hangup: hangups.Hangup | None,
    ) -> dict[str, Any]:
        """Start `start(texts)` on the worker and wait for its event; a hang-up cancels it."""
        try:
            rid = start(texts)
        except WorkerFailure as exc:
            self._fail(worker, str(exc))
            raise BackendError(f"{self.name}: {exc}", public=self._failed(exc)) from None
        forget = hangup.on_fire(lambda: worker.request_cancel(rid)) if hangup else None
        try:
            event = self._event(worker, rid, request_errors=RequestError)
        finally:
            if forget is not None:
                forget()
        self._finished("cancelled" if event.get("cancelled") else "completed")
        return event

    # ---------------------------------------------------------------- supervision

    def load(self) -> dict[str, Any]:
        """Start the worker now (it otherwise starts on the first request); its ready info."""
        with self._turn():
            return self._ready_worker().info

    def unusable(self) -> str | None:
        """Why the model cannot be used now (repeated worker failures), else None."""
        with self._state_lock:
            return self._restarts.unusable(self._clock())

    def unusable_public(self) -> str | None:
        """`unusable` in words a client may read (without the last failure's pid and output)."""
        with self._state_lock:
            return self._restarts.unusable(self._clock(), detail=False)

    def seconds_until_usable(self) -> float:
        """0 when the model may be used now, else the seconds left of its cool-down."""
        with self._state_lock:
            now = self._clock()
            return self._restarts.wait(now) if self._restarts.unusable(now) else 0.0

    def health(self) -> dict[str, Any]:
        """The worker's state for /health and `router models`."""
        with self._state_lock:
            worker = self._worker
            now = self._clock()
            if worker is not None and worker.alive():
                state = "ready"
            elif self._starting:
                state = "starting"
            elif self._restarts.unusable(now):
                state = "unusable"
            elif worker is not None or self._restarts.total:  # dead, or failed and forgotten
                state = "stopped after a failure; starts again on the next request"
            elif self._starts:
                state = "stopped"
            else:
                state = "not started; starts on the first request"
            info = self._last_info
            rss = worker.rss_bytes() if worker is not None else None
            return {
                "state": state,
                "pid": worker.pid if worker is not None and state == "ready" else None,
                "rss_mb": round(rss / 2**20, 1) if rss else None,
                "extra_buffers": info.get("extra_buffers"),
                "extra_buffers_why": info.get(
                    "extra_buffers_why",
                    "decided when the worker starts "
                    f"(extra_buffers = {self._model_config.extra_buffers!r})",
                ),
                "starts": self._starts,
                "failures": self._restarts.total,
                "last_failure": self._restarts.last,
                "why_unusable": self._restarts.unusable(now),
                "generations": dict(self._outcomes),
                "in_flight": self._turns.in_flight,  # answering + waiting for the model
                "max_queue": self._model_config.max_queue,
                "kv_cache": self._kv_view(),
            }

    def _kv_view(self) -> dict[str, Any] | None:
        """The saved conversations (under the state lock), none yet or None when kept none."""
        budget = self._model_config.kv_cache_mb
        if not budget or self._model_config.embeddings:
            return None
        return self._kv or {"conversations": 0, "mb": 0.0, "budget_mb": float(budget), "saved": []}

    def close(self) -> None:
        with self._state_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    @property
    def worker_pid(self) -> int | None:
        with self._state_lock:
            return self._worker.pid if self._worker is not None else None

    def _ready_worker(self) -> Worker:
        """The running worker, started (or restarted) if needed. Called during the turn."""
        with self._state_lock:
            worker = self._worker
        if worker is not None and not worker.alive():  # died between requests (kill, OOM)
            self._fail(
                worker,
                f"worker process (pid {worker.pid}) died while idle: "
                f"{describe_exit(worker.proc.returncode)}",
            )
            worker = None
        if worker is not None:
            return worker
        with self._state_lock:
            now = self._clock()
            why, wait = self._restarts.unusable(now), self._restarts.wait(now)
        if why is not None:
            raise BackendError(
                f"{self.name}: {why}",
                retry_after=wait,
                public=f"{self.name}: {self.unusable_public()}",
            )
        if wait > 0:  # the short backoff after a second failure: this request waits it out
            time.sleep(wait)
        return self._start()

    def _start(self) -> Worker:
        cfg = self._model_config
        path = resolve_gguf(self._config, self.name, cfg)
        load = {
            "path": str(path),
            "n_ctx": cfg.n_ctx,
            "n_threads": cfg.n_threads,
            "n_gpu_layers": cfg.n_gpu_layers,
            "chat_format": cfg.chat_format,
            "extra_buffers": cfg.extra_buffers,
            "embedding": cfg.embeddings,
            "kv_cache_mb": cfg.kv_cache_mb,
        }
        with self._state_lock:
            self._starting = True
        try:
            return self._spawn(path, load)
        finally:
            with self._state_lock:
                self._starting = False

    def _spawn(self, path: Path, load: dict[str, Any]) -> Worker:
        with self._loading(self.name):
            try:
                worker = Worker(self.name, load, timeout=self._model_config.timeout_seconds)
            except OSError as exc:
                raise BackendError(
                    f"{self.name}: cannot start a worker process: {exc}",
                    public=f"{self.name}: the local model cannot start",
                ) from exc
            try:
                info = worker.start()
            except WorkerLoadError as exc:
                self._fail(worker, f"llama.cpp could not load {path}: {exc}")
                raise ModelLoadError(
                    f"models.{self.name}: llama.cpp could not load {path}: {exc}",
                    public=f"{self.name}: the local model's file cannot be loaded",
                ) from None
            except WorkerFailure as exc:
                self._fail(worker, f"{exc} while loading {path.name}")
                raise BackendError(
                    f"{self.name}: {exc} while loading {path.name}",
                    public=f"{self.name}: {exc.public} while loading its model",
                ) from None
            except BaseException:  # interrupted (Ctrl-C): leave nothing behind
                worker.kill()
                raise
        with self._state_lock:
            self._worker = worker
            self._starts += 1
            self._last_info = info
            self._kv = None  # a new worker remembers nothing
        log.info(
            "%s: worker pid %d ready in %.2f s (extra buffers %s: %s)",
            self.name,
            worker.pid,
            info.get("load_seconds", 0.0),
            "on" if info.get("extra_buffers") else "off",
            info.get("extra_buffers_why"),
        )
        return worker

    def _fail(self, worker: Worker, what: str) -> None:
        """Count one failure of `worker` (once), forget it and make sure it is gone."""
        with self._state_lock:
            if worker.failed:
                return
            worker.failed = True
            if self._worker is worker:
                self._worker = None
            self._restarts.failed(self._clock(), what)
        worker.kill()
        log.warning("%s: %s", self.name, what)

    def _send(
        self, worker: Worker, request: ChatRequest, params: dict[str, Any], *, stream: bool
    ) -> int:
        try:
            messages = for_local(request.messages, tools=self._model_config.supports_tools)
            return worker.chat(messages, llama_kwargs(params), stream)
        except WorkerFailure as exc:
            self._fail(worker, str(exc))
            raise BackendError(f"{self.name}: {exc}", public=self._failed(exc)) from None
        except (TypeError, ValueError) as exc:  # not JSON: nothing was sent
            raise BackendError(
                f"{self.name}: the request cannot be sent as JSON: {exc}",
                public=f"{self.name}: the request cannot be sent to the local model",
            ) from None

    def _event(
        self, worker: Worker, rid: int, request_errors: type[RouterError] | None = None
    ) -> dict[str, Any]:
        """The next event of generation `rid`; a death, a stall or an error → BackendError
        (`request_errors`: a request the worker refused as written raises that instead)."""
        try:
            event = worker.next_event(rid)
        except WorkerFailure as exc:
            self._fail(worker, str(exc))
            raise BackendError(f"{self.name}: {exc}", public=self._failed(exc)) from None
        if event["ev"] == "error":
            self._finished("failed")  # the worker lives: the request failed
            if event.get("kind") == "request":  # e.g. the prompt is longer than n_ctx
                text = f"{self.name}: {event['message']}"
                if request_errors is not None:
                    raise request_errors(text[:300])
                raise BackendError(text, public=text[:300])  # about the request
            # An unexpected exception can leave llama-cpp-python's state broken for every
            # later request (a `seed` of the wrong type stays set): start afresh next time.
            # The exception's text is for the log, not for the client.
            log.error("%s: llama-cpp-python failed: %s", self.name, event["message"])
            self._retire(worker)
            raise BackendError(
                f"{self.name}: the local model failed on this request (the server log has "
                "the details); its worker restarts",
                public=f"{self.name}: the local model failed on this request; it restarts",
            )
        return event

    def _failed(self, exc: WorkerFailure) -> str:
        """What a client reads of a worker's death (its pid and last output: the log)."""
        return f"{self.name}: {exc.public}; it restarts"

    def _retire(self, worker: Worker) -> None:
        """Stop a live worker whose state is suspect; the next request starts a new one."""
        with self._state_lock:
            if self._worker is worker:
                self._worker = None
        worker.stop()

    def _cancel(self, worker: Worker, rid: int) -> None:
        try:
            worker.cancel(rid)
        except WorkerFailure as exc:
            self._fail(worker, str(exc))
            return
        self._finished("cancelled")

    def _finished(self, outcome: str, kv: dict[str, Any] | None = None) -> None:
        """A generation ended with the worker alive: it works, whatever the request got
        (`kv`: its saved conversations now)."""
        with self._state_lock:
            self._restarts.succeeded()
            self._outcomes[outcome] += 1
            self._kv = kv if kv is not None else self._kv
