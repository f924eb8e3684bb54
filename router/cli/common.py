"""Pieces shared by the CLI commands: options, the status line, the load spinner."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from router.ledger import parse_since as parse_since  # re-exported for the commands
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
    cost = f"cost {money(r.cost_usd)} · " if r.cost_usd else ""
    return (
        f"[{r.tier} · {r.model} · score {r.score:.2f} · "
        f"{'cache hit' if r.cache_hit else 'cache miss'} · {cost}"
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


def write_stream(stream: Iterable[dict[str, Any]], parts: list[str]) -> None:
    """Write a streamed answer's text to stdout as it comes, keeping it in `parts`."""
    for chunk in stream:
        for choice in chunk.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
