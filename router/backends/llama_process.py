"""The worker process of one local model: it owns llama.cpp, the parent owns everything else.

Started by `router.backends.worker.Worker` as its own Python process (Ollama's runner model),
so a native crash in llama.cpp (SIGSEGV, abort, the OOM killer) ends this process and one
request, never the server, the REPL or the script that uses the router. It is run as a file,
not as `-m router...`, so it imports nothing of the router package: stdlib, llama_cpp, and
its sibling files (prompt_cache, pipe, buffers, loop_guard, crash_hook: stdlib only), loaded
by path. This is the only module that imports llama_cpp, and only inside functions.

Protocol: JSON, one object per line. The parent writes to this process's stdin; this process
answers on the pipe that was its stdout (fd 1 is then pointed at stderr, so whatever llama.cpp
prints cannot corrupt the protocol).

    parent -> worker   {"op": "load", "path", "n_ctx", "n_threads", "n_gpu_layers",
                        "chat_format", "extra_buffers", "kv_cache_mb"}  first line, once
                       {"op": "chat", "id", "messages", "kwargs", "stream"}
                       {"op": "count", "id", "texts"}  each text's tokens, before embedding
                       {"op": "embed", "id", "texts", "truncate"}  (a model loaded with
                                                   "embedding": true)
                       {"op": "cancel", "id"}      stop generation `id` (and any older one)
                       {"op": "exit"}              or EOF on stdin: exit at once
    worker -> parent   {"ev": "ready", "pid", "extra_buffers", "extra_buffers_why", "n_embd",
                        "system_info", "load_seconds"}
                       {"ev": "chunk", "id", "chunk"}            a chat.completion.chunk
                       {"ev": "end", "id", "usage", "cancelled", "kv"} after the last chunk
                       {"ev": "counts", "id", "tokens", "cancelled"}   tokens: one count a text
                       {"ev": "embedding", "id", "vectors", "tokens", "cancelled"}  (none when
                                                   cancelled: a decode is stopped half-way)
                       {"ev": "result", "id", "response", "cancelled", "kv"}  a whole
                                                   chat.completion (cut short when cancelled)
                       {"ev": "error", "id", "kind", "message"}  kind: load | request | internal

    A chat's usage says how many prompt tokens were not read again (OpenAI's
    `prompt_tokens_details.cached_tokens`); `kv` is the saved conversations' state
    (router/backends/prompt_cache.py), null when kv_cache_mb = 0.

One generation runs at a time; the parent never sends a second `chat` before the first has
ended. A reader thread takes `cancel` while the main thread generates, so a client that hangs
up stops the generation at the next token. An embedding model's decode (seconds for a long
text on a CPU) is stopped half-way by llama.cpp's abort callback, asked between graph nodes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import mmap
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any


def _sibling(name: str) -> Any:
    """A stdlib-only module beside this file, loaded by path: this file runs outside the
    router package (the tests, which import the package, get the same module)."""
    qualified = f"router.backends.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(qualified, os.path.join(here, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from router.backends import buffers, crash_hook, loop_guard, prompt_cache
    from router.backends.pipe import Cancels, Channel, read_ops
else:
    buffers, crash_hook = _sibling("buffers"), _sibling("crash_hook")
    loop_guard, prompt_cache = _sibling("loop_guard"), _sibling("prompt_cache")
    pipe = _sibling("pipe")
    Cancels, Channel, read_ops = pipe.Cancels, pipe.Channel, pipe.read_ops

# What the tests, scripts and `router models` import from here.
CRASH_FILE_ENV = crash_hook.CRASH_FILE_ENV
LOOP_CHECK_EVERY, LOOP_MIN_SPAN, looping = (
    loop_guard.LOOP_CHECK_EVERY,
    loop_guard.LOOP_MIN_SPAN,
    loop_guard.looping,
)
AMX_ISSUE, extra_buffers_choice = buffers.AMX_ISSUE, buffers.choice
parse_system_info = buffers.parse_system_info


def system_info() -> str:
    """What this llama.cpp build supports, as llama.cpp prints it."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _counting_llama() -> type:
    """A Llama subclass that counts the tokens of every generation, streamed ones too
    (llama-cpp-python reports usage only for non-streamed completions)."""
    import llama_cpp

    class CountingLlama(llama_cpp.Llama):
        last_prompt_tokens = 0
        last_completion_tokens = 0
        # Checked at every token: True ends the generation there (a non-streamed answer
        # whose client hung up: llama-cpp-python has no other way in).
        stop_when: Callable[[], bool] | None = None
        guard = True  # stop an answer that repeats itself (loops)
        looped = False  # the last generation was stopped for looping
        made: list[int]  # the last generation's tokens (set by generate)
        kv: Any = None  # the saved conversations (prompt_cache.Conversations), if kept
        reused = 0  # of the last prompt's tokens, how many were not read again

        def eval(self, tokens: Any) -> None:
            """llama-cpp-python's eval, never with a batch of one token inside a prompt:
            llama.cpp computes one token with other kernels, and a prompt read in two parts
            would then differ from one read at once (see prompt_cache.Conversations)."""
            tokens = list(tokens)
            if len(tokens) > self.n_batch and len(tokens) % self.n_batch == 1:
                super().eval(tokens[:-2])
                tokens = tokens[-2:]
            super().eval(tokens)

        def generate(  # type: ignore[override]
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            tokens = list(tokens)
            if self.kv is not None:
                self.reused = self.kv.prepare(tokens)
            else:
                self.reused = prompt_cache.reusable(self._input_ids.tolist(), tokens)
            self.last_prompt_tokens = len(tokens)
            self.last_completion_tokens = 0
            self.looped = False
            vocab = self._model.vocab
            made = self.made = []
            for token in super().generate(tokens, *args, **kwargs):
                if self.stop_when is not None and self.stop_when():
                    return
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.last_completion_tokens += 1
                made.append(token)
                if self.guard and len(made) % LOOP_CHECK_EVERY == 0 and looping(made):
                    self.looped = True
                    return
                yield token

    return CountingLlama


def load_llama(
    path: str,
    *,
    n_ctx: int,
    n_threads: int | None,
    n_gpu_layers: int,
    chat_format: str | None,
    extra_buffers: bool,
    embedding: bool = False,
) -> Any:
    """A CountingLlama for `path`, with llama.cpp's extra buffer types on or off.

    llama-cpp-python has no argument for `use_extra_bufts`; it builds the model parameters from
    `llama_model_default_params()`, so that function is wrapped for the length of the load.
    This runs in the worker process, which loads nothing else at the same time.
    """
    import llama_cpp.llama_cpp as c_api  # the module llama_cpp.Llama reads it from

    defaults = c_api.llama_model_default_params

    def params() -> Any:
        p = defaults()
        p.use_extra_bufts = extra_buffers
        return p

    setattr(c_api, "llama_model_default_params", params)  # noqa: B010
    # An embedding model: one vector a text, the mean of its tokens' (a decoder has no pooling
    # of its own).
    pooling = {"embedding": True, "pooling_type": c_api.LLAMA_POOLING_TYPE_MEAN}
    # An embedding model reads each text in one batch: as long a text as the context holds.
    whole = {"n_batch": n_ctx, "n_ubatch": n_ctx}
    try:
        return _counting_llama()(
            **({**pooling, **whole} if embedding else {}),
            model_path=path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            chat_format=chat_format,
            verbose=False,
        )
    finally:
        setattr(c_api, "llama_model_default_params", defaults)  # noqa: B010


def has_extra_buffers_switch() -> bool:
    """Whether this llama-cpp-python exposes llama.cpp's `use_extra_bufts` model parameter."""
    import llama_cpp

    return any(f[0] == "use_extra_bufts" for f in llama_cpp.llama_model_params._fields_)


# ---------------------------------------------------------------------- the process


def _fresh_context(llm: Any) -> None:
    """Forget every token the context holds (KV cache included), and the saved conversations:
    after a failed decode, what llama-cpp-python believes is cached and what llama.cpp holds
    may differ."""
    llm.reset()
    llm._ctx.kv_cache_clear()
    if llm.kv is not None:
        llm.kv.clear()


class _Context:
    """prompt_cache.Engine over a CountingLlama: its context's tokens, and its KV state saved
    to and put back from host memory (sequence 0, the only one llama-cpp-python uses)."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._llm = llm
        self._c = llama_cpp

    def live(self) -> list[int]:
        tokens: list[int] = self._llm._input_ids.tolist()
        return tokens

    def save(self) -> tuple[Any, int] | None:
        ctx = self._llm._ctx.ctx
        size = int(self._c.llama_state_seq_get_size(ctx, 0))
        if size <= 0:
            return None
        # Pages of its own, zeroed lazily by the OS and given back to it when the state is
        # dropped: a heap buffer under glibc's 32 MB mmap threshold stays in its arena when
        # freed, and evictions then grew the RSS past kv_cache_mb (638 MB against 318 MB for
        # a 256 MB budget; scripts/bench_conversations.py).
        pages = mmap.mmap(-1, size)
        view = (ctypes.c_uint8 * size).from_buffer(pages)
        written = int(self._c.llama_state_seq_get_data(ctx, view, size, 0))
        del view
        if written <= 0:
            pages.close()
            return None
        return memoryview(pages)[:written], written  # the tail never written is never touched

    def restore(self, state: Any, tokens: list[int]) -> bool:
        llm, c = self._llm, self._c
        c.llama_memory_seq_rm(c.llama_get_memory(llm._ctx.ctx), 0, -1, -1)
        view = (ctypes.c_uint8 * len(state)).from_buffer(state)
        read = int(c.llama_state_seq_set_data(llm._ctx.ctx, view, len(state), 0))
        del view
        if read <= 0:
            llm.reset()
            llm._ctx.kv_cache_clear()
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        llm._requires_eval = True  # KV only, no logits
        return True

    def truncate(self, n: int) -> list[int]:
        llm, c = self._llm, self._c
        if n < llm.n_tokens:
            c.llama_memory_seq_rm(c.llama_get_memory(llm._ctx.ctx), 0, n, -1)
            llm.n_tokens = n
            llm._requires_eval = True
        return self.live()


def _cached(llm: Any, usage: dict[str, Any]) -> dict[str, Any]:
    """`usage` with the prompt tokens not read again, in OpenAI's words."""
    return {**usage, "prompt_tokens_details": {"cached_tokens": llm.reused}}


def _chat(llm: Any, op: dict[str, Any], channel: Channel, cancels: Cancels) -> None:
    """A generation; when llama.cpp fails to decode (`llama_decode returned 1`: no free slot in
    its KV cache, seen once in a thousand fuzz cases), the context starts afresh and, when the
    client has had nothing yet, the generation is tried once more from a clean cache."""
    sent = [0]
    try:
        _generate(llm, op, channel, cancels, sent)
    except RuntimeError as exc:
        if "llama_decode" not in str(exc):
            raise
        _fresh_context(llm)
        if sent[0]:
            raise
        sys.stderr.write(f"worker: {exc}; cache cleared, generation {op['id']} tried again\n")
        sys.stderr.flush()
        _generate(llm, op, channel, cancels, sent)


def _generate(
    llm: Any, op: dict[str, Any], channel: Channel, cancels: Cancels, sent: list[int]
) -> None:
    rid = int(op["id"])
    crash = crash_hook.armed()
    if crash is not None and crash[1] == 0:
        crash_hook.crash(crash[0])
    if not op.get("stream"):
        llm.stop_when = lambda: cancels.cancelled(rid)
        try:
            response = llm.create_chat_completion(messages=op["messages"], **op["kwargs"])
        finally:
            llm.stop_when = None
        cut = cancels.cancelled(rid)
        if llm.looped:  # cut short: say so as a length stop, and why
            # llama-cpp-python writes a whole answer's text only when a stop condition of its
            # own ends it: the text up to the cut, from the tokens made.
            text = llm.detokenize(llm.made).decode("utf-8", errors="ignore").strip()
            response["choices"][0]["message"]["content"] = text
            response["choices"][0]["finish_reason"] = "length"
            response["stopped"] = "repetition"
        if isinstance(response.get("usage"), dict):
            response["usage"] = _cached(llm, response["usage"])
        kv = llm.kv.stats() if llm.kv is not None else None
        channel.send({"ev": "result", "id": rid, "response": response, "cancelled": cut, "kv": kv})
        return
    chunks = llm.create_chat_completion(messages=op["messages"], stream=True, **op["kwargs"])
    cancelled = False
    try:
        for chunk in chunks:
            if cancels.cancelled(rid):
                cancelled = True
                break
            if crash is not None and sent[0] == crash[1]:
                crash_hook.crash(crash[0])
            if llm.looped:  # the last chunk of an answer the guard stopped
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        choice["finish_reason"] = "length"
            channel.send({"ev": "chunk", "id": rid, "chunk": chunk})
            sent[0] += 1
    finally:
        chunks.close()  # stops llama.cpp before the next generation
    prompt, completion = llm.last_prompt_tokens, llm.last_completion_tokens
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    kv = llm.kv.stats() if llm.kv is not None else None
    end = {"ev": "end", "id": rid, "usage": _cached(llm, usage), "cancelled": cancelled, "kv": kv}
    if llm.looped:
        end["stopped"] = "repetition"
    channel.send(end)


class _Abort:
    """llama.cpp's abort callback for an embedding model: true while the request being
    decoded has been cancelled, so llama_decode stops half-way (it returns 2)."""

    def __init__(self, llm: Any, cancels: Cancels) -> None:
        import llama_cpp

        self.active: int | None = None
        self._cancels = cancels
        self._callback = llama_cpp.ggml_abort_callback(self._asked)  # kept: C holds it
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, self._callback, None)

    def _asked(self, _data: Any) -> bool:
        active = self.active
        return active is not None and self._cancels.cancelled(active)


def _count(llm: Any, op: dict[str, Any], channel: Channel, cancels: Cancels) -> None:
    """Each text's tokens as the embedding reads them (BOS included); a text with none is
    refused (llama-cpp-python reads NULL on zero tokens)."""
    rid, tokens = int(op["id"]), list[int]()
    for i, text in enumerate(op["texts"]):
        if cancels.cancelled(rid):
            channel.send({"ev": "counts", "id": rid, "tokens": tokens, "cancelled": True})
            return
        data = text.encode("utf-8", "replace")
        if not llm.tokenize(data, add_bos=False):
            raise ValueError(f"input[{i}] {text[:20]!r} has no tokens: nothing to embed")
        tokens.append(len(llm.tokenize(data)))
    channel.send({"ev": "counts", "id": rid, "tokens": tokens, "cancelled": False})


def _embed(llm: Any, op: dict[str, Any], channel: Channel, cancels: Cancels, abort: _Abort) -> None:
    rid = int(op["id"])
    if cancels.cancelled(rid):
        channel.send({"ev": "embedding", "id": rid, "vectors": [], "tokens": 0, "cancelled": True})
        return
    abort.active = rid
    try:
        # truncate=False: the parent counted and refused what is too long, unless asked
        vectors, tokens = llm.embed(
            op["texts"], truncate=bool(op.get("truncate")), return_count=True
        )
    except RuntimeError as exc:
        _fresh_context(llm)  # a decode stopped half-way leaves its batch behind
        if not ("llama_decode returned 2" in str(exc) and cancels.cancelled(rid)):
            raise
        channel.send({"ev": "embedding", "id": rid, "vectors": [], "tokens": 0, "cancelled": True})
        return
    finally:
        abort.active = None
    done = {"vectors": vectors, "tokens": int(tokens), "cancelled": False}
    channel.send({"ev": "embedding", "id": rid, **done})


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # native prints (llama.cpp, ggml) go to stderr, never into the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent
    channel = Channel(out)

    load = json.loads(sys.stdin.buffer.readline() or b"{}")
    try:
        started = time.perf_counter()
        info = system_info()
        use, why = extra_buffers_choice(load["extra_buffers"], info)
        if not use and not has_extra_buffers_switch():
            why += " (this llama-cpp-python cannot turn them off: upgrade it)"
        llm = load_llama(
            load["path"],
            n_ctx=load["n_ctx"],
            n_threads=load["n_threads"],
            n_gpu_layers=load["n_gpu_layers"],
            chat_format=load["chat_format"],
            extra_buffers=use,
            embedding=bool(load.get("embedding")),
        )
    except Exception as exc:  # a bad file or parameter: say so, then stop
        channel.send({"ev": "error", "id": None, "kind": "load", "message": str(exc)})
        sys.exit(2)
    channel.send(
        {
            "ev": "ready",
            "pid": os.getpid(),
            "extra_buffers": use,
            "extra_buffers_why": why,
            "system_info": info.strip(),
            "load_seconds": round(time.perf_counter() - started, 3),
            "n_embd": llm.n_embd(),
            "n_batch": llm.n_batch,  # an embedding model reads a text in one batch
        }
    )

    budget = int(load.get("kv_cache_mb") or 0) * 2**20
    if budget and not load.get("embedding") and not (llm._is_recurrent or llm._is_hybrid):
        llm.kv = prompt_cache.Conversations(_Context(llm), budget)
    ops: queue.Queue[dict[str, Any]] = queue.Queue()
    cancels = Cancels()
    abort = _Abort(llm, cancels) if load.get("embedding") else None
    threading.Thread(target=read_ops, args=(ops, cancels, channel), daemon=True).start()
    while True:
        op = ops.get()
        try:
            if op.get("op") == "count":
                _count(llm, op, channel, cancels)
            elif op.get("op") == "embed":
                if abort is None:
                    raise ValueError("this model was not loaded in embedding mode")
                _embed(llm, op, channel, cancels, abort)
            else:
                _chat(llm, op, channel, cancels)
        except ValueError as exc:  # llama-cpp-python's way to reject a request (too long...)
            channel.send({"ev": "error", "id": op["id"], "kind": "request", "message": str(exc)})
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            channel.send({"ev": "error", "id": op["id"], "kind": "internal", "message": message})


if __name__ == "__main__":
    main()
