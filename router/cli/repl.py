"""The interactive chat: `router chat` with no prompt on a terminal.

Multi-turn context, streamed answers, the route after every turn, line editing and history
(readline). `/local`, `/cloud`, `/auto` or `/model NAME` switch the mode, `/stats` shows the
session's savings, `/reset` forgets the conversation, `/exit` or Ctrl-D leaves. Ctrl-C stops
the answer being written, not the session.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.cli.common import echo_err, status_line
from router.engine import Router
from router.errors import RouterError
from router.types import Message, Routing

HELP = (
    "/auto /local /cloud  switch routing mode   /model NAME  force one model\n"
    "/stats  this session's savings   /reset  forget the conversation   /exit  leave (Ctrl-D)\n"
    "Ctrl-C stops an answer."
)


@dataclass
class SessionStats:
    turns: int = 0
    local: int = 0
    cloud: int = 0
    cache_hits: int = 0
    tokens_saved: int = 0
    usd_saved: float = 0.0
    cost_usd: float = 0.0

    def add(self, r: Routing) -> None:
        self.turns += 1
        self.local += r.tier == "local"
        self.cloud += r.tier == "cloud"
        self.cache_hits += r.cache_hit
        self.tokens_saved += r.tokens_saved
        self.usd_saved += r.usd_saved
        self.cost_usd += r.cost_usd

    def __str__(self) -> str:
        return (
            f"{self.turns} turns: {self.local} local, {self.cloud} cloud, "
            f"{self.cache_hits} from cache; saved {self.tokens_saved} tokens and "
            f"${self.usd_saved:.6f}; paid ${self.cost_usd:.6f}"
        )


def _history(path: Path) -> None:
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return
    import atexit

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(path)
    readline.set_history_length(1000)
    atexit.register(readline.write_history_file, path)


def run(
    router: Router,
    *,
    mode: str,
    system: str | None,
    params: dict[str, Any],
    cache: bool,
    history: Path | None,
) -> None:
    if history is not None:
        _history(history)
    base: list[Message] = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    stats = SessionStats()
    known = set(router.config.enabled())
    echo_err(f"router chat: {mode} mode. /help for commands, /exit or Ctrl-D to leave.")
    while True:
        try:
            line = input(f"you ({mode})> " if mode != "auto" else "you> ")
        except EOFError:
            sys.stdout.write("\n")
            break
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            echo_err("(Ctrl-C stops an answer; /exit or Ctrl-D leaves)")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command in ("/auto", "/local", "/cloud"):
                mode = command[1:]
                echo_err(f"mode: {mode}")
            elif command == "/model" and arg.strip() in known:
                mode = arg.strip()
                echo_err(f"mode: {mode} (forced)")
            elif command == "/model":
                echo_err(f"unknown model {arg.strip()!r}; known: {', '.join(sorted(known))}")
            elif command == "/stats":
                echo_err(str(stats))
            elif command == "/reset":
                messages = list(base)
                echo_err("conversation forgotten")
            else:
                echo_err(HELP)
            continue
        messages.append({"role": "user", "content": line})
        answer = _turn(router, messages, mode, params, cache, stats)
        if answer is None:
            messages.pop()  # nothing was answered: do not keep the question in the context
        else:
            messages.append({"role": "assistant", "content": answer})
    echo_err(str(stats))


def _turn(
    router: Router,
    messages: list[Message],
    mode: str,
    params: dict[str, Any],
    cache: bool,
    stats: SessionStats,
) -> str | None:
    """One streamed answer; None when nothing could be answered."""
    parts: list[str] = []
    try:
        stream = router.stream(messages, mode, cache=cache, **params)
    except RouterError as exc:
        echo_err(f"error: {exc}")
        return None
    except KeyboardInterrupt:
        echo_err("\n[stopped]")
        return None
    stopped = False
    try:
        for chunk in stream:
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    parts.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
    except KeyboardInterrupt:
        stopped = True
    except RouterError as exc:
        echo_err(f"\nerror: {exc}")
    finally:
        stream.close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stopped:
        echo_err("[stopped]")
    stats.add(stream.routing)
    echo_err(status_line(stream.routing))
    return "".join(parts)
