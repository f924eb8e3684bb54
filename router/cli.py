"""The `router` command line (Typer). Every command takes --config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from router.errors import RouterError

app = typer.Typer(
    help="Local-first LLM router: cheap requests to a local GGUF model, hard ones to the cloud.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="models.toml to use (default: see README, 'Configuration')."
    ),
]


@app.callback()
def _root() -> None:
    """Local-first LLM router. Add --debug to any command for full tracebacks."""


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="auto, local, cloud or a model name.")
    ] = "auto",
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0, max=2)] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the cache.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the OpenAI-shaped response and routing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Answer one prompt: the answer streams to stdout, the route goes to stderr."""
    from router.engine import Router

    text = sys.stdin.read() if prompt == "-" else prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    with Router(config) as router:
        if as_json:
            done = router.complete(messages, model, cache=not no_cache, **params)
            typer.echo(json.dumps({**done.response, "routing": done.routing.to_dict()}, indent=2))
            return
        stream = router.stream(messages, model, cache=not no_cache, **params)
        for chunk in stream:
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        r = stream.routing
        typer.echo(
            f"[{r.tier} · {r.model} · score {r.score:.2f} · "
            f"{'cache hit' if r.cache_hit else 'cache miss'} · "
            f"saved {r.tokens_saved} tokens, ${r.usd_saved:.6f}] {r.reason}",
            err=True,
        )


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except RouterError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
