"""The worker's test hook for native crashes: inert unless ROUTER_WORKER_CRASH_FILE is set.

When the file it names exists at the start of a generation, the worker crashes as the file
says ("segv", "abort", "kill", "hang", "decode" or "exit", then optionally "after=N" chunks and
"repeat" to keep the file). Tests use it to prove that a native crash costs one request, never
the parent. Loaded by the worker by path (router/backends/llama_process.py): stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

CRASH_FILE_ENV = "ROUTER_WORKER_CRASH_FILE"


def armed() -> tuple[str, int] | None:
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


def crash(how: str) -> None:
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
