"""The local worker's side of its pipe to the parent: answers out, operations in (a reader
thread: a cancel acts at once, while the main thread generates). Loaded by the worker by path
(router/backends/llama_process.py): stdlib only.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import IO, Any


class Channel:
    """The protocol pipe to the parent (the original stdout)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._out.write(data)
            self._out.flush()


class Cancels:
    """The highest generation id the parent has cancelled (ids only grow)."""

    def __init__(self) -> None:
        self.up_to = -1

    def cancelled(self, rid: int) -> bool:
        return rid <= self.up_to


def read_ops(ops: queue.Queue[dict[str, Any]], cancels: Cancels, channel: Channel) -> None:
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
