"""One local model's worker process, seen from the parent: start it, talk to it, see it die.

The worker (router/backends/llama_process.py) owns llama.cpp. Here it is a child process with
three pipes: requests go to its stdin as JSON lines, events come back on its stdout (read by a
thread into a queue, so every wait has a timeout), and its stderr is kept as a short tail that
explains a crash. Nothing here decides what a failure means for routing: that is
router/backends/local.py's job.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("router.worker")

PROGRAM = Path(__file__).with_name("llama_process.py")
# Runs the worker's file without importing the router package (its start-up stays ~0.2 s) and
# without the current directory on sys.path (a stray numpy.py there must not shadow numpy).
_BOOT = "import runpy, sys; del sys.path[0]; runpy.run_path(sys.argv[1], run_name='__main__')"

_SIGNALS = {
    signal.SIGSEGV: "a segmentation fault in native code (llama.cpp)",
    signal.SIGABRT: "aborted: a failed assertion in llama.cpp",
    signal.SIGILL: "an illegal instruction: llama.cpp used a CPU feature that fails here",
    signal.SIGKILL: "killed: the out-of-memory killer or kill -9",
    signal.SIGBUS: "a bus error in native code",
    signal.SIGFPE: "an arithmetic fault in native code",
    signal.SIGTERM: "terminated",
}


def describe_exit(code: int | None) -> str:
    """How a process ended, in words: 'SIGSEGV, a segmentation fault in native code ...'."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"killed by signal {-code}"
        return f"{sig.name}, {_SIGNALS.get(sig, 'killed by a signal')}"
    return f"exit status {code}"


class WorkerFailure(Exception):
    """The worker process died or went silent; the message says how (its pid, its last
    output), `public` in words a client may read (how, without pid or output)."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


class WorkerLoadError(Exception):
    """The worker started but llama.cpp refused the model (a bad file or parameter)."""


class Worker:
    """A running worker process. Not thread-safe for generations: the caller runs one at a
    time (LocalBackend's turn). `stop` and `alive` may be called from any thread."""

    def __init__(
        self,
        name: str,
        load: dict[str, Any],
        *,
        timeout: float,
    ) -> None:
        self.name = name
        self.info: dict[str, Any] = {}
        self.failed = False  # set once by the supervisor, so a failure is counted once
        self._load = load
        self._timeout = timeout
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(PROGRAM)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own session: Ctrl-C in a terminal interrupts the answer, not the worker.
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True, name=f"worker-{name}-out"),
            threading.Thread(target=self._read_stderr, daemon=True, name=f"worker-{name}-err"),
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> dict[str, Any]:
        """Load the model; returns the worker's `ready` event (extra buffers, load time...)."""
        self._send({"op": "load", **self._load})
        event = self.next_event(None)
        if event["ev"] == "error":
            self.stop()
            raise WorkerLoadError(event["message"])
        self.info = event
        return event

    def chat(self, messages: list[dict[str, Any]], kwargs: dict[str, Any], stream: bool) -> int:
        """Start a generation; returns its id for `next_event` and `cancel`."""
        rid = next(self._ids)
        self._send(
            {"op": "chat", "id": rid, "messages": messages, "kwargs": kwargs, "stream": stream}
        )
        return rid

    def next_event(self, rid: int | None) -> dict[str, Any]:
        """The next event of generation `rid` (events of generations given up are skipped)."""
        while True:
            try:
                event = self._events.get(timeout=self._timeout)
            except queue.Empty:
                self.kill()
                raise WorkerFailure(
                    f"worker (pid {self.pid}) sent nothing for {self._timeout:g} s "
                    "(timeout_seconds in models.toml); stopped it",
                    f"the worker sent nothing for {self._timeout:g} s; it was stopped",
                ) from None
            if event is None:
                self._events.put(None)  # the end of the pipe stays the end for later calls
                raise self._death()
            if rid is None or event.get("id") in (rid, None):
                return event

    def count(self, texts: list[str]) -> int:
        """Start counting the tokens of each of `texts`; returns the request's id."""
        rid = next(self._ids)
        self._send({"op": "count", "id": rid, "texts": texts})
        return rid

    def embed(self, texts: list[str], truncate: bool = False) -> int:
        """Start embedding `texts` (`truncate`: each cut to the tokens the model reads in a
        batch); returns the request's id for `next_event`."""
        rid = next(self._ids)
        self._send({"op": "embed", "id": rid, "texts": texts, "truncate": truncate})
        return rid

    def request_cancel(self, rid: int) -> None:
        """Ask the worker to stop generation `rid` at its next token, without waiting (from any
        thread: the generation's own thread gets its last event as usual)."""
        with contextlib.suppress(WorkerFailure):  # a dead worker: its reader reports it
            self._send({"op": "cancel", "id": rid})

    def cancel(self, rid: int) -> dict[str, Any]:
        """Stop generation `rid` and wait until the worker has (at the next token); returns
        the generation's last event (`end` says how many tokens it had generated)."""
        self._send({"op": "cancel", "id": rid})
        while True:
            event = self.next_event(rid)
            if event["ev"] in ("end", "error", "result"):
                return event

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int | None:
        """Resident memory of the worker (where the model lives), on Linux."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return None

    def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it has not within `grace` seconds."""
        if self.alive():
            try:
                self._send({"op": "exit"})
                self.proc.wait(timeout=grace)
            except (WorkerFailure, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            log.error("worker %s (pid %d) did not die after SIGKILL", self.name, self.pid)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    # ---------------------------------------------------------------- internals

    def _send(self, message: dict[str, Any]) -> None:
        """Write one message. A message JSON cannot carry raises TypeError or ValueError."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            with self._write_lock:
                stdin.write(data)
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError):  # ValueError: the pipe was closed
            raise self._death() from None

    def _death(self) -> WorkerFailure:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: end it
            self.kill()
            code = self.proc.returncode
        self._readers[1].join(timeout=1)  # let the last words arrive
        tail = " | ".join(list(self._stderr)[-3:])[-300:]
        said = f"; its last output: {tail}" if tail else ""
        how = describe_exit(code)
        return WorkerFailure(
            f"worker process (pid {self.pid}) died: {how}{said}", f"the worker died: {how}"
        )

    def _read_events(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                log.warning("worker %s sent a line that is not JSON: %r", self.name, line[:200])
        self._events.put(None)
        stdout.close()

    def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        for raw in stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("worker %s: %s", self.name, line)
        stderr.close()
