"""What `router chat` reads and keeps: the prompt from arguments and piped stdin, and the last
conversation (for `router chat -c`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from router.errors import RequestError
from router.types import Message


def state_dir() -> Path:
    import platformdirs

    return platformdirs.user_state_path("router")


def conversation_path() -> Path:
    return state_dir() / "last_conversation.json"


def piped_stdin() -> str | None:
    """What is piped into the command, or None when stdin is a terminal or nothing (such as
    /dev/null or a closed descriptor) is piped."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    try:
        mode = os.fstat(stream.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
            return None
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a file descriptor (an in-memory stream in tests): read what it holds
    return stream.read()


def prompt_text(words: list[str], piped: str | None) -> str:
    """The prompt as `llm` builds it: piped text first, then the words of the command line
    (`cat report.txt | router chat "Summarise this"`). '-' alone means stdin only."""
    said = " ".join(words)
    if said == "-":
        said = ""
    parts = [p for p in (piped.rstrip("\n") if piped else "", said) if p.strip()]
    return "\n\n".join(parts)


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """`messages` with `system` as their system prompt (replacing any), or unchanged."""
    if system is None:
        return messages
    rest = [m for m in messages if m.get("role") != "system"]
    return [{"role": "system", "content": system}, *rest] if system else rest


def load_last() -> list[Message]:
    """The last conversation `router chat` had, for `-c`."""
    path = conversation_path()
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        messages = data["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages is not a list of objects")
    except FileNotFoundError:
        raise RequestError(
            "no earlier conversation to continue: start one with 'router chat' first"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RequestError(
            f"{path}: cannot read the last conversation ({exc}); delete it"
        ) from None
    return messages


def save_last(messages: list[Message]) -> None:
    """Keep the conversation for `router chat -c` (atomically; a failure only loses that)."""
    path = conversation_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".conversation-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"messages": messages}, f, ensure_ascii=False)
        os.replace(tmp, path)
