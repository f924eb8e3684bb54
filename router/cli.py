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


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: server.host, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port, 8000).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models, ...)."""
    import uvicorn

    from router.engine import Router
    from router.keys import KeyStore
    from router.server import create_app, is_loopback

    with Router(config) as router:
        host = host or router.config.server.host
        port = router.config.server.port if port is None else port
        keys = KeyStore(router.config.keys_path())
        exposed = not is_loopback(host)
        if exposed and not keys.list():
            raise RouterError(
                f"--host {host} exposes the router beyond this machine, which requires API "
                "keys: create one with 'router keys create --user NAME' first"
            )
        app_ = create_app(router, keys=keys, require_keys=exposed)
        typer.echo(
            f"router serving on http://{host}:{port}/v1 "
            f"({'API keys required' if exposed else 'loopback only'})",
            err=True,
        )
        uvicorn.run(app_, host=host, port=port, log_level="info")
        keys.close()


keys_app = typer.Typer(help="API keys for 'router serve' (required off loopback).")
app.add_typer(keys_app, name="keys")


def _key_store(config: Path | None) -> Any:
    from router.config import load_config
    from router.keys import KeyStore

    return KeyStore(load_config(config).keys_path())


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Who the key belongs to.")],
    config: ConfigOption = None,
) -> None:
    """Create a key for USER and print it once (only its hash is stored)."""
    store = _key_store(config)
    key, key_id = store.create(user)
    store.close()
    typer.echo(key)
    typer.echo(f"created {key_id} for {user}; it will not be shown again", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List key ids and their users (never the keys)."""
    import datetime

    store = _key_store(config)
    for key_id, user, created in store.list():
        when = datetime.datetime.fromtimestamp(created).isoformat(timespec="seconds")
        typer.echo(f"{key_id}\t{user}\t{when}")
    store.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by 'router keys list'.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    store = _key_store(config)
    found = store.revoke(key_id)
    store.close()
    if not found:
        typer.echo(f"error: no key with id {key_id!r} (see 'router keys list')", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}", err=True)


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
