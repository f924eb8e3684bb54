"""Pieces shared by the CLI commands: options, the status line, the load spinner."""

from __future__ import annotations

import re
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated

import typer

from router.errors import RequestError
from router.types import Routing
from router.units import money as money  # re-exported for the commands

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="models.toml to use (default: see README, 'Configuration').",
        metavar="PATH",
    ),
]


def status_line(r: Routing) -> str:
    return (
        f"[{r.tier} · {r.model} · score {r.score:.2f} · "
        f"{'cache hit' if r.cache_hit else 'cache miss'} · "
        f"saved {r.tokens_saved} tokens, {money(r.usd_saved)}] {r.reason}"
    )


def loading_spinner(name: str) -> AbstractContextManager[object]:
    """A spinner on stderr while a local model loads, on a terminal only (never on a pipe)."""
    if not sys.stderr.isatty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(f"Loading local model {name}…", spinner="dots")


def echo_err(text: str) -> None:
    typer.echo(text, err=True)


_SINCE = re.compile(r"^(\d+)\s*([mhdw])$")


def parse_since(value: str) -> float:
    """'30m', '24h', '7d', '2w' → a Unix time that long ago."""
    match = _SINCE.match(value.strip().lower())
    if not match:
        raise RequestError(f"--since {value!r}: expected a number and m, h, d or w (e.g. 7d)")
    unit = {"m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return time.time() - int(match.group(1)) * unit
