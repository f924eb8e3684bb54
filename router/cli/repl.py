"""The interactive chat: `router chat` with no prompt on a terminal.

Multi-turn context, streamed answers, the route after every turn, line editing and history
(readline). `/local`, `/cloud`, `/auto` or `/model NAME` switch the mode, `/system TEXT` sets
the system prompt, `/stats` shows the session's savings, `/reset` forgets the conversation,
three double quotes start and end a multi-line message, and `/exit`, `/bye`, `exit`, `quit` or
Ctrl-D leave. Ctrl-C stops the answer being written, not the session. Each answered turn is
saved for `router chat -c`.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.cli.common import echo_err, money, status_line, write_stream
from router.cli.conversation import save_last, with_system
from router.cli.remote import ServerRouter
from router.engine.pipeline import Router
from router.errors import RouterError
from router.types import Message, Routing

HELP = (
    "/auto /local /cloud  switch routing mode   /model NAME  force one model\n"
    "/system TEXT  set the system prompt (/system alone clears it)\n"
    '/stats  this session\'s savings   /reset  forget the conversation   """  multi-line\n'
    "/good or /bad [COMMENT]  rate the last answer (kept in the ledger)\n"
    "/exit or /bye  leave (Ctrl-D)   Ctrl-C stops an answer."
)
LEAVE = frozenset({"/exit", "/quit", "/bye", "exit", "quit", "bye", ":q"})
FENCE = '"""'


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
            f"{money(self.usd_saved)}; paid {money(self.cost_usd)}"
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


def _read(prompt: str) -> str:
    """One message: a line, or the lines between two fences of three double quotes (a
    multi-line paste, as in Ollama)."""
    line = input(prompt)
    stripped = line.strip()
    if not stripped.startswith(FENCE):
        return line
    body = stripped[len(FENCE) :]
    if body.endswith(FENCE):  # fenced on both ends of one line
        return body[: -len(FENCE)].strip()
    lines = [body] if body else []
    while True:
        more = input("... ")
        if more.rstrip().endswith(FENCE):
            lines.append(more.rstrip()[: -len(FENCE)])
            return "\n".join(lines).strip("\n")
        lines.append(more)


def run(
    router: Router | ServerRouter,
    *,
    mode: str,
    system: str | None,
    params: dict[str, Any],
    cache: bool,
    history: Path | None,
    messages: list[Message] | None = None,
    user: str | None = None,
    via: str = "",
) -> None:
    if history is not None:
        _history(history)
    messages = list(messages) if messages else with_system([], system)
    stats = SessionStats()
    last_id = ""  # the last answer's id, for /good and /bad
    known = set(router.config.models)
    enabled = set(router.config.enabled())
    turns = sum(m.get("role") == "user" for m in messages)
    echo_err(
        f"router chat: {mode} mode"
        + (f", continuing a conversation of {turns} turns" if turns else "")
        + via
        + ". /help for commands, /exit or Ctrl-D to leave."
    )
    while True:
        try:
            line = _read(f"you ({mode})> " if mode != "auto" else "you> ")
        except EOFError:
            sys.stdout.write("\n")
            break
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            echo_err("(Ctrl-C stops an answer; /exit or Ctrl-D leaves)")
            continue
        if not line.strip():
            continue
        if line.strip().lower() in LEAVE:
            break
        if line.startswith("/"):
            command, _, arg = line.strip().partition(" ")
            arg = arg.strip()
            if command in ("/auto", "/local", "/cloud"):
                mode = command[1:]
                echo_err(f"mode: {mode}")
            elif command == "/model" and arg in enabled:
                mode = arg
                echo_err(f"mode: {mode} (forced)")
            elif command == "/model" and arg in known:
                echo_err(f"{arg!r} is disabled in models.toml (set enabled = true to use it)")
            elif command == "/model":
                echo_err(f"unknown model {arg!r}; enabled: {', '.join(sorted(enabled))}")
            elif command == "/system":
                messages = with_system(messages, arg)
                echo_err(f"system prompt: {arg!r}" if arg else "system prompt cleared")
            elif command in ("/good", "/bad"):
                if not last_id:
                    echo_err("nothing to rate yet: rate an answer after it is given")
                    continue
                try:
                    router.feedback(last_id, command[1:], arg)
                    echo_err(f"noted: {command[1:]}" + (f" ({arg})" if arg else ""))
                except RouterError as exc:
                    echo_err(f"error: {exc}")
            elif command == "/stats":
                echo_err(str(stats))
            elif command == "/reset":
                messages = with_system(
                    [],
                    next((str(m["content"]) for m in messages if m.get("role") == "system"), None),
                )
                echo_err("conversation forgotten")
            elif command in ("/help", "/?"):
                echo_err(HELP)
            else:
                echo_err(f"unknown command {command}; /help lists them")
            continue
        messages.append({"role": "user", "content": line})
        answer = _turn(router, messages, mode, params, cache, stats, user, via)
        if answer is None:
            messages.pop()  # nothing was answered: do not keep the question in the context
        else:
            text, last_id = answer
            messages.append({"role": "assistant", "content": text})
            save_last(messages)
    echo_err(str(stats))


def _turn(
    router: Router | ServerRouter,
    messages: list[Message],
    mode: str,
    params: dict[str, Any],
    cache: bool,
    stats: SessionStats,
    user: str | None = None,
    via: str = "",
) -> tuple[str, str] | None:
    """One streamed answer and its id; None when nothing could be answered."""
    parts: list[str] = []
    try:
        stream = router.stream(messages, mode, user=user, cache=cache, **params)
    except RouterError as exc:
        echo_err(f"error: {exc}")
        return None
    except KeyboardInterrupt:
        echo_err("\n[stopped]")
        return None
    stopped = False
    try:
        write_stream(stream, parts)
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
    echo_err(status_line(stream.routing) + via)
    return "".join(parts), stream.routing.response_id
