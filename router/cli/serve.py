"""`router serve` and `router keys`: the HTTP endpoint and its API keys."""

from __future__ import annotations

import datetime
import errno
import json
import socket
import time
from pathlib import Path
from typing import Annotated

import typer

from router.cli.common import ConfigOption
from router.config import Config
from router.errors import RequestError, RouterError
from router.ledger import duration
from router.server.keys import ROLES, KeyStore, RedisKeyStore, key_store
from router.types import ROUTING_MODES

keys_app = typer.Typer(help="API keys for 'router serve' (required off loopback).")


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: server.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: server.port, 8000).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models, ...)."""
    import logging

    from router.engine.pipeline import Router

    # Worker starts (pid, extra buffers), crashes and restarts belong in the server's log.
    logger = logging.getLogger("router")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    from router.config import load_config
    from router.server.app import create_app
    from router.server.connections import run
    from router.server.origins import is_loopback_name

    loaded = load_config(config)
    host = host or loaded.server.host
    exposed = not is_loopback_name(host)
    with Router(loaded.for_serving(exposed)) as router, key_store(router.config) as keys:
        port = router.config.server.port if port is None else port
        if exposed and not keys.list():
            raise RouterError(
                f"--host {host} exposes the router beyond this machine, which requires API "
                "keys: create one with 'router keys create --user NAME' first"
            )
        if any(m.tier == "cloud" for m in router.config.enabled().values()):
            from router.backends.cloud import warm_litellm

            warm_litellm()  # seconds of import, now rather than on a first cloud request's clock
        app = create_app(router, keys=keys, require_keys=exposed, loopback=not exposed)
        sock = listen(host, port)  # before saying "serving": a port in use is one clear line
        port = sock.getsockname()[1]
        typer.echo(
            f"router serving on http://{host}:{port}/v1 "
            f"({'API keys required' if exposed else 'loopback only'})",
            err=True,
        )
        with sock:
            run(app, router.config.server, sock, log_level="info")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a RouterError that says what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RouterError(
            f"--host {host}: not an address of this machine ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = (
            "another program (another router serve?) is using it: stop it or choose --port"
            if exc.errno == errno.EADDRINUSE
            else "choose another --host or --port"
        )
        raise RouterError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    return sock


def _store(config: Path | None) -> KeyStore | RedisKeyStore:
    from router.config import load_config

    return key_store(load_config(config))


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Who the key belongs to.")],
    role: Annotated[
        str,
        typer.Option(
            help="user: sees only its own figures and answers; admin: everyone's, /metrics "
            "and /health's details."
        ),
    ] = "user",
    expires: Annotated[
        str | None,
        typer.Option(help="How long it works: 30m, 12h, 30d, 2w (at most 400d); unset: ever."),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="The modes and models it may ask for, comma-separated (auto,local); "
            "unset: any. Others get 403."
        ),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Its own requests a minute (a 429 past them).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key for USER and print it once (only its hash is stored)."""
    if role not in ROLES:
        raise RequestError(f"--role {role!r}: choose {' or '.join(ROLES)}")
    loaded = _config(config)
    scope = _models(models, loaded)
    until = time.time() + duration(expires, "--expires") if expires is not None else None
    with key_store(loaded) as store:
        try:
            key, key_id = store.create(user, role, expires=until, models=scope, rpm=rpm)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
    typer.echo(key)
    typer.echo(f"created {key_id} ({role}) for {user}; it will not be shown again", err=True)


def _config(config: Path | None) -> Config:
    from router.config import load_config

    return load_config(config)


def _models(models: str | None, config: Config) -> tuple[str, ...]:
    """--models as names, each a mode or a model of the file (RequestError otherwise)."""
    if models is None:
        return ()
    names = tuple(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    known = [*ROUTING_MODES, *config.models]
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise RequestError(
            f"--models {models[:80]!r}: give modes or models of this file, comma-separated "
            f"(known: {', '.join(known)})"
        )
    return names


def _when(at: float | None, never: str = "-") -> str:
    if at is None:
        return never
    return datetime.datetime.fromtimestamp(at).isoformat(timespec="seconds")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys: id, user, role, created, expiry, scope and last use (never the keys)."""
    with _store(config) as store:
        rows = store.list()
    if as_json:
        typer.echo(json.dumps([r.record() | {"expired": r.owner().expired()} for r in rows]))
        return
    if not rows:
        typer.echo("no keys yet: create one with 'router keys create --user NAME'", err=True)
        return
    typer.echo("ID\tUSER\tROLE\tCREATED\tEXPIRES\tMODELS\tRPM\tLAST USED")
    for r in rows:
        expires = _when(r.expires, "never") + (" (expired)" * r.owner().expired())
        typer.echo(
            f"{r.key_id}\t{r.user}\t{r.role}\t{_when(r.created)}\t{expires}\t"
            f"{','.join(r.models) or 'any'}\t{r.rpm or '-'}\t{_when(r.last_used, 'never')}"
        )


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id shown by 'router keys list'.")],
    grace: Annotated[
        str, typer.Option(help="How long the old key keeps working: 30m, 1h, 7d; 0m: not at all.")
    ] = "1h",
    config: ConfigOption = None,
) -> None:
    """Print a new key with the old one's owner and scope; the old one works --grace more."""
    seconds = duration(grace, "--grace")
    with _store(config) as store:
        made = store.rotate(key_id, seconds)
    if made is None:
        raise RouterError(f"no key with id {key_id!r} (see 'router keys list')")
    typer.echo(made[0])
    typer.echo(
        f"created {made[1]} in place of {key_id}, which works until "
        f"{_when(time.time() + seconds)}; the new key will not be shown again",
        err=True,
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by 'router keys list'.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    with _store(config) as store:
        found = store.revoke(key_id)
    if not found:
        raise RouterError(f"no key with id {key_id!r} (see 'router keys list')")
    typer.echo(f"revoked {key_id}", err=True)
