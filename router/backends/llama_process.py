"""The worker process of one local model: it owns llama.cpp, the parent owns everything else.

Started by `router.backends.worker.Worker` as its own Python process (Ollama's runner model),
so a native crash in llama.cpp (SIGSEGV, abort, the OOM killer) ends this process and one
request, never the server, the REPL or the script that uses the router. It is run as a file,
not as `-m router...`, so it imports nothing of the router: stdlib and llama_cpp only. This is
the only module that imports llama_cpp, and only inside functions.

Protocol: JSON, one object per line. The parent writes to this process's stdin; this process
answers on the pipe that was its stdout (fd 1 is then pointed at stderr, so whatever llama.cpp
prints cannot corrupt the protocol).

    parent -> worker   {"op": "load", "path", "n_ctx", "n_threads", "n_gpu_layers",
                        "chat_format", "extra_buffers"}                  first line, once
                       {"op": "chat", "id", "messages", "kwargs", "stream"}
                       {"op": "count", "id", "texts"}  each text's tokens, before embedding
                       {"op": "embed", "id", "texts", "truncate"}  (a model loaded with
                                                   "embedding": true)
                       {"op": "cancel", "id"}      stop generation `id` (and any older one)
                       {"op": "exit"}              or EOF on stdin: exit at once
    worker -> parent   {"ev": "ready", "pid", "extra_buffers", "extra_buffers_why", "n_embd",
                        "system_info", "load_seconds"}
                       {"ev": "chunk", "id", "chunk"}            a chat.completion.chunk
                       {"ev": "end", "id", "usage", "cancelled"} after the last chunk
                       {"ev": "counts", "id", "tokens", "cancelled"}   tokens: one count a text
                       {"ev": "embedding", "id", "vectors", "tokens", "cancelled"}  (none when
                                                   cancelled: a decode is stopped half-way)
                       {"ev": "result", "id", "response", "cancelled"}  a whole chat.completion
                                                   (cut short when cancelled)
                       {"ev": "error", "id", "kind", "message"}  kind: load | request | internal

One generation runs at a time; the parent never sends a second `chat` before the first has
ended. A reader thread takes `cancel` while the main thread generates, so a client that hangs
up stops the generation at the next token. An embedding model's decode (seconds for a long
text on a CPU) is stopped half-way by llama.cpp's abort callback, asked between graph nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal

ExtraBuffers = bool | Literal["auto"]

AMX_ISSUE = "llama.cpp issue 20824"

# Test hook, inert unless this variable is set: when the file it names exists at the start of a
# generation, the worker crashes as the file says ("segv", "abort", "kill", "hang" or "exit",
# then optionally "after=N" chunks and "repeat" to keep the file). Tests use it to prove that a
# native crash costs one request, never the parent.
CRASH_FILE_ENV = "ROUTER_WORKER_CRASH_FILE"


def parse_system_info(info: str) -> dict[str, str]:
    """llama.cpp's system info ("CPU : SSE3 = 1 | AVX = 1 | AMX_INT8 = 1 | ...") as a dict."""
    return {m[1]: m[2] for m in re.finditer(r"([A-Za-z0-9_]+)\s*=\s*([^|\s]+)", info)}


def extra_buffers_choice(setting: ExtraBuffers, info: str) -> tuple[bool, str]:
    """Whether to load weights into llama.cpp's extra buffer types, and why.

    Extra buffer types are where llama.cpp repacks weights for a faster kernel: AMX tiles on
    Intel Sapphire Rapids and later, interleaved blocks for AVX2/NEON. On builds with AMX, any
    decode of two or more tokens at once crashes in the AMX matmul (SIGSEGV or SIGILL), so
    `auto` turns them off there and keeps llama.cpp's default everywhere else.
    """
    if setting is True:
        return True, "extra_buffers = true in models.toml"
    if setting is False:
        return False, "extra_buffers = false in models.toml"
    if parse_system_info(info).get("AMX_INT8") == "1":
        return False, (
            "auto: this llama.cpp build uses AMX (AMX_INT8 = 1), whose repacked weights crash "
            f"multi-token decodes ({AMX_ISSUE}); loaded without extra buffers"
        )
    return True, "auto: llama.cpp's default (no AMX in this build)"


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

        def generate(  # type: ignore[override]
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Iterator[int]:
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


LOOP_MIN_SPAN = 32  # tokens: a loop is found once its repeats cover this many
LOOP_MAX_BLOCK = 64  # tokens: the longest repeated block looked for
LOOP_REPEATS = 3  # a block repeated at least this many times in a row
LOOP_CHECK_EVERY = 4  # tokens between two checks


def looping(tokens: list[int]) -> bool:
    """Whether the answer's last tokens repeat one block of 1 to LOOP_MAX_BLOCK tokens at
    least LOOP_REPEATS times in a row, over LOOP_MIN_SPAN tokens or more ("la Femme la Femme
    la Femme…", a sentence said again and again): a small model's loop, which would otherwise
    run to max_tokens."""
    for block in range(1, LOOP_MAX_BLOCK + 1):
        span = max(LOOP_MIN_SPAN, LOOP_REPEATS * block)
        if span > len(tokens):
            break
        tail = tokens[-span:]
        if tail[block:] == tail[:-block]:  # periodic with this block
            return True
    return False


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


class _Channel:
    """The protocol pipe to the parent (the original stdout)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._out.write(data)
            self._out.flush()


class _Cancels:
    """The highest generation id the parent has cancelled (ids only grow)."""

    def __init__(self) -> None:
        self.up_to = -1

    def cancelled(self, rid: int) -> bool:
        return rid <= self.up_to


def _read_ops(ops: queue.Queue[dict[str, Any]], cancels: _Cancels, channel: _Channel) -> None:
    """Reader thread: cancels act at once, chats queue for the main thread; EOF means the
    parent is gone, so the worker goes too (never an orphan holding the model's memory)."""
    for line in sys.stdin.buffer:
        try:
            op = json.loads(line)
        except ValueError as exc:  # e.g. an integer over Python's digit limit: refuse it
            channel.send({"ev": "error", "id": None, "kind": "request", "message": str(exc)})
            continue
        kind = op.get("op")
        if kind == "cancel":
            cancels.up_to = max(cancels.up_to, int(op["id"]))
        elif kind == "exit":
            break
        else:
            ops.put(op)
    os._exit(0)


def _armed_crash() -> tuple[str, int] | None:
    path = os.environ.get(CRASH_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
    except OSError:
        return None
    if "repeat" not in words:
        with contextlib.suppress(OSError):
            os.unlink(path)
    after = next((int(w[6:]) for w in words if w.startswith("after=")), 0)
    return (words[0] if words else "segv"), after


def _crash(how: str) -> None:
    sys.stderr.write(f"worker: crashing on purpose ({how}, {CRASH_FILE_ENV})\n")
    sys.stderr.flush()
    if how == "segv":
        import ctypes

        ctypes.string_at(0)  # a null read: SIGSEGV, as a native bug would
    elif how == "abort":
        os.abort()
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "hang":
        time.sleep(3600)
    elif how == "decode":  # what llama.cpp reports when it finds no room in its KV cache
        raise RuntimeError("llama_decode returned 1")
    os._exit(3)


def _fresh_context(llm: Any) -> None:
    """Forget every token the context holds (KV cache included): after a failed decode, what
    llama-cpp-python believes is cached and what llama.cpp holds may differ."""
    llm.reset()
    llm._ctx.kv_cache_clear()


def _chat(llm: Any, op: dict[str, Any], channel: _Channel, cancels: _Cancels) -> None:
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
    llm: Any, op: dict[str, Any], channel: _Channel, cancels: _Cancels, sent: list[int]
) -> None:
    rid = int(op["id"])
    crash = _armed_crash()
    if crash is not None and crash[1] == 0:
        _crash(crash[0])
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
        channel.send({"ev": "result", "id": rid, "response": response, "cancelled": cut})
        return
    chunks = llm.create_chat_completion(messages=op["messages"], stream=True, **op["kwargs"])
    cancelled = False
    try:
        for chunk in chunks:
            if cancels.cancelled(rid):
                cancelled = True
                break
            if crash is not None and sent[0] == crash[1]:
                _crash(crash[0])
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
    end = {"ev": "end", "id": rid, "usage": usage, "cancelled": cancelled}
    if llm.looped:
        end["stopped"] = "repetition"
    channel.send(end)


class _Abort:
    """llama.cpp's abort callback for an embedding model: true while the request being
    decoded has been cancelled, so llama_decode stops half-way (it returns 2)."""

    def __init__(self, llm: Any, cancels: _Cancels) -> None:
        import llama_cpp

        self.active: int | None = None
        self._cancels = cancels
        self._callback = llama_cpp.ggml_abort_callback(self._asked)  # kept: C holds it
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, self._callback, None)

    def _asked(self, _data: Any) -> bool:
        active = self.active
        return active is not None and self._cancels.cancelled(active)


def _count(llm: Any, op: dict[str, Any], channel: _Channel, cancels: _Cancels) -> None:
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


def _embed(
    llm: Any, op: dict[str, Any], channel: _Channel, cancels: _Cancels, abort: _Abort
) -> None:
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
    channel = _Channel(out)

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

    ops: queue.Queue[dict[str, Any]] = queue.Queue()
    cancels = _Cancels()
    abort = _Abort(llm, cancels) if load.get("embedding") else None
    threading.Thread(target=_read_ops, args=(ops, cancels, channel), daemon=True).start()
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
